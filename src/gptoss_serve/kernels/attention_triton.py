"""Paged attention with per-head sinks and a sliding window as Triton kernels.

One kernel serves prefill, chunked prefill and decode: each program takes a tile of BLOCK_Q new
tokens of one sequence times the GQA group of one KV head (BLOCK_Q * group rows, so a decode
step still feeds the tensor cores), and walks that sequence's paged keys with an online
softmax whose running max starts at the head's sink logit. For decode the key range of each
tile is split across NUM_SPLITS programs (flash-decoding); a second kernel merges the partial
(max, sum, acc) triples and adds the sink to the denominator. No host sync: the grid comes from
shapes only, so the call can be captured in a CUDA graph.

Same signature and results as `kernels/attention.py: paged_attention_ref`; k/v = None skips the
KV write (when `rope_triton.rope_kv_write_triton` already stored them). Knows nothing of block
allocation or scheduling.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gptoss_serve.kernels.rope_triton import write_kv_triton
from gptoss_serve.kernels.triton_util import cdiv, device_sms, dot_in_float32, next_pow2

LOG2E = 1.4426950408889634


@triton.jit
def _find_seq(qsl_ptr, tile, num_seqs, BLOCK_Q: tl.constexpr):
    """Sequence owning global q tile `tile`: the last b with qsl[b] // BLOCK_Q + b <= tile."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        if tl.load(qsl_ptr + mid) // BLOCK_Q + mid <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _attn_kernel(q_ptr, kc_ptr, vc_ptr, bt_ptr, qsl_ptr, sl_ptr, sink_ptr, o_ptr, po_ptr, pml_ptr,
                 num_seqs, num_tokens, s_qt, s_qh, s_bt, qk_scale, window,
                 NUM_KV: tl.constexpr, GROUP: tl.constexpr, GROUP_P: tl.constexpr,
                 BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_D: tl.constexpr,
                 BLOCK_SIZE: tl.constexpr, NUM_SPLITS: tl.constexpr, DOT: tl.constexpr):
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    # 1. which sequence and which of its query tiles this program owns
    b = _find_seq(qsl_ptr, tile, num_seqs, BLOCK_Q)
    q_start = tl.load(qsl_ptr + b)
    q_len = tl.load(qsl_ptr + b + 1) - q_start
    local = tile - (q_start // BLOCK_Q + b)
    if local * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(sl_ptr + b)
    # 2. rows = (token, head of the group); load their queries
    rows = tl.arange(0, BLOCK_Q * GROUP_P)
    tok = local * BLOCK_Q + rows // GROUP_P
    head = kvh * GROUP + rows % GROUP_P
    row_ok = (tok < q_len) & (rows % GROUP_P < GROUP)
    qpos = seq_len - q_len + tok
    d = tl.arange(0, HEAD_D)
    t_idx = (q_start + tok).to(tl.int64)
    q = tl.load(q_ptr + t_idx[:, None] * s_qt + head[:, None] * s_qh + d[None, :],
                mask=row_ok[:, None], other=0.0).to(tl.float32)
    # 3. keys this tile can see, and this split's share of them
    first_q = seq_len - q_len + local * BLOCK_Q
    hi = tl.minimum(first_q + BLOCK_Q, seq_len)
    see_lo = 0
    if window > 0:
        see_lo = tl.maximum(first_q - window + 1, 0)
    lo = (see_lo // BLOCK_N) * BLOCK_N
    per = tl.cdiv(tl.cdiv(hi - lo, NUM_SPLITS), BLOCK_N) * BLOCK_N
    k_lo = lo + split * per
    k_hi = tl.minimum(hi, k_lo + per)
    # 4. online softmax (base 2), running max starting at the sink logit
    sink = tl.load(sink_ptr + head, mask=row_ok, other=0.0).to(tl.float32) * 1.4426950408889634
    m_i = sink
    l_i = tl.zeros([BLOCK_Q * GROUP_P], dtype=tl.float32)
    acc = tl.zeros([BLOCK_Q * GROUP_P, HEAD_D], dtype=tl.float32)
    for start in range(k_lo, k_hi, BLOCK_N):
        kpos = start + tl.arange(0, BLOCK_N)
        blk = tl.load(bt_ptr + b * s_bt + kpos // BLOCK_SIZE, mask=kpos < k_hi, other=-1)
        k_ok = (kpos < k_hi) & (kpos >= see_lo) & (blk >= 0)
        slot = blk.to(tl.int64) * BLOCK_SIZE + kpos % BLOCK_SIZE
        kv_off = (slot * NUM_KV + kvh)[:, None] * HEAD_D + d[None, :]
        k = tl.load(kc_ptr + kv_off, mask=k_ok[:, None], other=0.0).to(tl.float32)
        s = tl.dot(q.to(DOT), tl.trans(k).to(DOT), input_precision="ieee") * qk_scale
        see = k_ok[None, :] & (kpos[None, :] <= qpos[:, None])
        see &= (window <= 0) | (kpos[None, :] > qpos[:, None] - window)
        s = tl.where(see, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(vc_ptr + kv_off, mask=k_ok[:, None], other=0.0).to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT), v.to(DOT), input_precision="ieee")
        m_i = m_new
    # 5. finish here (sink joins the denominator) or leave a partial for the merge kernel
    if NUM_SPLITS == 1:
        out = acc / (l_i + tl.exp2(sink - m_i))[:, None]
        o_off = (t_idx * (NUM_KV * GROUP) + head)[:, None] * HEAD_D + d[None, :]
        tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        part = (split * num_tokens + t_idx) * (NUM_KV * GROUP) + head
        tl.store(po_ptr + part[:, None] * HEAD_D + d[None, :], acc, mask=row_ok[:, None])
        tl.store(pml_ptr + 2 * part, m_i, mask=row_ok)
        tl.store(pml_ptr + 2 * part + 1, l_i, mask=row_ok)


@triton.jit
def _merge_kernel(po_ptr, pml_ptr, sink_ptr, o_ptr, num_tokens, num_heads,
                  NUM_SPLITS: tl.constexpr, SPLITS_P: tl.constexpr, HEAD_D: tl.constexpr):
    """One (token, head): combine the splits' (m, l, acc) and the sink into the output row."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    sp = tl.arange(0, SPLITS_P)
    ok = sp < NUM_SPLITS
    part = (sp * num_tokens + t) * num_heads + h
    m = tl.load(pml_ptr + 2 * part, mask=ok, other=float("-inf"))
    l_s = tl.load(pml_ptr + 2 * part + 1, mask=ok, other=0.0)
    sink = tl.load(sink_ptr + h).to(tl.float32) * 1.4426950408889634
    m_all = tl.maximum(tl.max(m, axis=0), sink)
    w = tl.exp2(m - m_all)
    denom = tl.sum(l_s * w, axis=0) + tl.exp2(sink - m_all)
    d = tl.arange(0, HEAD_D)
    acc = tl.load(po_ptr + part[:, None] * HEAD_D + d[None, :], mask=ok[:, None], other=0.0)
    out = tl.sum(acc * w[:, None], axis=0) / denom
    tl.store(o_ptr + (t * num_heads + h) * HEAD_D + d, out.to(o_ptr.dtype.element_ty))


def _pick_splits(num_tiles: int, hkv: int, max_keys: int, block_n: int, sms: int) -> int:
    """Enough programs to cover the GPU twice, no more than there are key tiles to share."""
    want = cdiv(2 * sms, max(1, num_tiles * hkv))
    return max(1, min(want, cdiv(max_keys, block_n), 64))


def paged_attention_triton(
    q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None, k_cache: torch.Tensor,
    v_cache: torch.Tensor, slot_mapping: torch.Tensor, block_tables: torch.Tensor,
    query_start_loc: torch.Tensor, seq_lens: torch.Tensor, sinks: torch.Tensor,
    sm_scale: float, window: int, *, num_splits: int | None = None, block_q: int | None = None,
    block_n: int = 64, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """See `paged_attention_ref`. Keyword-only: tile choices that override the heuristics, and
    `out` (contiguous [T, Hq, D]) to write into a caller-owned buffer (CUDA graphs)."""
    if k is not None:
        write_kv_triton(k, v, k_cache, v_cache, slot_mapping)
    t, hq, d = q.shape
    nb, bs, hkv, _ = k_cache.shape
    if out is None:
        out = torch.empty((t, hq, d), dtype=q.dtype, device=q.device)
    num_seqs = seq_lens.shape[0]
    if t == 0 or num_seqs == 0:
        return out
    if d != next_pow2(d) or bs != next_pow2(bs) or q.stride(-1) != 1:
        raise ValueError(f"head_dim {d} and block_size {bs} must be powers of two")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous() and out.is_contiguous()):
        raise ValueError("KV caches and the output must be contiguous")
    group = hq // hkv
    gp = next_pow2(group)
    decode = t <= num_seqs
    bq = block_q or max(1, (16 if decode else 64) // gp)
    tiles = t // bq + num_seqs
    max_keys = block_tables.shape[1] * bs if window <= 0 else window + bq
    splits = num_splits or (_pick_splits(tiles, hkv, max_keys, block_n, device_sms(q))
                            if decode else 1)
    part_o = part_ml = out
    if splits > 1:
        part_o = torch.empty((splits, t, hq, d), dtype=torch.float32, device=q.device)
        part_ml = torch.empty((splits, t, hq, 2), dtype=torch.float32, device=q.device)
    dot = tl.float32 if dot_in_float32(q) else tl.bfloat16 if q.dtype == torch.bfloat16 \
        else tl.float16
    _attn_kernel[(tiles, hkv, splits)](
        q, k_cache, v_cache, block_tables, query_start_loc, seq_lens, sinks, out, part_o,
        part_ml, num_seqs, t, q.stride(0), q.stride(1), block_tables.stride(0),
        sm_scale * LOG2E, window, NUM_KV=hkv, GROUP=group, GROUP_P=gp, BLOCK_Q=bq,
        BLOCK_N=block_n, HEAD_D=d, BLOCK_SIZE=bs, NUM_SPLITS=splits, DOT=dot, num_warps=4)
    if splits > 1:
        _merge_kernel[(t, hq)](part_o, part_ml, sinks, out, t, hq, NUM_SPLITS=splits,
                               SPLITS_P=next_pow2(splits), HEAD_D=d, num_warps=1)
    return out

