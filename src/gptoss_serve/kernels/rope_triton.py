"""RoPE fused with the KV-cache write, and the plain KV write, as one Triton kernel.

One program per token: it rotates all query and key heads of that token (half-split, float32
math), writes q_rot/k_rot, and stores k_rot and v into the paged caches [N, bs, Hkv, D] at the
token's flat slot (slot < 0: no store, for padding rows). Same signature and results as
`kernels/rope.py: rope_kv_write_ref`. q/k/v may be strided views of a fused qkv output (last
dim contiguous). Knows nothing of how cos/sin tables are built.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gptoss_serve.kernels.triton_util import next_pow2


@triton.jit
def _rotate_heads(src, s_t, s_h, dst, d_t, t, n_heads, c, s,
                  HP: tl.constexpr, HALF: tl.constexpr):
    """Rotate the heads of token t: src/dst [.., heads, 2*HALF]; returns (x1', x2') float32."""
    h = tl.arange(0, HP)[:, None]
    j = tl.arange(0, HALF)[None, :]
    m = h < n_heads
    base = src + t * s_t + h * s_h + j
    x1 = tl.load(base, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(base + HALF, mask=m, other=0.0).to(tl.float32)
    o1 = x1 * c - x2 * s
    o2 = x2 * c + x1 * s
    out = dst + t * d_t + h * (2 * HALF) + j
    tl.store(out, o1.to(dst.dtype.element_ty), mask=m)
    tl.store(out + HALF, o2.to(dst.dtype.element_ty), mask=m)
    return o1, o2


@triton.jit
def _rope_kv_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, kc_ptr, vc_ptr,
                    slot_ptr, sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, s_cos, n_q, n_kv,
                    ROTATE: tl.constexpr, HQ_P: tl.constexpr, HKV_P: tl.constexpr,
                    HALF: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, HKV_P)[:, None]
    j = tl.arange(0, HALF)[None, :]
    hm = h < n_kv
    slot = tl.load(slot_ptr + t)
    cache = kc_ptr + slot * (n_kv * 2 * HALF) + h * (2 * HALF) + j
    wm = hm & (slot >= 0)
    if ROTATE:
        p = tl.load(pos_ptr + t)
        c = tl.load(cos_ptr + p * s_cos + j).to(tl.float32)
        s = tl.load(sin_ptr + p * s_cos + j).to(tl.float32)
        _rotate_heads(q_ptr, sq_t, sq_h, qo_ptr, n_q * 2 * HALF, t, n_q, c, s, HQ_P, HALF)
        k1, k2 = _rotate_heads(k_ptr, sk_t, sk_h, ko_ptr, n_kv * 2 * HALF, t, n_kv, c, s,
                               HKV_P, HALF)
    else:
        k1 = tl.load(k_ptr + t * sk_t + h * sk_h + j, mask=hm, other=0.0)
        k2 = tl.load(k_ptr + t * sk_t + h * sk_h + j + HALF, mask=hm, other=0.0)
    tl.store(cache, k1.to(kc_ptr.dtype.element_ty), mask=wm)
    tl.store(cache + HALF, k2.to(kc_ptr.dtype.element_ty), mask=wm)
    d = tl.arange(0, 2 * HALF)[None, :]
    vv = tl.load(v_ptr + t * sv_t + h * sv_h + d, mask=hm, other=0.0)
    vdst = vc_ptr + slot * (n_kv * 2 * HALF) + h * (2 * HALF) + d
    tl.store(vdst, vv.to(vc_ptr.dtype.element_ty), mask=wm)


def _check(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("KV caches must be contiguous [N, block_size, Hkv, D]")
    if k.stride(-1) != 1 or v.stride(-1) != 1 or k.shape[-1] != k_cache.shape[-1]:
        raise ValueError("k/v need a contiguous last dim equal to the cache head_dim")


def _launch(q, k, v, positions, cos, sin, qo, ko, k_cache, v_cache, slot_mapping, rotate):
    t, hkv, d = k.shape
    if t == 0:
        return
    _check(k, v, k_cache, v_cache)
    _rope_kv_kernel[(t,)](
        q, k, v, positions, cos, sin, qo, ko, k_cache, v_cache, slot_mapping,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        cos.stride(0), q.shape[1], hkv, ROTATE=rotate, HQ_P=next_pow2(q.shape[1]),
        HKV_P=next_pow2(hkv), HALF=d // 2, num_warps=4)


def rope_kv_write_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """See `rope_kv_write_ref`. Returns contiguous (q_rot [T, Hq, D], k_rot [T, Hkv, D])."""
    if q.stride(-1) != 1 or cos.stride(-1) != 1 or sin.stride() != cos.stride():
        raise ValueError("q and the cos/sin tables need a contiguous last dim (same strides)")
    qo = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    ko = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    _launch(q, k, v, positions, cos, sin, qo, ko, k_cache, v_cache, slot_mapping, True)
    return qo, ko


def write_kv_triton(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """`attention.write_kv` without a rotation, skipping slots < 0 (graph padding rows)."""
    _launch(k, k, v, slot_mapping, k, k, k, k, k_cache, v_cache, slot_mapping, False)
