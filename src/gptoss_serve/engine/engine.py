"""LLMEngine: add_request, abort, step. A step is three calls: schedule, run, update.

Owns the wiring of block manager, scheduler and runner; knows nothing of threads, asyncio, HTTP
or harmony. Any object with `execute(SchedulerOutput) -> list[SampledToken]` can be the runner
(tests use a fake one that returns chosen tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from gptoss_serve.config import CacheConfig, ModelConfig, SchedulerConfig
from gptoss_serve.engine.block_manager import BlockManager
from gptoss_serve.engine.constraint import StructuredOutputs
from gptoss_serve.engine.request import EngineRequest, StepOutput
from gptoss_serve.engine.sampler import check_params
from gptoss_serve.engine.scheduler import Scheduler, SchedulerOutput
from gptoss_serve.engine.sequence import SampledToken
from gptoss_serve.engine.stats import EngineStats
from gptoss_serve.errors import InvalidRequestError


class Runner(Protocol):
    def execute(self, out: SchedulerOutput) -> list[SampledToken]: ...


class LLMEngine:
    def __init__(self, runner: Runner, model_config: ModelConfig, cache: CacheConfig,
                 sched: SchedulerConfig, *, num_full_blocks: int, num_sliding_blocks: int):
        self.runner = runner
        self.model_config = model_config
        limits = [model_config.max_position_embeddings, num_full_blocks * cache.block_size]
        if sched.max_model_len:
            limits.append(sched.max_model_len)
        self.max_model_len = min(limits)  # context limit: model, configuration and full pool
        bm = BlockManager(num_full_blocks, num_sliding_blocks, cache.block_size,
                          model_config.sliding_window)
        self.scheduler = Scheduler(bm, sched, max_model_len=self.max_model_len,
                                   eos_token_ids=model_config.eos_token_ids,
                                   enable_prefix_caching=cache.enable_prefix_caching)
        self.structured = StructuredOutputs(model_config.vocab_size)

    @classmethod
    def from_model(cls, model, cache: CacheConfig, sched: SchedulerConfig, *,
                   cuda_graphs: bool = True, static_decode: bool | None = None) -> LLMEngine:
        """Wrap a loaded model (`model.config`, `model.forward(batch, kv_cache)`); the decode
        options are those of `ModelRunner` (CUDA graphs unless `cuda_graphs=False`)."""
        from gptoss_serve.engine.model_runner import ModelRunner

        runner = ModelRunner.create(model, model.config, cache, sched, cuda_graphs=cuda_graphs,
                                    static_decode=static_decode)
        return cls(runner, model.config, cache, sched, num_full_blocks=runner.plan.num_full_blocks,
                   num_sliding_blocks=runner.plan.num_sliding_blocks)

    @classmethod
    def from_config(cls, model: str | Path, *, dtype: str = "auto", device: str = "auto",
                    cache: CacheConfig | None = None,
                    sched: SchedulerConfig | None = None, kernels: str = "auto",
                    cuda_graphs: bool = True) -> LLMEngine:
        """Load a checkpoint (folder or hub name), size the KV cache, build the engine.

        `kernels`: auto | triton | reference (`kernels.select.choose_kernels`)."""
        from gptoss_serve.model.weights import load_model

        loaded = load_model(model, dtype=dtype, device=device, kernels=kernels)
        return cls.from_model(loaded, cache or CacheConfig(), sched or SchedulerConfig(),
                              cuda_graphs=cuda_graphs)

    def validate(self, request: EngineRequest) -> None:
        """Raise the typed error for a request that can never run, without queueing anything:
        the one check of a request (token ids, `Scheduler.validate`, sampling parameters), run
        once per request by whoever takes it in (`add_request`, or the caller of `enqueue`)."""
        vocab = self.model_config.vocab_size
        if any(not 0 <= t < vocab for t in request.prompt_token_ids):
            raise InvalidRequestError(f"prompt token ids must lie in [0, {vocab})", param="prompt")
        self.scheduler.validate(request)
        try:
            check_params(request.sampling_params)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None

    def add_request(self, request: EngineRequest) -> None:
        """`validate` the request, then `enqueue` it."""
        self.validate(request)
        self.enqueue(request)

    def enqueue(self, request: EngineRequest) -> None:
        """Queue a request that `validate` accepted (the caller validated it: the async engine
        at `generate`, `LLM.generate` before the whole batch, the chat REPL)."""
        self.scheduler.add_request(request)

    def abort(self, request_id: str) -> None:
        self.scheduler.abort(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[StepOutput]:
        out = self.scheduler.schedule()
        out.token_masks = self.structured.begin(out)  # filled while the forward pass runs
        sampled = self.runner.execute(out) if out.scheduled else []
        self.structured.accept(out, sampled)
        return self.scheduler.update(out, sampled)

    def stats(self) -> EngineStats:
        return self.scheduler.stats()
