"""MXFP4 mixture-of-experts as two grouped Triton matmuls (W4A16, float32 accumulation).

Steps: (1) routing with `moe.route` (top-k by logit, softmax over the k; the few-token path
below uses the fused `route_triton` kernel instead); (2) the (token, slot)
pairs sorted by expert and cut into tiles of BLOCK_M rows of one expert each, all on the device
with fixed-size tensors (no host sync, CUDA-graph safe); (3) up-projection: each program takes
one tile and BLOCK_N gate/up pairs (rows 2n and 2n+1 of W1, so a tile of 2*BLOCK_N interleaved
rows yields BLOCK_N activations), dequantizes the packed FP4 codes and E8M0 scales in registers
with integer and float ops, and applies bias + clamped SwiGLU (`moe_gemv_triton.swiglu`) in the
epilogue; (4) down-projection with bias and routing weight in the epilogue, scattered to the
pair's row; (5) the k rows of each token summed (deterministic, no atomics).

K and N tails are masked loads, so sizes like 2880 that are not multiples of the tiles read no
extra bytes. Dense `ExpertWeights` take the same kernels without the dequantization. Same
signature and results as `kernels/moe.py: moe_ref`. Knows nothing of the model or checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from gptoss_serve.kernels.moe import ExpertWeights, route
from gptoss_serve.kernels.moe_gemv_triton import GemvTiles, moe_gemv, swiglu
from gptoss_serve.kernels.route_triton import route_triton
from gptoss_serve.kernels.triton_util import cdiv, dot_in_float32


@dataclass(frozen=True)
class MoETiles:
    """Tile sizes and launch options of both grouped matmuls."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3


DECODE = MoETiles(block_m=16, block_n=32, block_k=128)  # few rows per expert: spread N wide
PREFILL = MoETiles(block_m=64, block_n=64, block_k=64)  # many rows per expert: tensor cores


# (token, expert) pairs up to which the matrix-vector kernels run. On an H200 at 120b shapes
# (benchmarks/gpu_moe_sweep.py; figures in docs/benchmarks.md) they were about twice as fast at
# 4 pairs and 1.5x at 16; at 64 the two paths traded places between machines, and real batches
# share experts between tokens, which this path reads once per pair, so the limit stays at 16
GEMV_MAX_PAIRS = 16

# The matrix-vector path routes with the fused kernel of `route_triton.py` (one launch instead
# of linear + topk + softmax). Checked under the interpreter and compiled for sm_90 only: no
# GPU timing of it yet (docs/benchmarks.md, issue 15); False goes back to `moe.route`.
FUSED_ROUTE = True


def pick_tiles(num_pairs: int, num_experts: int) -> MoETiles:
    """Decode tiles while experts average at most 16 rows, prefill tiles beyond."""
    return DECODE if cdiv(num_pairs, num_experts) <= 16 else PREFILL


