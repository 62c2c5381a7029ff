"""ForwardBatch and KVCache: everything the model needs for one step, built in one place.

A batch mixes sequences in prefill (several new tokens) and decode (one new token). Each
sequence has two block tables, one per KV pool: `full` (full-attention layers keep every block)
and `sliding` (sliding-window layers; blocks that left the window are -1). Owns the layout of
these tensors; knows nothing of scheduling or sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class PoolView:
    """One KV pool's view of the batch."""

    block_tables: torch.Tensor  # [B, max_blocks] int32 physical block ids; -1 = absent/padding
    slot_mapping: torch.Tensor  # [T] int64 flat slot (block_id * block_size + offset) per new token


@dataclass
class SeqSlice:
    """Input of `ForwardBatch.build` for one sequence."""

    token_ids: Sequence[int]  # the new tokens computed this step
    start_pos: int  # absolute position of token_ids[0] (= tokens already in the cache)
    full_blocks: Sequence[int]  # full-pool block table (logical block i -> physical id)
    sliding_blocks: Sequence[int]  # sliding-pool table, -1 where a block left the window
    sample: bool = True  # compute logits for the last new token


@dataclass
class ForwardBatch:
    """Tensors of one model step. T = total new tokens, B = sequences, S = sampled rows."""

    input_ids: torch.Tensor  # [T] int64, new tokens of all sequences concatenated
    positions: torch.Tensor  # [T] int64, absolute position of each new token
    query_start_loc: torch.Tensor  # [B+1] int32, offsets of each sequence's tokens in T
    seq_lens: torch.Tensor  # [B] int32, context length after this step (cached + new)
    full: PoolView  # tables and slots for full-attention layers
    sliding: PoolView  # tables and slots for sliding-window layers
    logits_indices: torch.Tensor  # [S] int64, rows of T whose logits are computed
    block_size: int
    query_lens_cpu: list[int]  # host copy of the new-token counts (no device sync needed)
    seq_lens_cpu: list[int]  # host copy of seq_lens

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)

    @staticmethod
    def build(seqs: Sequence[SeqSlice], block_size: int,
              device: torch.device | str) -> ForwardBatch:
        """Build the batch on the host, then copy it to `device` in one go per tensor."""
        ids: list[int] = []
        pos: list[int] = []
        qsl = [0]
        seq_lens: list[int] = []
        slots_full: list[int] = []
        slots_slide: list[int] = []
        logits_idx: list[int] = []
        for s in seqs:
            n = len(s.token_ids)
            ids.extend(s.token_ids)
            for p in range(s.start_pos, s.start_pos + n):
                b, off = divmod(p, block_size)
                slots_full.append(s.full_blocks[b] * block_size + off)
                slots_slide.append(s.sliding_blocks[b] * block_size + off)
            pos.extend(range(s.start_pos, s.start_pos + n))
            qsl.append(qsl[-1] + n)
            seq_lens.append(s.start_pos + n)
            if s.sample and n > 0:
                logits_idx.append(qsl[-1] - 1)
        width = max((len(s.full_blocks) for s in seqs), default=0)

        def table(rows: list[Sequence[int]]) -> torch.Tensor:
            padded = [list(r) + [-1] * (width - len(r)) for r in rows]
            return torch.tensor(padded, dtype=torch.int32).reshape(len(rows), width)

        def dev(x: torch.Tensor) -> torch.Tensor:
            return x.to(device, non_blocking=True)

        i64 = torch.int64
        return ForwardBatch(
            input_ids=dev(torch.tensor(ids, dtype=i64)),
            positions=dev(torch.tensor(pos, dtype=i64)),
            query_start_loc=dev(torch.tensor(qsl, dtype=torch.int32)),
            seq_lens=dev(torch.tensor(seq_lens, dtype=torch.int32)),
            full=PoolView(dev(table([s.full_blocks for s in seqs])),
                          dev(torch.tensor(slots_full, dtype=i64))),
            sliding=PoolView(dev(table([s.sliding_blocks for s in seqs])),
                             dev(torch.tensor(slots_slide, dtype=i64))),
            logits_indices=dev(torch.tensor(logits_idx, dtype=i64)),
            block_size=block_size,
            query_lens_cpu=[len(s.token_ids) for s in seqs],
            seq_lens_cpu=seq_lens,
        )

    def pool(self, sliding: bool) -> PoolView:
        return self.sliding if sliding else self.full


@dataclass
class KVCache:
    """Paged K/V tensors, one pair per layer.

    Layer l's tensors have shape [num_blocks_of_its_pool, block_size, num_kv_heads, head_dim]:
    sliding layers index the sliding pool, full layers the full pool (block ids are per pool).
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @staticmethod
    def allocate(layer_is_sliding: Sequence[bool], num_blocks_full: int, num_blocks_sliding: int,
                 block_size: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str) -> KVCache:
        k, v = [], []
        for sliding in layer_is_sliding:
            n = num_blocks_sliding if sliding else num_blocks_full
            shape = (n, block_size, num_kv_heads, head_dim)
            k.append(torch.zeros(shape, dtype=dtype, device=device))
            v.append(torch.zeros(shape, dtype=dtype, device=device))
        return KVCache(k, v)

    @staticmethod
    def bytes_per_block(block_size: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        """Bytes of K plus V of one block in one layer."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * block_size * num_kv_heads * head_dim * itemsize
