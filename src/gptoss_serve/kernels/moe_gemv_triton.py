"""MXFP4 mixture-of-experts for a few tokens (decode) as matrix-vector Triton kernels.

With one to a few dozen tokens each (token, expert) pair multiplies one activation row by one
expert's weights, so the grouped matmul of `moe_triton.py` wastes its tensor-core tiles on empty
rows and needs the pairs sorted into tiles first (a dozen small launches per layer). Here every
program owns one pair and BN output rows: it streams the packed FP4 bytes of those rows along the
input dimension, decodes both nibbles with integer ops (an E2M1 code placed in a float16 bit
pattern is its value times 2^-14; the factor is applied once at the end), multiplies by the E8M0
scale and the activations in float32, and reduces once after the loop. No sort, no tiles, no host
sync: the grid is (pairs, output blocks), so the call can be captured in a CUDA graph.

Up-projection (one program per pair and BN activations): gate rows 2n and up rows 2n+1 of W1,
bias and the clamped SwiGLU in the epilogue, activations kept in float32. Down-projection (one
program per token and BN outputs): the token's k pairs in turn with bias and routing weight,
summed in float32 and stored once in the output's dtype (no atomics, no extra sum). Dense
`ExpertWeights` take the same kernels without the decoding. Knows nothing of the model;
`moe_triton.moe_triton` decides when to use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from gptoss_serve.kernels.moe import ExpertWeights
from gptoss_serve.kernels.triton_util import cdiv


@dataclass(frozen=True)
class GemvTiles:
    """Output rows per program, input bytes (MXFP4) or elements (dense) per loop step."""

    block_n: int = 16
    block_k: int = 128
    num_warps: int = 2


def gemv_tiles(num_pairs: int) -> GemvTiles:
    """Measured on an H200 at 120b shapes (docs/benchmarks.md): narrow and long for a lone
    token's 4 pairs, 16 x 128 bytes on 2 warps from 16 pairs up."""
    return GemvTiles(8, 256, 4) if num_pairs <= 4 else GemvTiles()


