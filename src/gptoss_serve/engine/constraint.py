"""Per-sequence token constraints and the batch's token masks (structured outputs in the engine).

A request may carry a `ConstraintFactory` in its SamplingParams; each of its sequences gets its own
`TokenConstraint` from it when first sampled. Every step, `StructuredOutputs.begin` starts filling
one bitmask row per constrained row on a worker thread while the model runs its forward pass
(llguidance releases the GIL), the runner waits for it just before sampling
(`TokenMasks.wait`), the sampler sets the masked-out logits to -inf, and `StructuredOutputs.accept`
feeds each sampled token to its sequence's constraint. Bitmask layout: int32 [rows, ceil(V/32)],
bit `t % 32` of word `t // 32` set when token t is allowed (llguidance's layout).

Owns the protocol, the buffers and the thread; knows nothing of grammars, JSON, harmony or HTTP
(those live in `gptoss_serve.constrain`).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

import torch

from gptoss_serve.kernels.bitmask_cpu import apply_bitmask_c

if TYPE_CHECKING:
    from gptoss_serve.engine.scheduler import SchedulerOutput
    from gptoss_serve.engine.sequence import SampledToken


class TokenConstraint(Protocol):
    """One sequence's constraint: which tokens may come next, and its state as tokens arrive."""

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write the allowed-token bits of the next token into `bitmask[row]` (int32, CPU)."""

    def accept_token(self, token_id: int) -> bool:
        """Advance by one generated token; False when the token was not allowed."""

    def is_finished(self) -> bool:
        """Whether the constrained output is complete (only stop tokens may follow)."""


class ConstraintFactory(Protocol):
    """What a request carries: makes one fresh TokenConstraint per sequence."""

    def new_constraint(self) -> TokenConstraint: ...


def bitmask_words(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def apply_bitmask(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> None:
    """Set to -inf, in place, the logits of `rows` whose bit in `bitmask` (one row per entry of
    `rows`, on any device) is clear. Ids past the bitmask's 32 * words are masked too. On CPU a C
    kernel does it in one pass (`kernels/bitmask_cpu.py`); elsewhere torch unpacks the bits."""
    if rows and not apply_bitmask_c(logits, rows, bitmask):
        apply_bitmask_torch(logits, rows, bitmask)


def apply_bitmask_torch(logits: torch.Tensor, rows: list[int], bitmask: torch.Tensor) -> None:
    """`apply_bitmask` with torch operators (any device): the bits unpacked to a boolean mask."""
    vocab = logits.shape[1]
    words = bitmask.to(logits.device, non_blocking=True)
    shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
    allowed = ((words[:, :, None] >> shifts) & 1).bool().reshape(len(rows), -1)
    keep = torch.zeros(len(rows), vocab, dtype=torch.bool, device=logits.device)
    width = min(vocab, allowed.shape[1])
    keep[:, :width] = allowed[:, :width]
    idx = torch.tensor(rows, dtype=torch.int64).to(logits.device, non_blocking=True)
    logits[idx] = logits[idx].masked_fill(~keep, float("-inf"))


class TokenMasks:
    """The bitmask of one step, being filled on the worker thread; rows in sampling order."""

    def __init__(self, rows: list[int], future: Future[torch.Tensor]):
        self.rows = rows  # indices (into the step's sampled rows) that are constrained
        self._future = future

    def wait(self) -> torch.Tensor:
        """int32 [len(rows), words]; re-raises what the worker raised."""
        return self._future.result()


class StructuredOutputs:
    """Gives sequences their constraints, computes each step's masks, feeds sampled tokens back."""

    def __init__(self, vocab_size: int):
        self.words = bitmask_words(vocab_size)
        self._pool: ThreadPoolExecutor | None = None
        self._buffer = torch.empty(0, self.words, dtype=torch.int32)

    def begin(self, out: SchedulerOutput) -> TokenMasks | None:
        """Start computing the masks of the step's constrained rows; None when there are none."""
        jobs: list[tuple[int, TokenConstraint]] = []
        for i, s in enumerate(out.sampling):
            factory = s.seq.params.constraint
            if factory is None:
                continue
            if s.seq.constraint is None:
                s.seq.constraint = factory.new_constraint()
            jobs.append((i, s.seq.constraint))
        if not jobs:
            return None
        if self._buffer.shape[0] < len(jobs):
            self._buffer = torch.empty(max(len(jobs), 2 * self._buffer.shape[0]), self.words,
                                       dtype=torch.int32)
        buf = self._buffer[:len(jobs)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="token-masks")
        future = self._pool.submit(_fill, [c for _, c in jobs], buf)
        return TokenMasks([i for i, _ in jobs], future)

    @staticmethod
    def accept(out: SchedulerOutput, sampled: Seq[SampledToken]) -> None:
        """Feed each constrained row its sampled token (before the scheduler appends it)."""
        for s, tok in zip(out.sampling, sampled, strict=True):
            if s.seq.constraint is not None and not s.seq.is_finished:
                s.seq.constraint.accept_token(tok.token_id)


def _fill(constraints: list[TokenConstraint], buf: torch.Tensor) -> torch.Tensor:
    """Fill `buf` (a view of the reused buffer: the step samples before the next step begins,
    so no copy is needed)."""
    for row, c in enumerate(constraints):
        c.fill_bitmask(buf, row)
    return buf
