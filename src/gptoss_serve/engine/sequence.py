"""Sequence: the mutable, engine-private state of one generated sequence.

A request with `n` > 1 becomes `n` sibling sequences that share the request's prompt (and, through
the block manager's hashes, the prompt's KV blocks). Owns token ids, progress
(`num_computed_tokens`), both block tables, the chained block hashes and the finish state.
Knows nothing of torch, of how blocks are allocated, or of scheduling policy.
"""

from __future__ import annotations

import array
import enum
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gptoss_serve.engine.request import EngineRequest, SamplingParams, TokenLogprob

if TYPE_CHECKING:
    from gptoss_serve.engine.constraint import TokenConstraint


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # in the queue (new or preempted); owns no blocks
    RUNNING = "running"  # owns blocks; scheduled every step until it finishes
    FINISHED = "finished"  # done; blocks returned


@dataclass(frozen=True, slots=True)
class SampledToken:
    """What the runner sampled for one sequence in one step."""

    token_id: int
    logprob: TokenLogprob | None = None  # when the request asked for logprobs


@dataclass
class RequestGroup:
    """What the siblings of one request share."""

    request: EngineRequest
    sample_seed: int  # the request's seed, or one drawn at arrival (so recompute resamples alike)
    hash_salt: bytes  # b"" when prefix caching is on; the request id otherwise (siblings only)
    stop_ids: frozenset[int]  # token ids that finish a sequence (empty with ignore_eos)
    prompt_done: bool = False  # some sibling has computed the whole prompt (siblings may follow)


@dataclass(eq=False)
class Sequence:
    """One sequence: prompt plus the tokens generated so far."""

    group: RequestGroup
    index: int  # sibling index in 0..n-1
    seq_id: int  # engine-wide admission counter; larger is newer
    token_ids: list[int]
    num_prompt_tokens: int
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    full_blocks: list[int] = field(default_factory=list)  # logical block -> full-pool id
    sliding_blocks: list[int] = field(default_factory=list)  # same, -1 once out of the window
    block_hashes: list[bytes] = field(default_factory=list)  # chained hash of each full block
    num_registered_blocks: int = 0  # leading blocks already offered to the prefix cache
    num_trimmed_blocks: int = 0  # leading sliding-table entries already returned (-1)
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: str | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at first admission
    admitted_once: bool = False
    constraint: TokenConstraint | None = None  # made from params.constraint when first sampled

    @property
    def request_id(self) -> str:
        return self.group.request.request_id

    @property
    def params(self) -> SamplingParams:
        return self.group.request.sampling_params

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED

    def hashes_upto(self, num_blocks: int, block_size: int) -> list[bytes]:
        """Chained hashes of the first `num_blocks` full blocks (computed lazily, then kept)."""
        while len(self.block_hashes) < num_blocks:
            i = len(self.block_hashes)
            parent = self.block_hashes[-1] if self.block_hashes else self.group.hash_salt
            chunk = self.token_ids[i * block_size:(i + 1) * block_size]
            self.block_hashes.append(block_hash(parent, chunk))
        return self.block_hashes[:num_blocks]


def block_hash(parent: bytes, token_ids: list[int]) -> bytes:
    """Chained hash of one full block: depends on every token before it through `parent`."""
    h = hashlib.blake2b(parent, digest_size=16)
    h.update(array.array("q", token_ids).tobytes())
    return h.digest()
