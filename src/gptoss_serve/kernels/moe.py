"""Mixture-of-experts of gpt-oss: the plain-torch reference that dequantizes only used experts.

Owns routing (top-k by logit, softmax over the k), the interleaved clamped SwiGLU variant and the
weighted combine of docs/model-facts.md §2.5. This is the oracle for the fast kernels and the CPU
path. Expert weights arrive as an `ExpertWeights` (packed MXFP4 or dense); a kernel set that
wants them held dequantized says how in a `DenseExperts`.

Follows openai/gpt-oss `gpt_oss/torch/model.py: MLPBlock.forward, swiglu`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gptoss_serve.formats.mxfp4 import dequantize


@dataclass(frozen=True)
class DenseExperts:
    """A kernel set's wish that the model hold its experts dequantized (`KernelSet.dense_experts`).

    `fits(total_bytes)` decides once for all layers (and logs why); `dequantize` has the
    signature and values of `formats/mxfp4.py: dequantize`; `dtype` None: the model's.
    `keep_packed`: the packed MXFP4 tensors stay beside the dense copy (a decode kernel of the
    set reads them: a quarter of the bytes).
    """

    fits: Callable[[int], bool]
    dtype: torch.dtype | None = None
    keep_packed: bool = False
    dequantize: Callable[..., torch.Tensor] = dequantize


@dataclass
class ExpertWeights:
    """All experts of one layer, (out, in) row layout. Either packed MXFP4 or dense.

    MXFP4: w1_blocks [E, 2I, H/32, 16], w1_scales [E, 2I, H/32], w2_blocks [E, H, I/32, 16],
    w2_scales [E, H, I/32] (uint8). Dense: w1 [E, 2I, H], w2 [E, H, I]. Biases: w1_bias [E, 2I],
    w2_bias [E, H]. Rows of w1 interleave gate (even) and up (odd).
    """

    w1_bias: torch.Tensor
    w2_bias: torch.Tensor
    w1_blocks: torch.Tensor | None = None
    w1_scales: torch.Tensor | None = None
    w2_blocks: torch.Tensor | None = None
    w2_scales: torch.Tensor | None = None
    w1: torch.Tensor | None = None
    w2: torch.Tensor | None = None

    @property
    def is_mxfp4(self) -> bool:
        return self.w1_blocks is not None

    @property
    def num_experts(self) -> int:
        return self.w1_bias.shape[0]

    def expert_w1(self, e: int, dtype: torch.dtype) -> torch.Tensor:
        if self.is_mxfp4:
            return dequantize(self.w1_blocks[e], self.w1_scales[e], dtype)
        return self.w1[e].to(dtype)

    def expert_w2(self, e: int, dtype: torch.dtype) -> torch.Tensor:
        if self.is_mxfp4:
            return dequantize(self.w2_blocks[e], self.w2_scales[e], dtype)
        return self.w2[e].to(dtype)


def route(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor,
          top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k experts by raw router logit, weights = softmax over those k (float32).

    Returns (expert ids [T, k] int64, weights [T, k] float32).
    """
    logits = torch.nn.functional.linear(x, router_w, router_b)
    top = torch.topk(logits, top_k, dim=-1, sorted=True)
    return top.indices, torch.softmax(top.values.float(), dim=-1)


def swiglu(u: torch.Tensor, limit: float, alpha: float) -> torch.Tensor:
    """Interleaved clamped GLU: gate = u[..., 0::2] (clamped above), up = u[..., 1::2]."""
    gate = u[..., 0::2].clamp(max=limit)
    up = u[..., 1::2].clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)


def moe_ref(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor,
            experts: ExpertWeights, top_k: int, swiglu_limit: float = 7.0,
            swiglu_alpha: float = 1.702) -> torch.Tensor:
    """y[t] = sum_k w[t,k] * expert_{e[t,k]}(x[t]); x [T, H] -> [T, H] in x's dtype.

    Expert matmuls accumulate in float32; only the experts that some token selected are
    dequantized.
    """
    ids, weights = route(x, router_w, router_b, top_k)
    out = torch.zeros(x.shape[0], experts.w2_bias.shape[-1], dtype=torch.float32, device=x.device)
    for e in torch.unique(ids).tolist():
        tok, slot = torch.nonzero(ids == e, as_tuple=True)
        xe = x[tok].float()
        u = xe @ experts.expert_w1(e, torch.float32).T + experts.w1_bias[e].float()
        a = swiglu(u, swiglu_limit, swiglu_alpha)
        d = a @ experts.expert_w2(e, torch.float32).T + experts.w2_bias[e].float()
        out.index_add_(0, tok, d * weights[tok, slot].unsqueeze(-1))
    return out.to(x.dtype)
