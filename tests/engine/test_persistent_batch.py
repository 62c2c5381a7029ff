"""PersistentBatch against the old build path: every step of random workloads (arrivals, shared
prefixes, n > 1, aborts, tiny caches that force chunked prefill, prefix hits and preemption)
gives exactly the tensors `ForwardBatch.build` gives for the same step; steady decode rewrites
no row; tables replaced under a sequence (free, prefix hits) are picked up; the returned batch
does not alias the kept arrays; the staged device copy equals the host batch."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
from test_scheduler import BS, req, scripted_engine
from test_scheduler_property import PREFIXES, few_examples, random_workloads, sliding_blocks

from gptoss_serve.engine.persistent_batch import PersistentBatch, Stager
from gptoss_serve.engine.scheduler import ScheduledSeq, SchedulerOutput
from gptoss_serve.engine.sequence import RequestGroup, Sequence
from gptoss_serve.errors import ContextLengthError
from gptoss_serve.formats.forward_batch import ForwardBatch, SeqSlice


def fresh(scheduled: list[ScheduledSeq]) -> ForwardBatch:
    """The old path: every sequence's slice and tables rebuilt from its lists."""
    return ForwardBatch.build(
        [SeqSlice(s.seq.token_ids[s.start_pos:s.start_pos + s.num_new_tokens], s.start_pos,
                  s.seq.full_blocks, s.seq.sliding_blocks, s.sample) for s in scheduled],
        BS, "cpu")


def assert_same(got: ForwardBatch, want: ForwardBatch) -> None:
    for f in dataclasses.fields(ForwardBatch):
        a, b = getattr(got, f.name), getattr(want, f.name)
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f.name
        elif f.name in ("full", "sliding"):
            for g in ("block_tables", "slot_mapping"):
                x, y = getattr(a, g), getattr(b, g)
                assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), \
                    (f.name, g, x, y)
        else:
            assert a == b, f.name


