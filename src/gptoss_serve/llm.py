"""The offline API: `LLM(model).generate(prompt_token_ids, sampling_params)`.

Runs every prompt through the continuous-batching engine (`engine/engine.py`) in the caller's
thread and returns the results in prompt order. Owns only the result objects and the loop that
steps the engine until all prompts are done; knows nothing of HTTP or harmony.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from gptoss_serve.config import CacheConfig, SchedulerConfig
from gptoss_serve.engine.engine import LLMEngine
from gptoss_serve.engine.request import EngineRequest, SamplingParams, TokenLogprob


@dataclass
class CompletionSequence:
    """One of a prompt's n generated sequences."""

    index: int
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[TokenLogprob] | None  # one per token when asked for


@dataclass(eq=False)
class GenerationOutput:
    """The result for one prompt.

    It also reads as the sequence of the first sequence's generated token ids (`len`, iteration,
    indexing, `== [ids...]`), so `llm.generate(...)` can be used as "the generated ids per prompt".
    """

    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionSequence]

    @property
    def token_ids(self) -> list[int]:
        """The first sequence's generated token ids."""
        return self.outputs[0].token_ids

    def __len__(self) -> int:
        return len(self.token_ids)

    def __iter__(self) -> Iterator[int]:
        return iter(self.token_ids)

    def __getitem__(self, i: int | slice) -> int | list[int]:
        return self.token_ids[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GenerationOutput):
            return (self.prompt_token_ids, self.outputs) == (other.prompt_token_ids, other.outputs)
        if isinstance(other, list | tuple):
            return self.token_ids == list(other)
        return NotImplemented


def split_engine_kwargs(kwargs: dict[str, Any]) -> tuple[CacheConfig, SchedulerConfig]:
    """Accept `cache=`/`sched=` objects and/or their individual fields as keywords."""
    kwargs = dict(kwargs)
    cache = kwargs.pop("cache", None) or CacheConfig()
    sched = kwargs.pop("sched", None) or SchedulerConfig()
    cache_fields = {f.name for f in fields(CacheConfig)}
    sched_fields = {f.name for f in fields(SchedulerConfig)}
    unknown = set(kwargs) - cache_fields - sched_fields
    if unknown:
        raise TypeError(f"unknown engine arguments: {sorted(unknown)}")
    cache = CacheConfig(**{**cache.__dict__, **{k: v for k, v in kwargs.items()
                                                if k in cache_fields}})
    sched = SchedulerConfig(**{**sched.__dict__, **{k: v for k, v in kwargs.items()
                                                    if k in sched_fields}})
    return cache, sched


class LLM:
    def __init__(self, model: str | Path, dtype: str = "auto", device: str = "auto",
                 kernels: str = "auto", enforce_eager: bool = False, **engine_kwargs: Any):
        """`kernels`: auto | triton | reference; `enforce_eager`: no CUDA graphs."""
        cache, sched = split_engine_kwargs(engine_kwargs)
        self.engine = LLMEngine.from_config(model, dtype=dtype, device=device, cache=cache,
                                            sched=sched, kernels=kernels,
                                            cuda_graphs=not enforce_eager)
        self._ids = itertools.count()

    @classmethod
    def from_engine(cls, engine: LLMEngine) -> LLM:
        llm = cls.__new__(cls)
        llm.engine = engine
        llm._ids = itertools.count()
        return llm

    def generate(self, prompt_token_ids: list[list[int]],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 ) -> list[GenerationOutput]:
        """Generate for every prompt (batched continuously); results in prompt order."""
        params = self._params(sampling_params, len(prompt_token_ids))
        requests = [EngineRequest(f"offline-{next(self._ids)}", tuple(prompt), p)
                    for prompt, p in zip(prompt_token_ids, params, strict=True)]
        for r in requests:  # refuse the whole call before queueing anything
            self.engine.validate(r)
        results: dict[str, GenerationOutput] = {}
        for r in requests:
            results[r.request_id] = GenerationOutput(
                r.request_id, list(r.prompt_token_ids),
                [CompletionSequence(i, [], None, None) for i in range(r.sampling_params.n)])
            self.engine.enqueue(r)  # validated above
        while self.engine.has_unfinished():
            for out in self.engine.step():
                seq = results[out.request_id].outputs[out.index]
                seq.token_ids.extend(out.new_token_ids)
                if out.logprobs is not None:
                    seq.logprobs = (seq.logprobs or []) + list(out.logprobs)
                seq.finish_reason = out.finish_reason
        return list(results.values())

    @staticmethod
    def _params(sp: SamplingParams | list[SamplingParams] | None, n: int) -> list[SamplingParams]:
        if isinstance(sp, list):
            if len(sp) != n:
                raise ValueError(f"{len(sp)} sampling params for {n} prompts")
            return sp
        return [sp or SamplingParams()] * n