@triton.jit
def _e2m1(c):
    """Low nibble of int32 `c` (sign, 2-bit exponent, 1-bit mantissa) -> float32 value / 2^14."""
    bits = ((c & 7) << 9) | ((c & 8) << 12)
    return bits.to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _row_dots(w_ptr, s_ptr, rows, row_ok, x_ptr, n_in, s_wr, s_sr,
              MXFP4: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """float32 [BN]: W[rows, :n_in] . x for one expert's (out, in) weight, packed or dense."""
    acc = tl.zeros([BN, BK], dtype=tl.float32)
    if MXFP4:
        for j0 in range(0, n_in // 2, BK):
            j = j0 + tl.arange(0, BK)
            j_ok = j < n_in // 2
            m = row_ok[:, None] & j_ok[None, :]
            byte = tl.load(w_ptr + rows[:, None] * s_wr + j[None, :], mask=m, other=0)
            byte = byte.to(tl.int32)
            sc = tl.load(s_ptr + rows[:, None] * s_sr + (j // 16)[None, :], mask=m, other=0)
            scale = (sc.to(tl.int32) << 23).to(tl.float32, bitcast=True)  # E8M0: 2^(s - 127)
            xe = tl.load(x_ptr + 2 * j, mask=j_ok, other=0.0).to(tl.float32)
            xo = tl.load(x_ptr + 2 * j + 1, mask=j_ok, other=0.0).to(tl.float32)
            acc += (_e2m1(byte) * xe[None, :] + _e2m1(byte >> 4) * xo[None, :]) * scale
        return tl.sum(acc, axis=1) * 16384.0  # 2^14, see _e2m1
    else:
        for k0 in range(0, n_in, BK):
            k = k0 + tl.arange(0, BK)
            k_ok = k < n_in
            w = tl.load(w_ptr + rows[:, None] * s_wr + k[None, :],
                        mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            acc += w.to(tl.float32) * tl.load(x_ptr + k, mask=k_ok, other=0.0).to(tl.float32)
        return tl.sum(acc, axis=1)


@triton.jit
def swiglu(g, u, limit, alpha):
    """The clamped SwiGLU of `moe.swiglu` on float32 gate and up values (already split):
    gate clamped above, up clamped both ways, gate * sigmoid(alpha * gate) * (up + 1). The one
    Triton copy; both MoE kernels call it."""
    g = tl.minimum(g, limit)
    u = tl.minimum(tl.maximum(u, -limit), limit)
    return g * tl.sigmoid(alpha * g) * (u + 1.0)


@triton.jit
def _gemv_up_kernel(x_ptr, ids_ptr, w_ptr, s_ptr, b_ptr, a_ptr, n_in, n_out, top_k, s_x,
                    s_we, s_wr, s_se, s_sr, s_be, s_a, limit, alpha,
                    MXFP4: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pair = tl.program_id(0)
    e = tl.load(ids_ptr + pair).to(tl.int64)
    x_row = x_ptr + (pair // top_k).to(tl.int64) * s_x
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    n_ok = n < n_out
    w_e, s_e, bias = w_ptr + e * s_we, s_ptr + e * s_se, b_ptr + e * s_be
    g = _row_dots(w_e, s_e, 2 * n, n_ok, x_row, n_in, s_wr, s_sr, MXFP4, BN, BK)
    u = _row_dots(w_e, s_e, 2 * n + 1, n_ok, x_row, n_in, s_wr, s_sr, MXFP4, BN, BK)
    g = g + tl.load(bias + 2 * n, mask=n_ok, other=0.0).to(tl.float32)
    u = u + tl.load(bias + 2 * n + 1, mask=n_ok, other=0.0).to(tl.float32)
    act = swiglu(g, u, limit, alpha)
    tl.store(a_ptr + pair.to(tl.int64) * s_a + n, act, mask=n_ok)


@triton.jit
def _gemv_down_kernel(a_ptr, ids_ptr, rw_ptr, w_ptr, s_ptr, b_ptr, o_ptr, n_in, n_out, top_k,
                      s_a, s_we, s_wr, s_se, s_sr, s_be, s_o,
                      MXFP4: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """One token's BN output columns: its k pairs in turn, summed in float32, stored once."""
    tok = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    n_ok = n < n_out
    out = tl.zeros([BN], dtype=tl.float32)
    for slot in range(0, top_k):
        pair = tok * top_k + slot
        e = tl.load(ids_ptr + pair).to(tl.int64)
        d = _row_dots(w_ptr + e * s_we, s_ptr + e * s_se, n, n_ok, a_ptr + pair * s_a, n_in,
                      s_wr, s_sr, MXFP4, BN, BK)
        d += tl.load(b_ptr + e * s_be + n, mask=n_ok, other=0.0).to(tl.float32)
        out += d * tl.load(rw_ptr + pair)
    tl.store(o_ptr + tok * s_o + n, out.to(o_ptr.dtype.element_ty), mask=n_ok)


def moe_gemv(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w1: torch.Tensor,
             s1: torch.Tensor, w2: torch.Tensor, s2: torch.Tensor, experts: ExpertWeights,
             swiglu_limit: float, swiglu_alpha: float, out: torch.Tensor,
             tiles: GemvTiles | None = None) -> torch.Tensor:
    """Routed pairs (ids/weights [T, k]) through their experts, summed over k, into `out`
    ([T, H], contiguous last dim). w1/s1, w2/s2: packed blocks and scales (dense: the weight
    twice), as `moe_triton._weights` gives them; x [T, H] with a contiguous last dim.
    """
    t, h = x.shape
    top_k = ids.shape[1]
    inter = experts.w1_bias.shape[-1] // 2
    mx = experts.is_mxfp4
    flat_ids = ids.reshape(-1)
    tiles = tiles or gemv_tiles(flat_ids.numel())
    act = torch.empty((t * top_k, inter), dtype=torch.float32, device=x.device)
    opts = dict(MXFP4=mx, BN=tiles.block_n, BK=tiles.block_k, num_warps=tiles.num_warps)
    _gemv_up_kernel[(t * top_k, cdiv(inter, tiles.block_n))](
        x, flat_ids, w1, s1, experts.w1_bias, act, h, inter, top_k, x.stride(0), w1.stride(0),
        w1.stride(1), s1.stride(0), s1.stride(1), experts.w1_bias.stride(0), act.stride(0),
        swiglu_limit, swiglu_alpha, **opts)
    _gemv_down_kernel[(t, cdiv(h, tiles.block_n))](
        act, flat_ids, weights.reshape(-1), w2, s2, experts.w2_bias, out, inter, h, top_k,
        act.stride(0), w2.stride(0), w2.stride(1), s2.stride(0), s2.stride(1),
        experts.w2_bias.stride(0), out.stride(0), **opts)
    return out
