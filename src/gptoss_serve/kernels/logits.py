"""The references of products with a weight that a kernel set may keep narrower than the
activations: the logits (final hidden states times the unembedding) and the attention
projections.

Owns `logits_ref`, the oracle of every logits kernel (`KernelSet.logits`): float32 logits of
`F.linear` in the weight's dtype when x has it, else in float32 (a weight kept narrower than the
activations is upcast, so no activation is rounded); and `linear_ref`, the oracle of
`KernelSet.linear`: `F.linear` in x's dtype, the weight and bias upcast to it where they differ.
Knows nothing of modules or sampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logits_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [S, H], weight [V, H] -> float32 logits [S, V]."""
    if weight.dtype != x.dtype:
        return F.linear(x.float(), weight.float())
    return F.linear(x, weight).float()


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
               ) -> torch.Tensor:
    """x [T, in] @ weight[out, in].T + bias in x's dtype (`F.linear` when the dtypes agree)."""
    if weight.dtype != x.dtype:
        weight = weight.to(x.dtype)
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    return F.linear(x, weight, bias)
