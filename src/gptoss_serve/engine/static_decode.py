"""Padded decode: the runner's static input buffers and the decode step that reads only them.

A decode-only step (every sequence adds one token and samples it) is copied into fixed tensors
sized to the largest captured batch: input ids, positions, seq_lens, `query_start_loc =
arange(B+1)`, `logits_indices = arange(B)`, and per KV pool the slot mapping and a block table
of fixed width (the most blocks a sequence can have). Rows past the live ones are padding:
token 0, position 0, seq_len 1, slot -1 (stores nothing), block table [PAD_BLOCK, -1, ...].
Padding rows only *read* block PAD_BLOCK of each pool (a real block, so the reference attention
accepts the rows too); their logits are sliced away. With CUDA graphs the step is replayed
from `DecodeGraphs` for the smallest captured size >= the live rows; without them (CPU, or
`--enforce-eager`) the same padded step runs eagerly, which is how the CPU tests check it.

Owns the buffer layout, the padding values and the copy of a host batch into the buffers; knows
nothing of scheduling or sampling, and of the model only `forward(batch, kv_cache)`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gptoss_serve.engine.persistent_batch import Stager
from gptoss_serve.formats.forward_batch import ForwardBatch, KVCache, PoolView, SeqSlice
from gptoss_serve.kernels.cuda_graph import DEFAULT_BATCH_SIZES, DecodeGraphs

PAD_TOKEN, PAD_POSITION, PAD_SEQ_LEN, PAD_SLOT, PAD_BLOCK = 0, 0, 1, -1, 0
POOLS = ("full", "sliding")


def decode_batch_sizes(max_num_seqs: int) -> list[int]:
    """The captured sizes: the defaults below max_num_seqs, plus max_num_seqs (at most the
    largest default; bigger decode batches run eagerly)."""
    top = min(max_num_seqs, max(DEFAULT_BATCH_SIZES))
    return sorted({s for s in DEFAULT_BATCH_SIZES if s < top} | {top})


class StaticDecodeBuffers:
    """The fixed tensors a captured decode step reads: rows [0, max_batch)."""

    def __init__(self, max_batch: int, max_blocks: int, block_size: int,
                 device: torch.device) -> None:
        i32, i64 = torch.int32, torch.int64
        self.block_size = block_size
        self.input_ids = torch.full((max_batch,), PAD_TOKEN, dtype=i64, device=device)
        self.positions = torch.full((max_batch,), PAD_POSITION, dtype=i64, device=device)
        self.seq_lens = torch.full((max_batch,), PAD_SEQ_LEN, dtype=i32, device=device)
        self.query_start_loc = torch.arange(max_batch + 1, dtype=i32, device=device)
        self.logits_indices = torch.arange(max_batch, dtype=i64, device=device)
        self.slots = {p: torch.full((max_batch,), PAD_SLOT, dtype=i64, device=device)
                      for p in POOLS}
        self.tables = {p: torch.full((max_batch, max_blocks), -1, dtype=i32, device=device)
                       for p in POOLS}
        for table in self.tables.values():
            table[:, 0] = PAD_BLOCK
        self.seq_lens_cpu = [PAD_SEQ_LEN] * max_batch  # host copy; Triton kernels never read it
        self.stager = Stager(device)

    @property
    def max_batch(self) -> int:
        return self.input_ids.shape[0]

    @property
    def max_blocks(self) -> int:
        return self.tables["full"].shape[1]

    def batch(self, bs: int) -> ForwardBatch:
        """Rows [0, bs) as a ForwardBatch of views (a graph reads these very addresses)."""
        pool = {p: PoolView(self.tables[p][:bs], self.slots[p][:bs]) for p in POOLS}
        return ForwardBatch(
            input_ids=self.input_ids[:bs], positions=self.positions[:bs],
            query_start_loc=self.query_start_loc[:bs + 1], seq_lens=self.seq_lens[:bs],
            full=pool["full"], sliding=pool["sliding"],
            logits_indices=self.logits_indices[:bs], block_size=self.block_size,
            query_lens_cpu=[1] * bs, seq_lens_cpu=self.seq_lens_cpu[:bs])

    def load(self, host: ForwardBatch, padded: int) -> None:
        """Copy a host-built decode batch of n rows into rows [0, n) and padding into [n,
        padded): the rows are padded on the host, sent in one transfer per dtype (pinned, on
        CUDA) and copied into the buffers on the device; block tables already on the device
        (the persistent batch's) are copied there. Table columns past the batch's width keep
        stale ids: no live row reads a block past its seq_len, and padding rows read only
        column 0."""
        n, pad = host.num_seqs, padded - host.num_seqs
        i64 = [_padded(host.input_ids, pad, PAD_TOKEN), _padded(host.positions, pad, PAD_POSITION)]
        i32 = [_padded(host.seq_lens, pad, PAD_SEQ_LEN)]
        staged = []
        for p in POOLS:
            view = host.pool(p == "sliding")
            i64.append(_padded(view.slot_mapping, pad, PAD_SLOT))
            src, dst = view.block_tables, self.tables[p][:padded, :view.block_tables.shape[1]]
            if src.device.type == dst.device.type:
                dst[:n].copy_(src)
                dst[n:].fill_(-1)
                dst[n:, 0] = PAD_BLOCK
            else:
                table = torch.full(dst.shape, -1, dtype=torch.int32)
                table[:n] = src
                table[n:, 0] = PAD_BLOCK
                i32.append(table)
                staged.append(dst)
        (ids, pos, slot_full, slot_slide), (lens, *tables) = self.stager.send(i64, i32)
        self.input_ids[:padded].copy_(ids)
        self.positions[:padded].copy_(pos)
        self.seq_lens[:padded].copy_(lens)
        self.slots["full"][:padded].copy_(slot_full)
        self.slots["sliding"][:padded].copy_(slot_slide)
        for dst, table in zip(staged, tables, strict=True):
            dst.copy_(table)
        self.seq_lens_cpu[:padded] = host.seq_lens_cpu + [PAD_SEQ_LEN] * pad


def _padded(live: torch.Tensor, pad: int, fill: int) -> torch.Tensor:
    """The live rows (on the host) then `pad` fill values."""
    return torch.cat([live, torch.full((pad,), fill, dtype=live.dtype)])


class PaddedDecode:
    """Decode-only steps through the static buffers, replayed from CUDA graphs when enabled."""

    def __init__(self, model: torch.nn.Module, kv_cache: KVCache, block_size: int,
                 max_blocks: int, batch_sizes: Sequence[int], device: torch.device, *,
                 graphs: bool) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.buffers = StaticDecodeBuffers(max(batch_sizes), max_blocks, block_size, device)
        self.graphs = DecodeGraphs(self._step, batch_sizes, enabled=graphs)
        self.steps = 0  # decode steps served here (tests and stats)
        self.padding_rows = 0  # padding rows computed so far

    def _step(self, bs: int) -> torch.Tensor:
        return self.model.forward(self.buffers.batch(bs), self.kv_cache)

    def capture(self) -> None:
        """Warm up and capture every batch size (a no-op without graphs)."""
        with torch.inference_mode():
            self.graphs.capture()

    def accepts(self, slices: Sequence[SeqSlice]) -> bool:
        """A decode-only step that fits the buffers."""
        return (0 < len(slices) <= self.buffers.max_batch
                and all(len(s.token_ids) == 1 and s.sample
                        and len(s.full_blocks) <= self.buffers.max_blocks for s in slices))

    def accepts_batch(self, host: ForwardBatch) -> bool:
        """`accepts` for a step already built on the host (the runner's persistent batch)."""
        n = host.num_seqs
        return (0 < n <= self.buffers.max_batch and host.logits_indices.shape[0] == n
                and all(q == 1 for q in host.query_lens_cpu)
                and host.full.block_tables.shape[1] <= self.buffers.max_blocks)

    def run(self, slices: Sequence[SeqSlice]) -> torch.Tensor:
        """Float32 logits [n, V] of the n sequences (a view: consume before the next step)."""
        return self.run_batch(ForwardBatch.build(slices, self.buffers.block_size, "cpu"))

    def run_batch(self, host: ForwardBatch) -> torch.Tensor:
        """`run` for a decode step built on the host (see `accepts_batch`)."""
        n = host.num_seqs
        padded = self.graphs.padded_size(n) or n
        self.buffers.load(host, padded)
        self.steps += 1
        self.padding_rows += padded - n
        if self.graphs.enabled and self.graphs.graphs:
            return self.graphs.run(n)
        return self._step(padded)[:n]