class CheckingRunner:
    """Wraps the scripted runner: checks the persistent batch against the old build each step."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.batch = PersistentBatch(BS, "cpu", rows=1, blocks=1)  # tiny: the arrays must grow
        # the same with tables kept on the "device" too (changed rows only), as off the CPU
        self.on_device = PersistentBatch(BS, "cpu", rows=1, blocks=1, device_tables=True)
        self.kinds: set[str] = set()

    def execute(self, out: SchedulerOutput):
        want = fresh(out.scheduled)
        assert_same(self.batch.host_batch(out.scheduled), want)
        assert_same(self.on_device.to_device(self.on_device.host_batch(out.scheduled)), want)
        for s in out.scheduled:
            decode = s.num_new_tokens == 1 and s.start_pos >= s.seq.num_prompt_tokens
            self.kinds.add("decode" if decode else "chunk" if not s.sample else "prefill")
            if s.seq.num_cached_tokens:
                self.kinds.add("prefix hit")
        if out.num_preempted:
            self.kinds.add("preempted")
        return self.inner.execute(out)


def checked_engine(**kw):
    engine = scripted_engine(**kw)
    engine.runner = CheckingRunner(engine.runner)
    return engine


@few_examples
@random_workloads
def test_every_step_equals_the_fresh_build(workload, full, budget, max_seqs, caching):
    engine = checked_engine(full=full, slide=sliding_blocks(full, budget), budget=budget,
                            max_seqs=max_seqs)
    engine.scheduler.enable_prefix_caching = caching
    step = 0
    while step <= 7 or engine.has_unfinished():
        for i, (at, pre, suffix, max_tokens, n, abort_at) in enumerate(workload):
            if at == step:
                with contextlib.suppress(ContextLengthError):  # too long: refused, fine here
                    engine.add_request(req(f"r{i}", PREFIXES[pre] + suffix,
                                           max_tokens=max_tokens, n=n, ignore_eos=True))
            if abort_at == step:
                engine.abort(f"r{i}")
        engine.step()
        step += 1
        assert step < 2000, "no progress"


def test_the_checked_workload_covers_every_kind_of_step():
    """One fixed workload through the same check: chunked prefill, prefix hits, preemption,
    finishes and decode all happen in it (so the property above is not vacuous there)."""
    engine = checked_engine(full=14, budget=6, max_seqs=4)
    shared = list(range(40, 52))
    for i in range(6):
        engine.add_request(req(f"r{i}", shared + [i] * (3 + i), max_tokens=10, ignore_eos=True))
    steps = 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
        assert steps < 500
    assert engine.runner.kinds == {"decode", "chunk", "prefill", "prefix hit", "preempted"}
    assert engine.stats().num_preemptions > 0


def test_steady_decode_writes_no_row_and_keeps_the_order():
    engine = checked_engine(full=64, budget=32, max_seqs=4)
    for i in range(4):
        engine.add_request(req(f"r{i}", range(i, i + 5), max_tokens=30, ignore_eos=True))
    for _ in range(3):
        engine.step()  # prefill, then decode
    batch = engine.runner.batch
    written, reorders = batch.rows_written, batch.reorders
    for _ in range(20):  # crosses block boundaries (BS=4) and trims sliding blocks (WINDOW=8)
        engine.step()
    assert (batch.rows_written, batch.reorders) == (written, reorders)


def _seq(tokens: list[int], full: list[int], sliding: list[int], trimmed: int) -> Sequence:
    group = RequestGroup(req("x", tokens), 0, b"", frozenset())
    return Sequence(group, 0, 1, list(tokens), len(tokens), len(tokens) - 1, full, sliding,
                    num_trimmed_blocks=trimmed)


@pytest.mark.parametrize("device_tables", [False, True])
def test_replaced_tables_reset_the_row(device_tables):
    """A sequence freed and given new blocks (preemption, then a prefix hit) between two
    steps of the runner: same object, same length, other ids."""
    seq = _seq(list(range(10)), [3, 4, 5], [-1, 4, 5], 1)
    pb = PersistentBatch(BS, "cpu", device_tables=device_tables)
    step = [ScheduledSeq(seq, 9, 1, True)]
    assert_same(pb.host_batch(step), fresh(step))
    seq.full_blocks, seq.sliding_blocks = [7, 8, 9], [-1, 8, 9]
    assert_same(pb.host_batch(step), fresh(step))
    seq.sliding_blocks[1] = -1  # trimmed in place, as commit does
    seq.num_trimmed_blocks = 2
    assert_same(pb.host_batch(step), fresh(step))


def test_the_batch_does_not_alias_the_kept_tables():
    seq = _seq(list(range(6)), [3, 4], [3, 4], 0)
    pb = PersistentBatch(BS, "cpu")
    step = [ScheduledSeq(seq, 5, 1, True)]
    first = pb.host_batch(step)
    seq.token_ids.append(1)
    seq.num_computed_tokens += 1
    seq.full_blocks.append(6)
    seq.sliding_blocks.append(6)
    seq.sliding_blocks[0] = -1
    seq.num_trimmed_blocks = 1
    pb.host_batch([ScheduledSeq(seq, 6, 1, True)])
    assert first.full.block_tables.tolist() == [[3, 4]]
    assert first.sliding.block_tables.tolist() == [[3, 4]]


def test_device_tables_get_only_the_changed_rows():
    """After the first steps, steady decode sends the device only the table rows that gained
    a block or lost a sliding one, not the whole tables."""
    engine = checked_engine(full=64, budget=32, max_seqs=4)
    for i in range(4):
        engine.add_request(req(f"r{i}", range(i, i + 5), max_tokens=30, ignore_eos=True))
    for _ in range(3):
        engine.step()
    pb = engine.runner.on_device
    before = pb.rows_sent
    for _ in range(12):
        engine.step()
    # 4 rows, a new block every BS=4 tokens and a trim as often: at most 2 changes per row
    # per 4 steps, 24 rows in 12 steps, where whole tables would be 48
    assert 0 < pb.rows_sent - before <= 24


def test_static_buffers_load_alike_from_host_and_device_tables():
    from gptoss_serve.engine.static_decode import StaticDecodeBuffers

    engine = checked_engine(full=64, budget=32, max_seqs=3)
    for i in range(3):
        engine.add_request(req(f"r{i}", range(i, i + 6), max_tokens=9, ignore_eos=True))
    engine.step()
    out = engine.scheduler.schedule()  # a decode step of 3 rows
    loaded = []
    for device_tables in (False, True):
        bufs = StaticDecodeBuffers(4, 8, BS, torch.device("cpu"))
        pb = PersistentBatch(BS, "cpu", device_tables=device_tables)
        bufs.load(pb.host_batch(out.scheduled), 4)
        loaded.append([bufs.input_ids, bufs.positions, bufs.seq_lens, *bufs.slots.values(),
                       *bufs.tables.values()])
    for a, b in zip(*loaded, strict=True):
        assert torch.equal(a, b)
    assert loaded[1][-2][3].tolist() == [0] + [-1] * 7  # the padding row


def test_staged_copy_equals_the_host_batch():
    engine = checked_engine(full=32, budget=8, max_seqs=3)
    for i in range(3):
        engine.add_request(req(f"r{i}", range(i, i + 9), max_tokens=4, ignore_eos=True))
    out = engine.scheduler.schedule()  # a mixed step: prefill chunks of different lengths
    host = PersistentBatch(BS, "cpu").host_batch(out.scheduled)
    stager = Stager(torch.device("cpu"))
    sent = stager.to_device(host)
    assert_same(sent, fresh(out.scheduled))
    again = stager.to_device(PersistentBatch(BS, "cpu").host_batch(out.scheduled[:1]))
    assert_same(again, fresh(out.scheduled[:1]))
    assert_same(sent, fresh(out.scheduled))  # the second copy left the first batch alone