@triton.jit
def _weight_tile(w_ptr, s_ptr, rows, row_ok, k0, n_in, s_wr, s_sr,
                 MXFP4: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Rows `rows` [BN] of one expert's (out, in) weight, inputs k0..k0+BK: float32 [BK, BN]."""
    if MXFP4:
        kb = k0 // 2 + tl.arange(0, BK // 2)
        m = row_ok[:, None] & (kb[None, :] < n_in // 2)
        byte = tl.load(w_ptr + rows[:, None] * s_wr + kb[None, :], mask=m, other=0).to(tl.int32)
        codes = tl.reshape(tl.join(byte & 15, byte >> 4), (BN, BK))  # low nibble first
        ex = (codes >> 1) & 3
        man = codes & 1
        # E2M1 -> float32 bits: exponent 0 is the subnormal 0 or 0.5, else (1 + m/2) 2^(e-1)
        mag = tl.where(ex == 0, man * 0x3F000000, ((ex + 126) << 23) | (man << 22))
        val = (mag | ((codes >> 3) << 31)).to(tl.float32, bitcast=True)
        kg = k0 // 32 + tl.arange(0, BK // 32)
        sm = row_ok[:, None] & (kg[None, :] < n_in // 32)
        sc = tl.load(s_ptr + rows[:, None] * s_sr + kg[None, :], mask=sm, other=127)
        scale = (sc.to(tl.int32) << 23).to(tl.float32, bitcast=True)  # E8M0: 2^(s - 127)
        w = tl.reshape(tl.reshape(val, (BN, BK // 32, 32)) * scale[:, :, None], (BN, BK))
    else:
        kk = k0 + tl.arange(0, BK)
        m = row_ok[:, None] & (kk[None, :] < n_in)
        w = tl.load(w_ptr + rows[:, None] * s_wr + kk[None, :], mask=m, other=0.0)
        w = w.to(tl.float32)
    return tl.trans(w)


@triton.jit
def _tile_rows(t_exp_ptr, t_lo_ptr, t_hi_ptr, pair_ptr, BM: tl.constexpr):
    """This program's expert (-1: idle tile), its sorted rows, their mask and pair ids."""
    tile = tl.program_id(0)
    e = tl.load(t_exp_ptr + tile)
    rows = tl.load(t_lo_ptr + tile) + tl.arange(0, BM)
    r_ok = rows < tl.load(t_hi_ptr + tile)
    pair = tl.load(pair_ptr + rows, mask=r_ok, other=0)
    return e, rows, r_ok, pair


@triton.jit
def _moe_up_kernel(x_ptr, w_ptr, s_ptr, b_ptr, a_ptr, t_exp_ptr, t_lo_ptr, t_hi_ptr, pair_ptr,
                   n_in, n_out, top_k, s_x, s_we, s_wr, s_se, s_sr, s_be, s_a, limit, alpha,
                   MXFP4: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   DOT: tl.constexpr):
    e, rows, r_ok, pair = _tile_rows(t_exp_ptr, t_lo_ptr, t_hi_ptr, pair_ptr, BM)
    if e < 0:
        return
    tok = (pair // top_k).to(tl.int64)
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    n_ok = n < n_out
    w_e = w_ptr + e.to(tl.int64) * s_we
    s_e = s_ptr + e.to(tl.int64) * s_se
    acc_g = tl.zeros([BM, BN], dtype=tl.float32)
    acc_u = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, n_in, BK):
        kk = k0 + tl.arange(0, BK)
        xm = r_ok[:, None] & (kk[None, :] < n_in)
        xt = tl.load(x_ptr + tok[:, None] * s_x + kk[None, :], mask=xm, other=0.0)
        xt = xt.to(tl.float32).to(DOT)
        wg = _weight_tile(w_e, s_e, 2 * n, n_ok, k0, n_in, s_wr, s_sr, MXFP4, BN, BK)
        acc_g += tl.dot(xt, wg.to(DOT), input_precision="ieee")
        wu = _weight_tile(w_e, s_e, 2 * n + 1, n_ok, k0, n_in, s_wr, s_sr, MXFP4, BN, BK)
        acc_u += tl.dot(xt, wu.to(DOT), input_precision="ieee")
    bias = b_ptr + e.to(tl.int64) * s_be
    g = acc_g + tl.load(bias + 2 * n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    u = acc_u + tl.load(bias + 2 * n + 1, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    act = swiglu(g, u, limit, alpha)
    a_off = rows.to(tl.int64)[:, None] * s_a + n[None, :]
    tl.store(a_ptr + a_off, act.to(a_ptr.dtype.element_ty), mask=r_ok[:, None] & n_ok[None, :])


@triton.jit
def _moe_down_kernel(a_ptr, w_ptr, s_ptr, b_ptr, rw_ptr, y_ptr, t_exp_ptr, t_lo_ptr, t_hi_ptr,
                     pair_ptr, n_in, n_out, s_a, s_we, s_wr, s_se, s_sr, s_be, s_y,
                     MXFP4: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                     BK: tl.constexpr, DOT: tl.constexpr):
    e, rows, r_ok, pair = _tile_rows(t_exp_ptr, t_lo_ptr, t_hi_ptr, pair_ptr, BM)
    if e < 0:
        return
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    n_ok = n < n_out
    w_e = w_ptr + e.to(tl.int64) * s_we
    s_e = s_ptr + e.to(tl.int64) * s_se
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, n_in, BK):
        kk = k0 + tl.arange(0, BK)
        am = r_ok[:, None] & (kk[None, :] < n_in)
        at = tl.load(a_ptr + rows.to(tl.int64)[:, None] * s_a + kk[None, :], mask=am, other=0.0)
        wt = _weight_tile(w_e, s_e, n, n_ok, k0, n_in, s_wr, s_sr, MXFP4, BN, BK)
        acc += tl.dot(at.to(tl.float32).to(DOT), wt.to(DOT), input_precision="ieee")
    bias = tl.load(b_ptr + e.to(tl.int64) * s_be + n, mask=n_ok, other=0.0).to(tl.float32)
    weight = tl.load(rw_ptr + pair, mask=r_ok, other=0.0)
    out = (acc + bias[None, :]) * weight[:, None]
    y_off = pair.to(tl.int64)[:, None] * s_y + n[None, :]
    tl.store(y_ptr + y_off, out, mask=r_ok[:, None] & n_ok[None, :])


def expert_tiles(ids: torch.Tensor, num_experts: int, block_m: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group pairs by expert into row tiles, on the device and without a host sync.

    ids [T, k] -> (sorted pair ids [T*k], and per tile: expert (-1 = idle), first row, row end).
    The tile count is the bound min(E, T*k) + cdiv(T*k, block_m), fixed by the shapes.
    """
    flat = ids.reshape(-1)
    pairs = torch.argsort(flat, stable=True).to(torch.int32)
    counts = torch.zeros(num_experts, dtype=torch.int64, device=ids.device)
    counts.index_add_(0, flat, torch.ones_like(flat))
    ends = torch.cumsum(counts, 0)
    per_expert = (counts + block_m - 1) // block_m
    tile_end = torch.cumsum(per_expert, 0)
    n_tiles = min(num_experts, flat.numel()) + cdiv(flat.numel(), block_m)
    t = torch.arange(n_tiles, device=ids.device)
    owner = torch.searchsorted(tile_end, t, right=True)
    e = owner.clamp(max=num_experts - 1)
    first = ends[e] - counts[e] + (t - (tile_end[e] - per_expert[e])) * block_m
    expert = torch.where(owner < num_experts, e, -1).to(torch.int32)
    return pairs, expert, first.to(torch.int32), ends[e].to(torch.int32)


def _weights(experts: ExpertWeights, which: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight or packed blocks, scales (or the weight again)) of W1 or W2."""
    if experts.is_mxfp4:
        blocks = experts.w1_blocks if which == 1 else experts.w2_blocks
        scales = experts.w1_scales if which == 1 else experts.w2_scales
        if blocks.stride(-1) != 1 or blocks.stride(-2) != 16 or scales.stride(-1) != 1:
            raise ValueError("MXFP4 blocks/scales must be contiguous in their last dims")
        return blocks, scales
    w = experts.w1 if which == 1 else experts.w2
    if w.stride(-1) != 1:
        raise ValueError("dense expert weights need a contiguous last dim")
    return w, w


def moe_triton(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor,
               experts: ExpertWeights, top_k: int, swiglu_limit: float = 7.0,
               swiglu_alpha: float = 1.702, *, tiles: MoETiles | None = None,
               gemv: GemvTiles | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """See `moe_ref`. x [T, H] -> [T, H] in x's dtype (into `out` when given).

    Up to GEMV_MAX_PAIRS (token, expert) pairs take the matrix-vector kernels of
    `moe_gemv_triton.py`, more take the grouped matmul; `tiles` forces the grouped path with
    those tiles, `gemv` the matrix-vector path with those.
    """
    t, h = x.shape
    if out is None:
        out = torch.empty((t, h), dtype=x.dtype, device=x.device)
    if t == 0:
        return out
    x = x if x.stride(-1) == 1 else x.contiguous()
    few = gemv is not None or (tiles is None and t * top_k <= GEMV_MAX_PAIRS)
    if few and FUSED_ROUTE and router_w.stride(-1) == 1:
        ids, weights = route_triton(x, router_w, router_b, top_k)
    else:
        ids, weights = route(x, router_w, router_b, top_k)
    w1, s1 = _weights(experts, 1)
    w2, s2 = _weights(experts, 2)
    if few:
        return moe_gemv(x, ids, weights, w1, s1, w2, s2, experts, swiglu_limit, swiglu_alpha,
                        out, gemv)
    n_exp, inter = experts.num_experts, experts.w1_bias.shape[-1] // 2
    cfg = tiles or pick_tiles(t * top_k, n_exp)
    pairs, t_exp, t_lo, t_hi = expert_tiles(ids, n_exp, cfg.block_m)
    f32 = dot_in_float32(x)
    dot = tl.float32 if f32 else tl.bfloat16 if x.dtype == torch.bfloat16 else tl.float16
    act = torch.empty((t * top_k, inter), dtype=torch.float32 if f32 else x.dtype,
                      device=x.device)
    y = torch.empty((t * top_k, h), dtype=torch.float32, device=x.device)
    opts = dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    tiles_sizes = dict(BM=cfg.block_m, BN=cfg.block_n, BK=cfg.block_k, DOT=dot)
    mx = experts.is_mxfp4
    _moe_up_kernel[(t_exp.numel(), cdiv(inter, cfg.block_n))](
        x, w1, s1, experts.w1_bias, act, t_exp, t_lo, t_hi, pairs, h, inter, top_k, x.stride(0),
        w1.stride(0), w1.stride(1), s1.stride(0), s1.stride(1), experts.w1_bias.stride(0),
        act.stride(0), swiglu_limit, swiglu_alpha, MXFP4=mx, **tiles_sizes, **opts)
    _moe_down_kernel[(t_exp.numel(), cdiv(h, cfg.block_n))](
        act, w2, s2, experts.w2_bias, weights.reshape(-1), y, t_exp, t_lo, t_hi, pairs, inter,
        h, act.stride(0), w2.stride(0), w2.stride(1), s2.stride(0), s2.stride(1),
        experts.w2_bias.stride(0), y.stride(0), MXFP4=mx, **tiles_sizes, **opts)
    out.copy_(y.view(t, top_k, h).sum(dim=1))
    return out
