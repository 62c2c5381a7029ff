"""The contracts of the two whole-step shortcuts a kernel set may offer (`KernelSet.decode_step`,
`KernelSet.argmax_index`), so the model can describe its tensors and call them without knowing
which path implements them (today: the CPU set, `decode_cpu.DecodeStep`, `greedy_cpu.ArgmaxIndex`).

Owns `StepWeights` / `LayerWeights` (what a one-call decode step reads: the model's tensors and
constants) and the protocols `DecodeStepKernel` and `ArgmaxFinder`. Knows nothing of modules,
C, scheduling or sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch

from gptoss_serve.formats.forward_batch import ForwardBatch, KVCache


@dataclass(frozen=True)
class LayerWeights:
    """One block's decode tensors; each tensor field is a column of the C layer table (its
    `F_` name in csrc/decode_step.c), which also holds the layer's `k_cache`, `v_cache`,
    `pool`, `window`."""

    attn_norm: torch.Tensor
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor
    sinks: torch.Tensor
    out_weight: torch.Tensor
    out_bias: torch.Tensor
    mlp_norm: torch.Tensor
    gate_weight: torch.Tensor
    gate_bias: torch.Tensor
    w1_blocks: torch.Tensor | None
    w1_scales: torch.Tensor | None
    w1_bias: torch.Tensor
    w2_blocks: torch.Tensor | None
    w2_scales: torch.Tensor | None
    w2_bias: torch.Tensor
    sliding: bool
    window: int

    def tensors(self) -> list[torch.Tensor | None]:
        """The tensor fields, in `TENSOR_FIELDS` order."""
        return [getattr(self, name) for name in TENSOR_FIELDS]


TENSOR_FIELDS = tuple(f.name for f in fields(LayerWeights))[:-2]  # all but sliding, window


@dataclass(frozen=True)
class StepWeights:
    """What the step reads besides the batch: the model's tensors and its constants."""

    embedding: torch.Tensor  # [V, H] float32
    final_norm: torch.Tensor
    layers: tuple[LayerWeights, ...]
    eps: float
    sm_scale: float
    n_q: int
    n_kv: int
    head_dim: int
    top_k: int
    swiglu_limit: float
    swiglu_alpha: float




class DecodeStepKernel(Protocol):
    """A whole decode step of a few one-token sequences in one call, built from a model's
    `StepWeights` and one KV cache (`KernelSet.decode_step(weights, kv)`)."""

    def fits(self, batch: ForwardBatch) -> bool:
        """The batch has the step's shape (whatever the tensors): cheap, checked first."""

    def current(self, weights: StepWeights, kv: KVCache) -> bool:
        """The step was built for these very tensors (else it is built again)."""

    def accepts(self, batch: ForwardBatch) -> bool:
        """`run` serves this batch."""

    def run(self, batch: ForwardBatch, kv: KVCache, cos: torch.Tensor,
            sin: torch.Tensor) -> torch.Tensor:
        """The final-normed hidden rows of `batch.logits_indices` (caches written); cos/sin
        per token [T, D/2] float32."""


class ArgmaxFinder(Protocol):
    """An index of the unembedding (`KernelSet.argmax_index(weight)`) that finds
    `logits(h).argmax(-1)` exactly without every logit."""

    def nbytes(self) -> int:
        """Bytes the index holds beside the unembedding."""

    def argmax(self, x: torch.Tensor) -> torch.Tensor | None:
        """The argmax rows of x [S, H] (the first on ties), or None: take the logits."""
