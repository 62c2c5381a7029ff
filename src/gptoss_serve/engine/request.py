"""The objects that carry a request through the engine: SamplingParams, EngineRequest, StepOutput.

Owns only data definitions; no torch, no scheduling logic. `Sequence` (mutable engine state)
lives in `engine/sequence.py`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gptoss_serve.engine.constraint import ConstraintFactory

DEFAULT_TEMPERATURE = 1.0  # OpenAI's default: SamplingParams and /v1/completions
CHAT_TEMPERATURE = 0.7  # the chat surfaces' default: /v1/chat/completions, `chat` (REPL and flag)
MIN_TEMPERATURE = 1e-5  # below this a temperature is greedy (vLLM's epsilon); 5e-324 is 0 in fp32


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request. Ranges are validated by the API layer; the engine trusts them."""

    temperature: float = DEFAULT_TEMPERATURE  # 0 is greedy, as is anything below MIN_TEMPERATURE
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: disabled
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) pairs
    seed: int | None = None
    max_tokens: int = 16
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # ignore stop_token_ids (benchmarks)
    logprobs: int | None = None  # None: off; k >= 0: chosen token's logprob plus top-k (k <= 20)
    n: int = 1
    constraint: ConstraintFactory | None = None  # structured output: one constraint per sequence

    def __post_init__(self) -> None:
        if self.temperature < MIN_TEMPERATURE:  # dividing by it would overflow float32
            object.__setattr__(self, "temperature", 0.0)


@dataclass(frozen=True)
class EngineRequest:
    """One request as the engine sees it: token ids in, token ids out."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling_params: SamplingParams
    arrival_time: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class TokenLogprob:
    """Log-probability of one sampled token and the top alternatives at that step."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), best first


@dataclass(frozen=True, slots=True)
class StepOutput:
    """What one engine step produced for one sequence of a request."""

    request_id: str
    index: int  # which of the request's n sequences (0 when n == 1)
    new_token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per new token when asked for
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "abort" when finished
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
