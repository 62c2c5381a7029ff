"""Fused MoE routing for decode-sized batches: router GEMV, top-k and softmax in one Triton kernel.

`moe.route` is three launches (the router linear, `topk`, `softmax`); for a few decode tokens
each is a tiny kernel, and the launches cost more than the work. Here one program per token
computes every expert's logit (float32 accumulation over the hidden dimension, bias added,
then rounded to the activations' dtype as the reference's `linear` output is), picks the k
largest by repeated max (the lowest expert id first on equal logits; a NaN logit counts as
the largest, so every id is a real expert) and writes their ids and
the softmax over the k (float32). Same contract as `moe.route`: ids [T, k] int64 in descending
logit order, weights [T, k] float32. Knows nothing of the model; `moe_triton` decides when to
use it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _route_kernel(x_ptr, w_ptr, b_ptr, ids_ptr, wt_ptr, n_in, n_exp, s_x, s_w,
                  K: tl.constexpr, KP: tl.constexpr, BE: tl.constexpr, BK: tl.constexpr,
                  BF16: tl.constexpr):
    tok = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, BE)
    e_ok = e < n_exp
    acc = tl.zeros([BE, BK], dtype=tl.float32)
    for k0 in range(0, n_in, BK):
        k = k0 + tl.arange(0, BK)
        k_ok = k < n_in
        w = tl.load(w_ptr + e[:, None] * s_w + k[None, :], mask=e_ok[:, None] & k_ok[None, :],
                    other=0.0)
        xv = tl.load(x_ptr + tok * s_x + k, mask=k_ok, other=0.0)
        acc += w.to(tl.float32) * xv.to(tl.float32)[None, :]
    logit = tl.sum(acc, axis=1) + tl.load(b_ptr + e, mask=e_ok, other=0.0).to(tl.float32)
    if BF16:  # round to nearest even by hand: the interpreter's cast truncates
        bits = logit.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        logit = bits.to(tl.float32, bitcast=True)
    else:
        logit = logit.to(x_ptr.dtype.element_ty).to(tl.float32)  # what linear() would return
    logit = tl.where(logit != logit, float("inf"), logit)  # NaN counts as largest, as in topk:
    logit = tl.where(e_ok, logit, float("-inf"))  # every pick stays a real expert id
    slots = tl.arange(0, KP)
    vals = tl.full([KP], float("-inf"), dtype=tl.float32)
    idx = tl.zeros([KP], dtype=tl.int32)
    for s in tl.static_range(K):
        best = tl.max(logit, axis=0)
        pick = tl.min(tl.where(logit == best, e, BE), axis=0)
        vals = tl.where(slots == s, best, vals)
        idx = tl.where(slots == s, pick, idx)
        logit = tl.where(e == pick, float("-inf"), logit)
    p = tl.exp(vals - tl.max(vals, axis=0))  # padding slots: exp(-inf) = 0
    p = p / tl.sum(p, axis=0)
    tl.store(ids_ptr + tok * K + slots, idx.to(tl.int64), mask=slots < K)
    tl.store(wt_ptr + tok * K + slots, p, mask=slots < K)


def route_triton(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor,
                 top_k: int, *, block_k: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """See `moe.route`: x [T, H], router_w [E, H], router_b [E] -> (ids [T, k] int64,
    weights [T, k] float32). x and router_w need a contiguous last dim."""
    t, h = x.shape
    n_exp = router_w.shape[0]
    if x.stride(-1) != 1 or router_w.stride(-1) != 1:
        raise ValueError("route_triton needs x and router_w contiguous in their last dim")
    if not 0 < top_k <= n_exp:
        raise ValueError(f"top_k must lie in [1, {n_exp}], got {top_k}")
    ids = torch.empty((t, top_k), dtype=torch.int64, device=x.device)
    weights = torch.empty((t, top_k), dtype=torch.float32, device=x.device)
    if t == 0:
        return ids, weights
    be = triton.next_power_of_2(n_exp)
    _route_kernel[(t,)](x, router_w, router_b, ids, weights, h, n_exp, x.stride(0),
                        router_w.stride(0), K=top_k, KP=triton.next_power_of_2(top_k), BE=be,
                        BK=block_k, BF16=x.dtype == torch.bfloat16,
                        num_warps=4 if be <= 64 else 8)
    return ids, weights
