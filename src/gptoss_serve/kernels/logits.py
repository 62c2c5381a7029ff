"""The logits (unembedding) reference: the final hidden states times the unembedding matrix.

Owns `logits_ref`, the oracle of every logits kernel (`KernelSet.logits`): float32 logits of
`F.linear` in the weight's dtype when x has it, else in float32 (a weight kept narrower than the
activations is upcast, so no activation is rounded). Knows nothing of modules or sampling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logits_ref(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [S, H], weight [V, H] -> float32 logits [S, V]."""
    if weight.dtype != x.dtype:
        return F.linear(x.float(), weight.float())
    return F.linear(x, weight).float()
