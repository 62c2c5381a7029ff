"""`gptoss-serve serve`: choose the checkpoint, start the engine, log what was loaded, run uvicorn.

Owns start-up and shut-down of the HTTP server: the built-in tiny random checkpoint when no
model is given, the default served name, the start-up summary (model, dtype, device, kernels,
KV budget) and a graceful stop on SIGINT/SIGTERM that exits 0. Reads no argv or environment
(cli.py passes everything in `ServeOptions`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import uvicorn

from gptoss_serve.config import CacheConfig, SchedulerConfig, ServerConfig
from gptoss_serve.tools.base import ToolOptions

log = logging.getLogger("gptoss_serve.serve")
GRACE_SECONDS = 5


@dataclass(frozen=True)
class ServeOptions:
    model: str | None  # folder or hub name; None: the tiny random checkpoint
    served_model_name: str | None
    dtype: str
    device: str
    server: ServerConfig
    cache: CacheConfig
    sched: SchedulerConfig
    tiny_dir: Path  # where the tiny checkpoint is built on first use
    kernels: str = "auto"  # auto | triton | reference (kernels/select.py)
    enforce_eager: bool = False  # no CUDA graphs for the decode step
    threads: int | None = None  # torch intra-op threads; None: torch's default (one per core)
    tools: ToolOptions = field(default_factory=ToolOptions)  # tools/registry.build_tools


def served_name(model: str, explicit: str | None) -> str:
    """--served-model-name, else the hub name as given, else the folder's name."""
    if explicit:
        return explicit
    path = Path(model).expanduser()
    return path.resolve().name if path.exists() else model


def describe(engine: Any, model: str, random_weights: bool) -> list[str]:
    """Start-up lines: what was loaded, where, which kernels, and the KV budget."""
    runner = getattr(engine.engine, "runner", None)
    lines = [f"model: {model}" + ("  (RANDOM weights: output is noise)"
                                  if random_weights else "")]
    if runner is None:  # a test double of the engine
        return lines
    from gptoss_serve.engine.model_runner import sequences_fitting

    plan, block = runner.plan, runner.block_size
    max_len, max_seqs = engine.max_model_len, engine.engine.scheduler.config.max_num_seqs
    fit = sequences_fitting(plan, max_len, block)
    short = f", {sequences_fitting(plan, 8192, block)} of 8192 tokens" if max_len > 8192 else ""
    return lines + [
        f"dtype: {runner.model.dtype}, device: {runner.device}",  # the loader logs the kernels
        f"KV cache: {plan.num_full_blocks} full-attention blocks, {plan.num_sliding_blocks} "
        f"sliding-window blocks of {block} tokens ({plan.total_bytes / 2**30:.2f} GiB)",
        f"KV capacity: {fit} sequence(s) of the full context ({max_len} tokens){short}; "
        f"at most {max_seqs} (--max-num-seqs) run at once",
        runner.decode_description]


class _Server(uvicorn.Server):
    """uvicorn with our stop: on SIGINT/SIGTERM it stops accepting, lets requests in flight run
    for part of the grace period, then shuts the engine down so that the streams still open end
    with an error event and [DONE] (not a cut connection); finally it returns (exit 0) instead of
    re-raising the signal."""

    def __init__(self, config: uvicorn.Config, engine: Any):
        super().__init__(config)
        self._engine = engine

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()

    async def shutdown(self, sockets: Any = None) -> None:
        async def stop_engine() -> None:
            await asyncio.sleep(GRACE_SECONDS / 2)
            await self._engine.shutdown()

        stopper = asyncio.create_task(stop_engine())
        try:
            await super().shutdown(sockets)
        finally:
            stopper.cancel()


def _start_engine(opts: ServeOptions) -> tuple[Any, str]:
    """The engine over the checkpoint `opts` names (the tiny one by default), and its path;
    logs what was loaded (a random checkpoint says so)."""
    from gptoss_serve.engine.async_engine import AsyncEngine
    from gptoss_serve.model.synthetic import is_random_checkpoint, tiny_checkpoint

    model = str(tiny_checkpoint(opts.tiny_dir)) if opts.model is None else str(opts.model)
    random_weights = opts.model is None or is_random_checkpoint(model)
    if opts.model is None:
        log.warning("no --model given: serving a tiny RANDOM checkpoint from %s", model)
    elif random_weights:
        log.warning("%s is a RANDOM checkpoint (make-checkpoint): its output is noise", model)
    import torch

    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    log.info("torch intra-op threads: %d", torch.get_num_threads())
    engine = AsyncEngine.from_config(
        model, dtype=opts.dtype, device=opts.device, cache=opts.cache, sched=opts.sched,
        kernels=opts.kernels, cuda_graphs=not opts.enforce_eager,
    )
    for line in describe(engine, model, random_weights):
        log.info(line)
    return engine, model


def run_server(opts: ServeOptions) -> int:
    from gptoss_serve.api.app import create_app
    from gptoss_serve.constrain.tokenizer import ll_tokenizer
    from gptoss_serve.harmony.tokenizer import get_tokenizer
    from gptoss_serve.tools.registry import build_tools

    engine, model = _start_engine(opts)
    name = served_name(model, opts.served_model_name)
    config = replace(opts.server, served_model_names=(name,))
    tools, tool_lines = build_tools(opts.tools)
    for line in tool_lines:
        log.info(line)
    where = config.responses_db if config.responses_db is not None else "off (--no-store)"
    log.info("responses store: %s", where)
    app = create_app(engine, config, get_tokenizer(), tools=tools)
    # llguidance's view of the vocabulary (~1 s) is built in the background, not by the first
    # constrained request
    threading.Thread(target=ll_tokenizer, name="llguidance-vocab", daemon=True).start()
    log.info("serving %r on http://%s:%d/v1", name, config.host, config.port)
    if config.api_key is not None:
        open_to_all = " and /metrics" if config.public_metrics else ""
        log.info("an API key is required on every route except /health%s", open_to_all)
    uv = uvicorn.Config(
        app, host=config.host, port=config.port, log_level="info",
        timeout_graceful_shutdown=GRACE_SECONDS,
    )
    try:
        _Server(uv, engine).run()
    finally:
        asyncio.run(engine.shutdown())
        app.state.responses.close()  # the built-in tools (kernels) and the responses store
    log.info("stopped")
    return 0
