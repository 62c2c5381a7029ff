"""Paged attention with sinks on CPU: one batched pass for decode, SDPA for prefill.

Same signature and maths as `kernels/attention.py: paged_attention_ref` (its oracle):
- decode steps (every sequence has one new query) gather the needed key blocks of all sequences
  into one padded tensor and attend with two einsums; padding and window are one mask;
- sequences with several new queries (prefill, chunked prefill) use torch's
  `scaled_dot_product_attention`; the sink is an extra key whose key and value are zero and
  whose logit is set through the float mask, which is exactly the reference's extra softmax term.

Statistics are float32. Knows nothing of block allocation: tables and slots come from the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptoss_serve.kernels.attention import write_kv


def _gather_blocks(block_tables: torch.Tensor, seqs: list[int], lo: list[int], hi: list[int],
                   bs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Physical block ids [B', nb] covering keys lo[i]..hi[i]-1 of each sequence (padded with
    block 0), and the absolute position of the first key of each row [B']."""
    first = [lo_i // bs for lo_i in lo]
    width = max((h - 1) // bs - f + 1 for f, h in zip(first, hi, strict=True))
    cols = torch.tensor(first)[:, None] + torch.arange(width)[None, :]
    rows = torch.tensor(seqs)[:, None]
    cols = cols.clamp(max=block_tables.shape[1] - 1)
    blocks = block_tables[rows, cols].long()
    need = cols * bs < torch.tensor(hi)[:, None]
    if bool((blocks[need] < 0).any()):
        raise ValueError("a block needed for the keys of a sequence is absent")
    return blocks.clamp(min=0), torch.tensor(first) * bs


def _decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
            block_tables: torch.Tensor, seqs: list[int], rows: list[int], seq_lens: list[int],
            sinks: torch.Tensor, sm_scale: float, window: int) -> torch.Tensor:
    """One new query per sequence: q rows `rows` [B', Hq, D] -> [B', Hq, D] float32."""
    _, bs, hkv, d = k_cache.shape
    lo = [0 if window <= 0 else max(0, n - window) for n in seq_lens]
    blocks, start = _gather_blocks(block_tables, seqs, lo, seq_lens, bs)
    b = len(seqs)
    keys = k_cache[blocks].view(b, -1, hkv, d).float()
    vals = v_cache[blocks].view(b, -1, hkv, d).float()
    kpos = start[:, None] + torch.arange(keys.shape[1])[None, :]
    allowed = (kpos < torch.tensor(seq_lens)[:, None]) & (kpos >= torch.tensor(lo)[:, None])
    qf = q[rows].float().view(b, hkv, -1, d)
    scores = torch.einsum("bhgd,bkhd->bhgk", qf, keys) * sm_scale
    scores = scores.masked_fill(~allowed[:, None, None, :], float("-inf"))
    sink = sinks.float().view(1, hkv, -1, 1).expand(b, -1, -1, 1)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    return torch.einsum("bhgk,bkhd->bhgd", probs, vals).reshape(b, -1, d)


def _prefill_one(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 blocks: torch.Tensor, first_key: int, seq_len: int, sinks: torch.Tensor,
                 sm_scale: float, window: int) -> torch.Tensor:
    """Queries q [n, Hq, D] at positions seq_len-n.. over keys first_key..seq_len-1."""
    n, hq, d = q.shape
    hkv = k_cache.shape[2]
    keys = k_cache[blocks].view(-1, hkv, d)[: seq_len - first_key].float()
    vals = v_cache[blocks].view(-1, hkv, d)[: seq_len - first_key].float()
    zero = keys.new_zeros(1, hkv, d)
    keys, vals = torch.cat([zero, keys]), torch.cat([zero, vals])
    kpos = torch.arange(first_key, seq_len)
    qpos = torch.arange(seq_len - n, seq_len)
    allowed = kpos[None, :] <= qpos[:, None]
    if window > 0:
        allowed &= kpos[None, :] > qpos[:, None] - window
    bias = torch.zeros(n, kpos.shape[0]).masked_fill_(~allowed, float("-inf"))
    mask = torch.cat([sinks.float().view(hq, 1, 1).expand(hq, n, 1),
                      bias.expand(hq, n, -1)], dim=-1)
    out = F.scaled_dot_product_attention(
        q.float().transpose(0, 1), keys.transpose(0, 1), vals.transpose(0, 1),
        attn_mask=mask, scale=sm_scale, enable_gqa=True)
    return out.transpose(0, 1)


def paged_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        k_cache: torch.Tensor, v_cache: torch.Tensor,
                        slot_mapping: torch.Tensor, block_tables: torch.Tensor,
                        query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                        sinks: torch.Tensor, sm_scale: float, window: int) -> torch.Tensor:
    """Write K/V into the cache, then attend; [T, Hq, D] in q's dtype (see paged_attention_ref)."""
    write_kv(k, v, k_cache, v_cache, slot_mapping)
    out = torch.empty_like(q)
    qsl, lens = query_start_loc.tolist(), seq_lens.tolist()
    single = [b for b in range(len(lens)) if qsl[b + 1] - qsl[b] == 1]
    if single:
        rows = [qsl[b] for b in single]
        o = _decode(q, k_cache, v_cache, block_tables, single, rows, [lens[b] for b in single],
                    sinks, sm_scale, window)
        out[rows] = o.to(q.dtype)
    bs = k_cache.shape[1]
    for b, seq_len in enumerate(lens):
        n = qsl[b + 1] - qsl[b]
        if n <= 1:
            continue
        lo = 0 if window <= 0 else max(0, seq_len - n - window + 1)
        blocks, start = _gather_blocks(block_tables, [b], [lo], [seq_len], bs)
        o = _prefill_one(q[qsl[b]:qsl[b + 1]], k_cache, v_cache, blocks[0], int(start[0]),
                         seq_len, sinks, sm_scale, window)
        out[qsl[b]:qsl[b + 1]] = o.to(q.dtype)
    return out
