"""RMSNorm with an optional fused residual add: the torch reference (docs/model-facts.md §2.3).

Oracle for `norm_triton.rms_norm_triton` (same signature). Statistics in float32; the residual
sum is rounded to the activation dtype (the residual stream is bf16 in the reference model).
Knows nothing of layers or weights loading.

Follows openai/gpt-oss `gpt_oss/torch/model.py: RMSNorm`.
"""

from __future__ import annotations

import torch


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim, returned in x's dtype.

    With `residual`, first h = x + residual (in x's dtype) and returns (rms_norm(h), h), so one
    call does the residual add and the next layer's norm.
    """
    h = x if residual is None else x + residual
    hf = h.float()
    y = hf * torch.rsqrt(hf.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.float()
    return y.to(x.dtype) if residual is None else (y.to(x.dtype), h)
