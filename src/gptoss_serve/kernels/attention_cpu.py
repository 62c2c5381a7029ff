"""Paged attention with sinks on CPU: one batched pass for decode, SDPA for prefill.

Same signature and maths as `kernels/attention.py: paged_attention_ref` (its oracle):
- decode steps (every sequence has one new query) gather the needed key blocks of all sequences
  into one padded tensor and attend with two einsums; padding and window are one mask; which
  blocks and which keys (the plan) is worked out once per step and KV pool, not per layer;
- sequences with several new queries (prefill, chunked prefill) use torch's
  `scaled_dot_product_attention`; the sink is an extra key whose key and value are zero and
  whose logit is set through the float mask, which is exactly the reference's extra softmax term.

Statistics are float32. Knows nothing of block allocation: tables and slots come from the batch.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

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


@dataclass
class _DecodePlan:
    """What every layer of one KV pool needs for the decode rows of a step."""

    rows: list[int]  # query rows of the sequences with one new query
    blocks: torch.Tensor  # [B', nb] physical blocks covering their keys
    allowed: torch.Tensor  # [B', nb * block_size] keys inside the causal window


def _decode_plan(block_tables: torch.Tensor, qsl: list[int], lens: list[int], bs: int,
                 window: int) -> _DecodePlan | None:
    seqs = [b for b in range(len(lens)) if qsl[b + 1] - qsl[b] == 1]
    if not seqs:
        return None
    seq_lens = [lens[b] for b in seqs]
    lo = [0 if window <= 0 else max(0, n - window) for n in seq_lens]
    blocks, start = _gather_blocks(block_tables, seqs, lo, seq_lens, bs)
    kpos = start[:, None] + torch.arange(blocks.shape[1] * bs)[None, :]
    allowed = (kpos < torch.tensor(seq_lens)[:, None]) & (kpos >= torch.tensor(lo)[:, None])
    return _DecodePlan([qsl[b] for b in seqs], blocks, allowed)


_PLANS: OrderedDict[tuple, tuple[torch.Tensor, _DecodePlan | None]] = OrderedDict()
PLANS_KEPT = 4  # a step needs one per KV pool (full, sliding); the oldest is dropped


def _cached_plan(block_tables: torch.Tensor, qsl: list[int], lens: list[int], bs: int,
                 window: int) -> _DecodePlan | None:
    """`_decode_plan`, computed once per step and pool: the layers of a pool share the same
    tables, lengths and window. A hit needs the same lengths and a table equal in content
    (so a reused or refilled tensor can never get a stale plan)."""
    key = (id(block_tables), tuple(qsl), tuple(lens), bs, window)
    hit = _PLANS.get(key)
    if hit is not None and hit[0].shape == block_tables.shape and torch.equal(hit[0],
                                                                             block_tables):
        return hit[1]
    plan = _decode_plan(block_tables, qsl, lens, bs, window)
    _PLANS[key] = (block_tables.clone(), plan)
    while len(_PLANS) > PLANS_KEPT:
        _PLANS.popitem(last=False)
    return plan


def _decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: _DecodePlan,
            sinks: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """One new query per sequence: q rows `plan.rows` [B', Hq, D] -> [B', Hq, D] float32."""
    _, _, hkv, d = k_cache.shape
    b = len(plan.rows)
    keys = k_cache[plan.blocks].view(b, -1, hkv, d).float()
    vals = v_cache[plan.blocks].view(b, -1, hkv, d).float()
    qf = q[plan.rows].float().view(b, hkv, -1, d)
    scores = torch.einsum("bhgd,bkhd->bhgk", qf, keys) * sm_scale
    scores = scores.masked_fill(~plan.allowed[:, None, None, :], float("-inf"))
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
    bs = k_cache.shape[1]
    plan = _cached_plan(block_tables, qsl, lens, bs, window)
    if plan is not None:
        out[plan.rows] = _decode(q, k_cache, v_cache, plan, sinks, sm_scale).to(q.dtype)
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
