"""PersistentBatch: the runner's batch inputs kept from step to step and updated incrementally.

`ForwardBatch.build` turns every sequence's whole block tables into Python lists and tensors
each step. Here the two block tables live in host arrays [rows, blocks] with one row per
scheduled sequence, in the step's batch order. A step only writes what changed since the last
one: table entries a sequence gained (a new block every `block_size` decode steps), sliding
entries that left the window (they turn -1), and whole rows for sequences that are new to the
batch or whose tables were replaced. Rows of sequences that left are dropped and the others
moved up by one gather when the batch order changes. Per-token inputs (ids, positions, slot
mappings) are computed with array operations from the tables; the result equals
`ForwardBatch.build` of the same step (tests/engine/test_persistent_batch.py).

What a row relies on (the block manager's contract, `block_manager.py`): while a sequence keeps
the same `full_blocks`/`sliding_blocks` list objects, the full table only grows at the end and a
sliding entry only changes to -1, below `num_trimmed_blocks`; freeing a sequence (finish,
preemption) or taking prefix hits gives it new list objects, which resets its row here.

On a non-CPU device the tables are also kept there: a step sends only the rows changed since
the last one (plus the index of a reorder, replayed there as one gather), and the batch's tables
are views of the device tables (valid until the next step). The step's other tensors are packed
into one pinned staging buffer per dtype and sent with one asynchronous copy each, so building a
batch never waits for the device (the step's one host sync is the sampler's).

Owns the host arrays, their update and the copy to the device; knows nothing of scheduling
policy, the model or sampling.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Protocol

import numpy as np
import torch

from gptoss_serve.engine.sequence import Sequence
from gptoss_serve.formats.forward_batch import ForwardBatch, PoolView


class Scheduled(Protocol):
    """What the batch reads of one scheduled sequence (scheduler.ScheduledSeq)."""

    seq: Sequence
    start_pos: int
    num_new_tokens: int
    sample: bool


class PersistentBatch:
    """Block tables of the running sequences, one row each, kept between steps."""

    def __init__(self, block_size: int, device: torch.device | str, *, rows: int = 8,
                 blocks: int = 16, device_tables: bool | None = None) -> None:
        self.block_size = block_size
        self.device = torch.device(device)
        # off the CPU the tables also live on the device and receive only the changed rows
        # (`device_tables=True` does the same on the CPU, for the tests)
        self.device_tables = self.device.type != "cpu" if device_tables is None \
            else device_tables
        self._dev: tuple[torch.Tensor, torch.Tensor] | None = None  # device full, sliding
        self._dirty: set[int] = set()  # rows changed on the host since the device saw them
        self._moved: list[int] | None = None  # the gather of a reorder the device has not seen
        self._full = np.full((rows, blocks), -1, dtype=np.int32)
        self._slide = np.full((rows, blocks), -1, dtype=np.int32)
        self._seqs: list[Sequence] = []  # row -> the sequence it mirrors
        self._full_ref: list[list[int] | None] = []  # the list object each row copies
        self._slide_ref: list[list[int] | None] = []
        self._known: list[int] = []  # table entries copied into the row
        self._trimmed: list[int] = []  # leading sliding entries known to be -1
        self._stage = Stager(self.device) if self.device.type != "cpu" or self.device_tables \
            else None
        # the tables' own buffers: sending them never waits for the inputs' copy, nor back
        self._table_stage = Stager(self.device) if self.device_tables else None
        self.rows_written = 0  # rows (re)written whole, for tests and stats
        self.reorders = 0  # steps whose batch order differed from the previous step's
        self.rows_sent = 0  # table rows sent to the device tables (whole uploads count all)

    # ---- host side -----------------------------------------------------------------------------
    def host_batch(self, scheduled: Seq[Scheduled]) -> ForwardBatch:
        """Bring the rows up to date with `scheduled` and return the step's batch on the host
        (its block tables on the device where `device_tables`)."""
        seqs = [s.seq for s in scheduled]
        if seqs != self._seqs:
            self._reorder(seqs)
        ids: list[int] = []
        starts: list[int] = []
        qlens: list[int] = []
        samples: list[bool] = []
        known, trimmed = self._known, self._trimmed
        for i, s in enumerate(scheduled):
            seq = s.seq
            full = seq.full_blocks
            if full is not self._full_ref[i] or seq.sliding_blocks is not self._slide_ref[i]:
                self._reset_row(i, seq)
            n = len(full)
            if n != known[i]:
                self._extend_row(i, seq, n)
            t = seq.num_trimmed_blocks
            if t > trimmed[i]:
                self._slide[i, trimmed[i]:t] = -1
                trimmed[i] = t
                self._dirty.add(i)
            start, q = s.start_pos, s.num_new_tokens
            if q == 1:
                ids.append(seq.token_ids[start])
            else:
                ids.extend(seq.token_ids[start:start + q])
            starts.append(start)
            qlens.append(q)
            samples.append(s.sample)
        return self._arrays(ids, starts, qlens, samples)

    def to_device(self, host: ForwardBatch) -> ForwardBatch:
        """A batch from `host_batch` on the runner's device (itself on the CPU)."""
        return host if self._stage is None else self._stage.to_device(host)

    def _reorder(self, seqs: list[Sequence]) -> None:
        """Rows follow `seqs`: kept sequences' rows move (one gather), new ones get reset."""
        self.reorders += 1
        where = {seq: r for r, seq in enumerate(self._seqs)}
        src = [where.get(seq, -1) for seq in seqs]
        if len(seqs) > self._full.shape[0]:
            self._grow(rows=max(len(seqs), 2 * self._full.shape[0]))
        if seqs:
            idx = np.array(src, dtype=np.int64)
            for table in (self._full, self._slide):
                table[:len(seqs)] = table[idx]  # rows with src -1 are reset below
        if self.device_tables:
            self._moved = src
        self._seqs = list(seqs)
        self._full_ref = [self._full_ref[r] if r >= 0 else None for r in src]
        self._slide_ref = [self._slide_ref[r] if r >= 0 else None for r in src]
        self._known = [self._known[r] if r >= 0 else 0 for r in src]
        self._trimmed = [self._trimmed[r] if r >= 0 else 0 for r in src]

    def _reset_row(self, i: int, seq: Sequence) -> None:
        self.rows_written += 1
        self._dirty.add(i)
        self._full[i] = -1
        self._slide[i] = -1
        self._full_ref[i] = seq.full_blocks
        self._slide_ref[i] = seq.sliding_blocks
        self._known[i] = self._trimmed[i] = 0

    def _extend_row(self, i: int, seq: Sequence, n: int) -> None:
        k = self._known[i]
        if n > self._full.shape[1]:
            self._grow(blocks=max(n, 2 * self._full.shape[1]))
        self._full[i, k:n] = seq.full_blocks[k:n]
        self._slide[i, k:n] = seq.sliding_blocks[k:n]
        self._known[i] = n
        self._dirty.add(i)

    def _grow(self, *, rows: int = 0, blocks: int = 0) -> None:
        r = max(rows, self._full.shape[0])
        b = max(blocks, self._full.shape[1])
        for name in ("_full", "_slide"):
            old = getattr(self, name)
            new = np.full((r, b), -1, dtype=np.int32)
            new[:old.shape[0], :old.shape[1]] = old
            setattr(self, name, new)

    def _arrays(self, ids: list[int], starts: list[int], qlens: list[int],
                samples: list[bool]) -> ForwardBatch:
        bs, b = self.block_size, len(starts)
        st = np.array(starts, dtype=np.int64)
        ql = np.array(qlens, dtype=np.int64)
        qsl = np.zeros(b + 1, dtype=np.int64)
        np.cumsum(ql, out=qsl[1:])
        total = int(qsl[-1])
        if total == b and (b == 0 or ql.min() == 1):  # decode only: one token per row
            row, pos = np.arange(b), st
        else:
            row = np.repeat(np.arange(b), ql)
            pos = np.arange(total) - qsl[row] + st[row]
        blk, off = np.divmod(pos, bs)
        seq_lens = st + ql
        width = max(self._known, default=0)

        def slots(table: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(table[row, blk].astype(np.int64) * bs + off)

        if self.device_tables:
            full_table, slide_table = (t[:b, :width] for t in self._sync_tables(b))
        else:  # copies: the arrays change under the next step
            full_table, slide_table = (torch.from_numpy(t[:b, :width].copy())
                                       for t in (self._full, self._slide))
        sampled = np.array(samples, dtype=bool) & (ql > 0)
        return ForwardBatch(
            input_ids=torch.tensor(ids, dtype=torch.int64),
            positions=torch.from_numpy(pos),
            query_start_loc=torch.from_numpy(qsl.astype(np.int32)),
            seq_lens=torch.from_numpy(seq_lens.astype(np.int32)),
            full=PoolView(full_table, slots(self._full)),
            sliding=PoolView(slide_table, slots(self._slide)),
            logits_indices=torch.from_numpy(qsl[1:][sampled] - 1),
            block_size=bs,
            query_lens_cpu=qlens,
            seq_lens_cpu=seq_lens.tolist(),
        )

    def _sync_tables(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The device tables brought up to date: the last reorder's gather, then the rows
        changed since (one transfer per dtype); after the arrays grew, the whole arrays."""
        stage = self._table_stage
        assert stage is not None
        dev, moved, dirty = self._dev, self._moved, sorted(r for r in self._dirty if r < b)
        self._moved, self._dirty = None, set()
        if dev is None or dev[0].shape != self._full.shape:
            (full, slide), = stage.send([torch.from_numpy(self._full),
                                         torch.from_numpy(self._slide)])
            self._dev = (full.clone(), slide.clone())  # owned, not a view of one transfer
            self.rows_sent += self._full.shape[0]
            return self._dev
        self.rows_sent += len(dirty)
        i64 = [torch.tensor([max(r, 0) for r in moved] if moved else [], dtype=torch.int64),
               torch.tensor(dirty, dtype=torch.int64)]
        i32 = [torch.from_numpy(self._full[dirty]), torch.from_numpy(self._slide[dirty])]
        (src, rows), (full_rows, slide_rows) = stage.send(i64, i32)
        for table, new_rows in zip(dev, (full_rows, slide_rows), strict=True):
            if moved:  # rows of sequences new to the batch gather row 0, then are rewritten
                table[:len(moved)] = table.index_select(0, src)
            if dirty:
                table.index_copy_(0, rows, new_rows)
        return dev


class Stager:
    """Host tensors -> device through one pinned buffer per dtype and one copy each."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pin = device.type == "cuda" and torch.cuda.is_available()
        self._buffers: dict[torch.dtype, torch.Tensor] = {}
        self._done: object | None = None  # event of the last copy out of the buffers

    def to_device(self, host: ForwardBatch) -> ForwardBatch:
        """The whole batch on the device (host lists shared; tables already there stay)."""
        tables = [host.full.block_tables, host.sliding.block_tables]
        there = all(t.device.type == self.device.type for t in tables)
        (a, b, c, d, e), (f, g, *sent) = self.send(
            [host.input_ids, host.positions, host.full.slot_mapping, host.sliding.slot_mapping,
             host.logits_indices],
            [host.query_start_loc, host.seq_lens, *([] if there else tables)])
        h, k = tables if there else sent
        return ForwardBatch(
            input_ids=a, positions=b, query_start_loc=f, seq_lens=g,
            full=PoolView(h, c), sliding=PoolView(k, d), logits_indices=e,
            block_size=host.block_size, query_lens_cpu=host.query_lens_cpu,
            seq_lens_cpu=host.seq_lens_cpu)

    def send(self, *groups: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Each group (host tensors of one dtype) in one transfer; device views, same shapes.
        The device tensors are fresh each call; the pinned buffers are reused once the last
        call's copies have left them."""
        if self._done is not None:
            self._done.synchronize()  # type: ignore[attr-defined]
        out = [self._send(parts) for parts in groups]
        if self.pin:
            self._done = torch.cuda.Event()
            self._done.record()  # type: ignore[attr-defined]
        return out

    def _send(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        dtype = parts[0].dtype
        sizes = [p.numel() for p in parts]
        total = sum(sizes)
        buf = self._buffers.get(dtype)
        if buf is None or buf.numel() < total:
            buf = torch.empty(max(total, 2 * (0 if buf is None else buf.numel()), 1024),
                              dtype=dtype, pin_memory=self.pin)
            self._buffers[dtype] = buf
        at = 0
        for p, n in zip(parts, sizes, strict=True):
            buf[at:at + n].copy_(p.reshape(-1))
            at += n
        dev = buf[:total].to(self.device, non_blocking=self.pin)
        if dev.data_ptr() == buf.data_ptr():  # same memory (a CPU "device"): detach from it
            dev = dev.clone()
        views, at = [], 0
        for p, n in zip(parts, sizes, strict=True):
            views.append(dev[at:at + n].view(p.shape))
            at += n
        return views
