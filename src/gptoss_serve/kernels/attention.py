"""Paged attention with per-head sinks and an optional sliding window: the plain-torch reference.

This is the oracle for the fast kernels and the CPU path. It owns the KV write (new K/V into their
slots) and the attention math of docs/model-facts.md §2.4 steps 4-7. Knows nothing of block
allocation: block tables and slots come in from the ForwardBatch.

Follows openai/gpt-oss `gpt_oss/torch/model.py: sdpa` (sinks, window) and vLLM's paged KV
layout (block tables, slot mapping).
"""

from __future__ import annotations

import torch


def write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store new keys/values [T, Hkv, D] at flat slots of caches [N, bs, Hkv, D].

    A slot < 0 stores nothing (the padding rows of a padded decode batch)."""
    if slot_mapping.numel() and int(slot_mapping.min()) < 0:
        keep = slot_mapping >= 0
        k, v, slot_mapping = k[keep], v[keep], slot_mapping[keep]
    n, bs, h, d = k_cache.shape
    k_cache.view(n * bs, h, d).index_copy_(0, slot_mapping, k.to(k_cache.dtype))
    v_cache.view(n * bs, h, d).index_copy_(0, slot_mapping, v.to(v_cache.dtype))


def paged_attention_ref(
    q: torch.Tensor,  # [T, Hq, D] new queries (RoPE applied)
    k: torch.Tensor,  # [T, Hkv, D] new keys (RoPE applied)
    v: torch.Tensor,  # [T, Hkv, D] new values
    k_cache: torch.Tensor,  # [N, bs, Hkv, D]
    v_cache: torch.Tensor,  # [N, bs, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int64
    block_tables: torch.Tensor,  # [B, M] int32, -1 = absent
    query_start_loc: torch.Tensor,  # [B+1] int32
    seq_lens: torch.Tensor,  # [B] int32, context length after this step
    sinks: torch.Tensor,  # [Hq] sink logits (unscaled)
    sm_scale: float,
    window: int,  # 0: full causal; w > 0: each query sees its last w keys (itself included)
) -> torch.Tensor:
    """Write K/V into the cache, then attend each new query over its sequence's cached keys.

    Returns [T, Hq, D] in q's dtype. Statistics in float32; the sink is an extra logit in the
    softmax denominator only (no value, no scale, no mask).
    """
    write_kv(k, v, k_cache, v_cache, slot_mapping)
    out = torch.empty_like(q)
    _, bs, hkv, d = k_cache.shape
    group = q.shape[1] // hkv
    qsl = query_start_loc.tolist()
    for b, seq_len in enumerate(seq_lens.tolist()):
        qs, qe = qsl[b], qsl[b + 1]
        if qe == qs:
            continue
        first_q = seq_len - (qe - qs)
        lo = 0 if window <= 0 else max(0, first_q - window + 1)
        first_blk, last_blk = lo // bs, (seq_len - 1) // bs
        blocks = block_tables[b, first_blk:last_blk + 1].long()
        if bool((blocks < 0).any()):
            raise ValueError(f"sequence {b}: a block needed for keys {lo}..{seq_len - 1} is absent")
        start = first_blk * bs
        keys = k_cache[blocks].reshape(-1, hkv, d)[: seq_len - start].float()
        vals = v_cache[blocks].reshape(-1, hkv, d)[: seq_len - start].float()
        kpos = torch.arange(start, seq_len, device=q.device)
        qpos = torch.arange(first_q, seq_len, device=q.device)
        allowed = kpos[None, :] <= qpos[:, None]
        if window > 0:
            allowed &= kpos[None, :] > qpos[:, None] - window
        qf = q[qs:qe].float().view(qe - qs, hkv, group, d)
        scores = torch.einsum("qhgd,khd->hgqk", qf, keys) * sm_scale
        scores = scores.masked_fill(~allowed, float("-inf"))
        sink = sinks.float().view(hkv, group, 1, 1).expand(hkv, group, qe - qs, 1)
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
        o = torch.einsum("hgqk,khd->qhgd", probs, vals)
        out[qs:qe] = o.reshape(qe - qs, hkv * group, d).to(q.dtype)
    return out


def dense_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor,
                        sm_scale: float, window: int) -> torch.Tensor:
    """Attention of one whole sequence without a cache: q [T, Hq, D], k/v [T, Hkv, D]."""
    t, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    pos = torch.arange(t, device=q.device)
    allowed = pos[None, :] <= pos[:, None]
    if window > 0:
        allowed &= pos[None, :] > pos[:, None] - window
    qf = q.float().view(t, hkv, group, d)
    scores = torch.einsum("qhgd,khd->hgqk", qf, k.float()) * sm_scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    sink = sinks.float().view(hkv, group, 1, 1).expand(hkv, group, t, 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    return torch.einsum("hgqk,khd->qhgd", probs, v.float()).reshape(t, hq, d).to(q.dtype)
