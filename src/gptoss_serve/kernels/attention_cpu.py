"""Paged attention with sinks on CPU: one batched pass for decode, SDPA for prefill.

Same signature and maths as `kernels/attention.py: paged_attention_ref` (its oracle):
- decode steps (every sequence has one new query) gather the needed key blocks of all sequences
  into one padded tensor and attend with two einsums; padding and window are one mask; which
  blocks and which keys (the plan) is worked out once per step and KV pool, not per layer;
  with float32 tensors one C call (`csrc/attention.c`, built by `cpu_c`) does the same maths per
  query head (dot products, softmax with the sink term, weighted values), float32 throughout;
- sequences with several new queries (prefill, chunked prefill) use torch's CPU flash
  attention with the causal/window mask; the sink's extra softmax term is applied afterwards
  from the kernel's logsumexp (a factor sigmoid(lse - sink) per query and head).

Statistics are float32. Knows nothing of block allocation: tables and slots come from the batch.
"""

from __future__ import annotations

import ctypes
import functools
from collections import OrderedDict
from dataclasses import dataclass

import torch

from gptoss_serve.kernels import cpu_c
from gptoss_serve.kernels.attention import write_kv
from gptoss_serve.kernels.cpu_threads import kernel_threads

C_THREADS_MIN_WORK = 1 << 16  # query heads x keys below which the C decode runs on one thread
C_WRITE_ROWS = 8  # new K/V rows up to which one C call writes them (decode steps)


@functools.cache
def _load() -> ctypes.CDLL | None:
    """The C library of csrc/attention.c, or None; see `cpu_c.load`."""
    return cpu_c.load("attention.c")[0]


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
    bounds: torch.Tensor  # [4, B'] int64: query row, position of blocks[:, 0]'s first key,
    # first and end key position (for the C kernel)
    width: int  # keys the blocks cover: nb * block_size

    @functools.cached_property
    def allowed(self) -> torch.Tensor:
        """[B', width] keys inside the causal window (only the torch fallback needs it)."""
        kpos = self.bounds[1][:, None] + torch.arange(self.width)[None, :]
        return (kpos < self.bounds[3][:, None]) & (kpos >= self.bounds[2][:, None])


def _decode_plan(block_tables: torch.Tensor, qsl: list[int], lens: list[int], bs: int,
                 window: int) -> _DecodePlan | None:
    seqs = [b for b in range(len(lens)) if qsl[b + 1] - qsl[b] == 1]
    if not seqs:
        return None
    seq_lens = [lens[b] for b in seqs]
    lo = [0 if window <= 0 else max(0, n - window) for n in seq_lens]
    blocks, start = _gather_blocks(block_tables, seqs, lo, seq_lens, bs)
    blocks = blocks.contiguous()
    rows = [qsl[b] for b in seqs]
    bounds = torch.stack([torch.tensor(rows), start, torch.tensor(lo), torch.tensor(seq_lens)])
    return _DecodePlan(rows, blocks, bounds.long().contiguous(), blocks.shape[1] * bs)


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


def _decode_c(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: _DecodePlan,
              sinks: torch.Tensor, sm_scale: float) -> torch.Tensor | None:
    """`_decode` in one C call (float32 query, caches and sinks), or None where it cannot run."""
    lib = _load()
    tensors = (q, k_cache, v_cache, sinks)
    if lib is None or any(t.dtype != torch.float32 for t in tensors):
        return None
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        return None
    q, sinks = q.contiguous(), sinks.contiguous()
    n, hq, (_, bs, hkv, d) = len(plan.rows), q.shape[1], k_cache.shape
    out = torch.empty(n, hq, d)
    work = hq * plan.width * n
    parts = kernel_threads() if work >= C_THREADS_MIN_WORK else 1
    rows, start, lo, hi = (plan.bounds[i].data_ptr() for i in range(4))
    rc = lib.decode_attention(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                              plan.blocks.data_ptr(), plan.blocks.shape[1], rows, start, lo, hi,
                              n, hq, hkv, d, bs, sinks.data_ptr(), sm_scale, out.data_ptr(),
                              parts)
    if rc != 0:
        raise MemoryError("decode attention: no memory for the scores")
    return out


