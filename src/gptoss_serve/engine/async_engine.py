"""AsyncEngine: the step loop in a background thread, per-request asyncio queues, cancellation and
engine-death handling.

The loop thread sleeps on a condition while there is no work; `generate` validates a request at
once (typed errors), hands it to the thread through an inbox and receives StepOutputs through an
asyncio queue fed with `call_soon_threadsafe`. A consumer that stops iterating aborts its request.
If the loop dies, every pending request gets EngineDeadError and `is_dead` turns true.

Owns threads and queues; knows nothing of HTTP, harmony or the model's maths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from gptoss_serve.config import CacheConfig, ModelConfig, SchedulerConfig
from gptoss_serve.engine.engine import LLMEngine
from gptoss_serve.engine.request import EngineRequest, StepOutput
from gptoss_serve.engine.stats import EngineStats
from gptoss_serve.errors import EngineDeadError, GptOssServeError, InvalidRequestError

log = logging.getLogger(__name__)
T = TypeVar("T")


def in_passing_thread(fn: Callable[[], T]) -> T:
    """fn() run in a thread that ends with it (its exception re-raised here).

    libgomp keeps a team of OpenMP workers for every thread that ever opened a parallel region,
    and once it manages more threads than there are cores its idle workers stop spinning at
    once, so every parallel region of a decode step pays a futex wake-up. Loading the model
    (many parallel copies) in a thread that ends frees that thread's team, which leaves the
    engine loop's the only one (docs/benchmarks.md, "CPU single stream, round 3")."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=run, name="engine-load")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@dataclass
class _Stream:
    """The receiving end of one request."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self.max_model_len: int = engine.max_model_len
        self.model_config: ModelConfig = engine.model_config
        self._cv = threading.Condition()
        self._streams: dict[str, _Stream] = {}
        self._inbox: list[EngineRequest] = []
        self._aborts: set[str] = set()
        self._stopping = False
        self._dead: BaseException | None = None
        self._stats = engine.stats()
        self._unstepped = 0  # requests registered since the snapshot in _stats was taken
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, model: str | Path, *, dtype: str = "auto", device: str = "auto",
                    cache: CacheConfig, sched: SchedulerConfig, kernels: str = "auto",
                    cuda_graphs: bool = True) -> AsyncEngine:
        """Load weights, size the KV cache and start the loop thread; on CPU the loading runs
        in a passing thread (`in_passing_thread`)."""
        from gptoss_serve.model.weights import resolve_device

        def build() -> LLMEngine:
            return LLMEngine.from_config(model, dtype=dtype, device=device, cache=cache,
                                         sched=sched, kernels=kernels, cuda_graphs=cuda_graphs)

        on_cpu = resolve_device(device).type == "cpu"
        return cls(in_passing_thread(build) if on_cpu else build())

    # ---- API side ------------------------------------------------------------------------------
    @property
    def is_dead(self) -> bool:
        return self._dead is not None

    def stats(self) -> EngineStats:
        """The snapshot the loop thread took after its last step, with the requests registered
        since then (not yet stepped) counted as waiting: a burst is counted at once."""
        with self._cv:
            waiting = self._stats.num_waiting_requests + self._unstepped
            return replace(self._stats, num_waiting_requests=waiting)

    async def generate(self, request: EngineRequest) -> AsyncIterator[StepOutput]:
        """Yield the StepOutputs of all n sequences until each has finished."""
        self.engine.validate(request)
        stream = self._register(request)
        remaining = request.sampling_params.n
        try:
            while remaining:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                remaining -= item.finished
                yield item
        finally:
            with self._cv:
                self._streams.pop(request.request_id, None)
                if remaining:
                    self._aborts.add(request.request_id)
                    self._cv.notify()

    def _register(self, request: EngineRequest) -> _Stream:
        with self._cv:
            if self._dead is not None or self._stopping:
                raise EngineDeadError("the engine is not running")
            if request.request_id in self._streams:
                raise InvalidRequestError(f"request id {request.request_id!r} is already in use")
            stream = _Stream(asyncio.get_running_loop())
            self._streams[request.request_id] = stream
            self._inbox.append(request)
            self._unstepped += 1
            self._cv.notify()
        return stream

    def abort(self, request_id: str) -> None:
        """Thread-safe and idempotent; the blocks are freed by the next step."""
        with self._cv:
            self._aborts.add(request_id)
            self._cv.notify()

    async def shutdown(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        await asyncio.to_thread(self._thread.join)

    # ---- loop thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._wait_for_work():
                taken = self._take_inbox()
                outputs = self.engine.step() if self.engine.has_unfinished() else []
                with self._cv:
                    self._stats = self.engine.stats()
                    self._unstepped -= taken
                self._dispatch(outputs)
        except BaseException as exc:  # the loop must never die silently: fail every request
            log.exception("engine loop died")
            self._fail_all(exc)
            return
        self._fail_all(None)

    def _wait_for_work(self) -> bool:
        with self._cv:
            while not (self._stopping or self._inbox or self._aborts
                       or self.engine.has_unfinished()):
                self._cv.wait()
            return not self._stopping

    def _take_inbox(self) -> int:
        """Hand the inbox and the aborts to the engine; returns how many requests it took."""
        with self._cv:
            inbox, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, set()
        for request in inbox:
            try:
                self.engine.enqueue(request)  # validated in `generate`
            except GptOssServeError as exc:
                self._send(request.request_id, exc)
            except Exception as exc:  # a request that cannot be admitted fails alone
                log.warning("request %s refused at admission: %r", request.request_id, exc)
                self._send(request.request_id, InvalidRequestError(f"request refused: {exc}"))
        for request_id in aborts:
            self.engine.abort(request_id)
        return len(inbox)

    def _dispatch(self, outputs: list[StepOutput]) -> None:
        for out in outputs:
            self._send(out.request_id, out)

    def _send(self, request_id: str, item: StepOutput | BaseException) -> None:
        with self._cv:
            stream = self._streams.get(request_id)
        if stream is not None:
            stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)

    def _fail_all(self, exc: BaseException | None) -> None:
        with self._cv:
            self._dead = exc or EngineDeadError("the engine was shut down")
            streams, self._streams = list(self._streams.values()), {}
        reason = f"the engine loop stopped: {exc!r}" if exc else "the engine was shut down"
        for stream in streams:
            # RuntimeError: that event loop is already closed, so nobody is waiting
            with contextlib.suppress(RuntimeError):
                stream.loop.call_soon_threadsafe(stream.queue.put_nowait, EngineDeadError(reason))
