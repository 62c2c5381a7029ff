"""MXFP4 expert products on CPU straight from the packed experts (a decode step's few pairs).

A batch-1 decode step reads every used expert once; from the packed MXFP4 tensors that is a
quarter of the bytes of the bf16 copy the CPU set keeps for prefill. Each group of 8 weights
comes from 4 packed bytes (element 2i is byte i's low nibble): the magnitude from the 8 E2M1
magnitudes already multiplied by the block's E8M0 scale (exact: powers of two), the sign from
the code's bit 3, so every weight is the float32 value of the bf16 copy.

- `mxfp4_pairs`: one projection of every token/expert pair; the same sums, in the same order,
  as `logits_cpu.bf16_pairs` on the bf16 copy, so the same result bit for bit.
- `moe_decode`: a whole decode-step MoE layer in one call (router GEMV, top-k, softmax over the
  k, first projection with the clamped SwiGLU fused, second projection, weighted sum), one
  OpenMP region with one barrier instead of ~25 small torch operators. Same maths as
  `moe.moe_ref` (its oracle) to float32 rounding (router and SwiGLU in C's float32 order).

Compiled and loaded by `cpu_c.load`; None from the wrappers where that cannot happen.
Knows nothing of modules or loading.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from gptoss_serve.kernels import cpu_c
from gptoss_serve.kernels.cpu_threads import kernel_threads
from gptoss_serve.kernels.moe import ExpertWeights


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(the C library of csrc/mxfp4.c, how) or (None, why not); see `cpu_c.load`."""
    return cpu_c.load("mxfp4.c")


def _parts() -> int:
    return max(1, kernel_threads())


def _packed_ok(blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether one packed projection is in the layout the C functions read."""
    e, n, g, width = blocks.shape
    return (blocks.dtype == scales.dtype == torch.uint8 and width == 16
            and tuple(scales.shape) == (e, n, g) and bias.dtype == torch.float32
            and blocks.is_contiguous() and scales.is_contiguous() and bias.is_contiguous())


def mxfp4_pairs(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor,
                ids: torch.Tensor) -> torch.Tensor | None:
    """out[p] = x[p] @ W[ids[p]].T + bias[ids[p]] as float32 [P, N] from blocks uint8
    [E, N, G, 16], scales uint8 [E, N, G], bias float32 [E, N], x float32 [P, 32 G]: the
    sums of `logits_cpu.bf16_pairs` on the dequantized copy, bit for bit. None where the C
    kernel cannot run."""
    lib = _load()[0]
    if (lib is None or x.dtype != torch.float32 or not _packed_ok(blocks, scales, bias)
            or x.shape[1] != 32 * blocks.shape[2]):
        return None
    x, ids = x.contiguous(), ids.to(torch.int64).contiguous()
    out = torch.empty(x.shape[0], blocks.shape[1], dtype=torch.float32)
    lib.mxfp4_pairs(x.data_ptr(), blocks.data_ptr(), scales.data_ptr(), bias.data_ptr(),
                    ids.data_ptr(), out.data_ptr(), x.shape[0], blocks.shape[1],
                    blocks.shape[2], _parts())
    return out


def moe_decode(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor,
               experts: ExpertWeights, top_k: int, swiglu_limit: float,
               swiglu_alpha: float) -> torch.Tensor | None:
    """`moe_ref` for a few float32 rows on packed experts in one C call, float32 [T, H]; None
    where it does not apply (dense-only experts, other dtypes, no C kernel)."""
    lib = _load()[0]
    if lib is None or not experts.is_mxfp4 or x.dtype != torch.float32:
        return None
    (t, h), e = x.shape, experts.num_experts
    i = experts.w2_blocks.shape[2] * 32
    if (router_w.dtype != torch.float32 or router_b.dtype != torch.float32 or h % 32
            or not 0 < top_k <= e or tuple(router_w.shape) != (e, h)
            or not _packed_ok(experts.w1_blocks, experts.w1_scales, experts.w1_bias)
            or not _packed_ok(experts.w2_blocks, experts.w2_scales, experts.w2_bias)
            or tuple(experts.w1_blocks.shape[1:3]) != (2 * i, h // 32)):
        return None
    x, rw, rb = x.contiguous(), router_w.contiguous(), router_b.contiguous()
    pairs = t * top_k
    parts = _parts()
    work = torch.empty(pairs * (i + h) + parts * (pairs + t * e), dtype=torch.float32)
    ids = torch.empty(parts * pairs, dtype=torch.int64)
    out = torch.empty(t, h, dtype=torch.float32)
    lib.moe_decode(x.data_ptr(), rw.data_ptr(), rb.data_ptr(), experts.w1_blocks.data_ptr(),
                   experts.w1_scales.data_ptr(), experts.w1_bias.data_ptr(),
                   experts.w2_blocks.data_ptr(), experts.w2_scales.data_ptr(),
                   experts.w2_bias.data_ptr(), out.data_ptr(), work.data_ptr(), ids.data_ptr(),
                   t, e, top_k, h, i, swiglu_limit, swiglu_alpha, parts)
    return out