def _decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: _DecodePlan,
            sinks: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """One new query per sequence: q rows `plan.rows` [B', Hq, D] -> [B', Hq, D] float32."""
    fast = _decode_c(q, k_cache, v_cache, plan, sinks, sm_scale)
    if fast is not None:
        return fast
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
    """Queries q [n, Hq, D] at positions seq_len-n.. over keys first_key..seq_len-1: torch's
    CPU flash attention (blocked, no [n, keys] score matrix per head) with the causal/window
    mask, then the sink: softmax over the scores and the sink logit is softmax over the scores
    times sum / (sum + e^sink) = sigmoid(logsumexp - sink), from the kernel's logsumexp."""
    n, hq, d = q.shape
    hkv = k_cache.shape[2]
    keys = k_cache[blocks].view(-1, hkv, d)[: seq_len - first_key].float()
    vals = v_cache[blocks].view(-1, hkv, d)[: seq_len - first_key].float()
    kpos = torch.arange(first_key, seq_len)
    qpos = torch.arange(seq_len - n, seq_len)
    allowed = kpos[None, :] <= qpos[:, None]
    if window > 0:
        allowed &= kpos[None, :] > qpos[:, None] - window
    bias = torch.zeros(n, kpos.shape[0]).masked_fill_(~allowed, float("-inf"))
    heads = [t.transpose(0, 1).repeat_interleave(hq // hkv, dim=0)[None] for t in (keys, vals)]
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.float().transpose(0, 1)[None], *heads, attn_mask=bias[None, None], scale=sm_scale)
    out = out * torch.sigmoid(lse - sinks.float().view(1, hq, 1))[..., None]
    return out[0].transpose(0, 1)


def _write_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              slot_mapping: torch.Tensor) -> None:
    """`write_kv`; for a few float32 rows (heads contiguous within a row) one C call."""
    lib = _load()
    n, bs, hkv, d = k_cache.shape
    fits = (lib is not None and k.shape[0] <= C_WRITE_ROWS and slot_mapping.dtype == torch.int64
            and all(t.dtype == torch.float32 for t in (k, v, k_cache, v_cache))
            and k_cache.is_contiguous() and v_cache.is_contiguous()
            and all(t.shape[1:] == (hkv, d) and t.stride(2) == 1 and t.stride(1) == d
                    for t in (k, v)))
    if not fits:
        write_kv(k, v, k_cache, v_cache, slot_mapping)
        return
    slots = slot_mapping.contiguous()
    if max(slots.tolist(), default=-1) >= n * bs:
        raise IndexError("KV slot out of range")
    lib.write_rows(k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0), k_cache.data_ptr(),
                   v_cache.data_ptr(), slots.data_ptr(), k.shape[0], hkv * d)


def paged_attention_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        k_cache: torch.Tensor, v_cache: torch.Tensor,
                        slot_mapping: torch.Tensor, block_tables: torch.Tensor,
                        query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                        sinks: torch.Tensor, sm_scale: float, window: int) -> torch.Tensor:
    """Write K/V into the cache, then attend; [T, Hq, D] in q's dtype (see paged_attention_ref)."""
    _write_kv(k, v, k_cache, v_cache, slot_mapping)
    qsl, lens = query_start_loc.tolist(), seq_lens.tolist()
    bs = k_cache.shape[1]
    plan = _cached_plan(block_tables, qsl, lens, bs, window)
    if plan is not None and len(plan.rows) == q.shape[0]:  # decode only: rows 0..T-1 in order
        return _decode(q, k_cache, v_cache, plan, sinks, sm_scale).to(q.dtype)
    out = torch.empty_like(q)
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
