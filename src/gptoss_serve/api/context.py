"""What every handler shares: the engine, server config, tokenizer, metrics, and request checks.

Owns the checks that are the same for chat and completions (served model name, queue limit,
context length, sampling parameters) and the generation driver that records metrics and closes
the engine's generator however the handler stops listening (which aborts the engine request:
the engine's generator is the one place that does). Knows nothing of harmony mapping, response
shapes or HTTP routing; sees the engine only through `generate` and `stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from gptoss_serve.api.metrics import ServerMetrics
from gptoss_serve.api.schemas import ChatCompletionRequest, CompletionRequest
from gptoss_serve.config import ServerConfig
from gptoss_serve.engine.request import EngineRequest, SamplingParams, StepOutput
from gptoss_serve.engine.stats import EngineStats
from gptoss_serve.errors import (
    ContextLengthError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
)
from gptoss_serve.harmony.render import resolve_date

T = TypeVar("T")


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a worker thread: parsing a big body or tokenizing a long prompt must not
    stall the event loop (every other request, /health included, waits on it)."""
    return await asyncio.to_thread(fn, *args)


class Engine(Protocol):
    """The part of `AsyncEngine` the API uses (FakeEngine implements the same)."""

    max_model_len: int
    model_config: Any

    def generate(self, request: EngineRequest) -> AsyncGenerator[StepOutput, None]: ...
    def stats(self) -> EngineStats: ...
    @property
    def is_dead(self) -> bool: ...


@dataclass
class ApiContext:
    engine: Engine
    config: ServerConfig
    tokenizer: Any  # harmony.tokenizer.HarmonyTokenizer
    metrics: ServerMetrics

    # ---- checks ------------------------------------------------------------------------------
    def check_model(self, name: str | None) -> None:
        if name is not None and name not in self.config.served_model_names:
            served = ", ".join(self.config.served_model_names)
            raise ModelNotFoundError(
                f"The model `{name}` does not exist; this server serves: {served}", param="model"
            )

    def check_capacity(self) -> None:
        """429 when --max-queue requests are admitted and not yet running. `generate` calls it
        with no await before the engine registers the request, so a burst cannot slip past."""
        waiting = self.engine.stats().num_waiting_requests
        if waiting >= self.config.max_queue:
            raise OverloadedError(
                f"The server is saturated ({waiting} requests waiting, limit "
                f"{self.config.max_queue}); retry later."
            )

    def max_tokens_for(self, prompt_len: int, requested: int | None, default: int, *,
                       requested_param: str = "max_tokens",
                       prompt_param: str = "messages") -> int:
        """The generation cap: the request's own (checked against the context) or the default
        trimmed to the room left. Never truncates the prompt: too long is a 400 with the numbers,
        naming the field the client sent (`requested_param`) or, when the prompt alone does not
        fit or no cap was sent, the prompt (`prompt_param`).
        """
        limit = self.engine.max_model_len
        want = requested if requested is not None else default
        if prompt_len + want <= limit:
            return want
        if requested is None and prompt_len < limit:
            return limit - prompt_len
        if requested is None or prompt_len >= limit:
            message = (f"This model's maximum context length is {limit} tokens; the prompt has "
                       f"{prompt_len} tokens, which leaves no room for a generated token.")
            param = prompt_param
        else:
            message = (f"This model's maximum context length is {limit} tokens; the prompt has "
                       f"{prompt_len} tokens and {requested_param} is {want} "
                       f"({prompt_len + want} in total).")
            param = requested_param
        raise ContextLengthError(message, prompt_tokens=prompt_len, limit=limit, param=param)

    def current_date(self) -> str | None:
        return resolve_date(self.config.current_date)

    # ---- generation --------------------------------------------------------------------------
    async def generate(self, request: EngineRequest) -> AsyncIterator[StepOutput]:
        """engine.generate with metrics and the queue limit. Closing this generator closes the
        engine's at once, and the engine's generator is the one owner of aborting: closed
        before every sequence finished, it aborts the request (no handler calls abort)."""
        self.check_capacity()
        timer = self.metrics.timer(len(request.prompt_token_ids))
        remaining = set(range(request.sampling_params.n))
        reason = "abort"
        try:
            async with contextlib.aclosing(self.engine.generate(request)) as outputs:
                async for out in outputs:
                    timer.tokens(len(out.new_token_ids))
                    if out.finished:
                        remaining.discard(out.index)
                        reason = out.finish_reason or reason
                    yield out
        finally:
            timer.done(reason if not remaining else "abort")


def check_token_ids(ids: list[int], vocab_size: int, param: str,
                    what: str = "token id") -> None:
    """400 naming `param` when an id is outside the vocabulary."""
    bad = [t for t in ids if t >= vocab_size]
    if bad:
        raise InvalidRequestError(
            f"{what} {bad[0]} is outside the vocabulary (size {vocab_size})", param=param)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sampling_params(
    req: ChatCompletionRequest | CompletionRequest,
    *,
    max_tokens: int,
    stop_token_ids: tuple[int, ...],
    logprobs: int | None,
    vocab_size: int,
) -> SamplingParams:
    """SamplingParams from the fields chat and completions share (bounds already validated)."""
    if req.min_tokens > max_tokens:
        raise InvalidRequestError(
            f"min_tokens ({req.min_tokens}) must not exceed max_tokens ({max_tokens})",
            param="min_tokens",
        )
    bias = req.bias_pairs()
    check_token_ids([t for t, _ in bias], vocab_size, "logit_bias", what="logit_bias token id")
    return SamplingParams(
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        frequency_penalty=req.frequency_penalty,
        presence_penalty=req.presence_penalty,
        logit_bias=bias,
        seed=req.seed,
        max_tokens=max_tokens,
        min_tokens=req.min_tokens,
        stop_token_ids=stop_token_ids,
        ignore_eos=req.ignore_eos,
        logprobs=logprobs,
        n=req.n,
    )
