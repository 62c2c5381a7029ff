"""Block manager: two pools, refcounts, prefix hits (with the sliding-pool condition), LRU eviction,
the sliding pool's bound for a long sequence, and the invariants function."""

from __future__ import annotations

import pytest

from gptoss_serve.engine.block_manager import BlockManager, InvariantError
from gptoss_serve.engine.request import EngineRequest, SamplingParams
from gptoss_serve.engine.sequence import RequestGroup, Sequence

BS, WINDOW = 4, 8


def make_seq(tokens: list[int], seq_id: int = 0, salt: bytes = b"") -> Sequence:
    req = EngineRequest(f"r{seq_id}", tuple(tokens), SamplingParams())
    return Sequence(RequestGroup(req, 0, salt, frozenset()), 0, seq_id, list(tokens), len(tokens))


def run_prefill(bm: BlockManager, seq: Sequence, hit: int = 0) -> None:
    """Allocate and 'compute' the whole remaining prompt in one chunk."""
    start = hit * BS if hit else seq.num_computed_tokens
    assert bm.allocate(seq, seq.num_tokens - start, hit)
    seq.num_computed_tokens = seq.num_tokens
    bm.commit(seq)


def test_allocate_then_free_returns_every_block():
    bm = BlockManager(10, 10, BS, WINDOW)
    seq = make_seq(list(range(10)))
    run_prefill(bm, seq)
    assert len(seq.full_blocks) == 3 and bm.full.num_used == 3
    bm.check_invariants([seq])
    bm.free(seq)
    assert bm.full.num_used == 0 and bm.sliding.num_used == 0
    bm.check_invariants([])


def test_allocation_refused_without_change_when_pool_is_short():
    bm = BlockManager(2, 10, BS, WINDOW)
    seq = make_seq(list(range(12)))
    assert not bm.allocate(seq, 12)
    assert seq.full_blocks == [] and bm.full.num_free == 2


def test_prefix_hit_shares_blocks_and_counts_references():
    bm = BlockManager(20, 20, BS, WINDOW)
    a = make_seq(list(range(10)), 1)
    run_prefill(bm, a)
    b = make_seq(list(range(8)) + [50, 51, 52], 2)
    assert bm.match_prefix(b) == 2  # blocks [0..3] and [4..7]
    run_prefill(bm, b, hit=2)
    assert b.full_blocks[:2] == a.full_blocks[:2]
    assert all(bm.full.refcount[x] == 2 for x in a.full_blocks[:2])
    bm.check_invariants([a, b])


def test_hit_leaves_at_least_one_token_to_compute():
    bm = BlockManager(20, 20, BS, WINDOW)
    a = make_seq(list(range(8)), 1)
    run_prefill(bm, a)
    assert bm.match_prefix(make_seq(list(range(8)), 2)) == 1  # 8 tokens cached, 7 usable -> 1 block


def test_different_salt_never_hits():
    bm = BlockManager(20, 20, BS, WINDOW)
    run_prefill(bm, make_seq(list(range(10)), 1, salt=b"x"))
    assert bm.match_prefix(make_seq(list(range(10)), 2, salt=b"y")) == 0


def test_hit_is_shortened_when_the_window_blocks_are_gone():
    bm = BlockManager(20, 20, BS, WINDOW)
    a = make_seq(list(range(17)), 1)
    run_prefill(bm, a)
    # window 8: the token at position 16 needs keys 9..16, i.e. blocks 2..3 of the sliding pool
    assert a.sliding_blocks[:2] == [-1, -1]
    b = make_seq(list(range(17)) + [9], 2)
    assert bm.match_prefix(b) == 4
    bm.sliding.reset_cache()  # a still holds sliding blocks 2..4, so their hashes survive
    assert bm.match_prefix(b) == 4
    bm.free(a)
    bm.sliding.reset_cache()  # now every sliding hash is gone; full blocks alone do not suffice
    assert bm.match_prefix(b) == 0


def test_freed_cached_blocks_are_evicted_least_recently_freed_first():
    bm = BlockManager(6, 20, BS, WINDOW)
    a, b = make_seq(list(range(5)), 1), make_seq(list(range(100, 105)), 2)
    run_prefill(bm, a)
    run_prefill(bm, b)
    bm.free(a)
    bm.free(b)  # a's cached block is now the oldest free cached block
    # free list: 4 uncached blocks (reused first), then a's cached block, then b's
    c = make_seq(list(range(200, 217)), 3)
    assert bm.allocate(c, 17)  # 5 blocks: the 4 uncached ones and a's cached one
    assert bm.match_prefix(make_seq(list(range(5)), 4)) == 0
    assert bm.match_prefix(make_seq(list(range(100, 105)), 5)) == 1
    assert bm.full.num_evictions == 1


def test_long_sequence_keeps_the_sliding_pool_bounded_and_costs_half():
    bm = BlockManager(200, 20, BS, WINDOW)
    seq = make_seq([1])
    peak = 0
    for step in range(600):  # decode one token at a time
        assert bm.allocate(seq, 1)
        peak = max(peak, bm.sliding.num_used)
        seq.num_computed_tokens += 1
        seq.token_ids.append(step % 50)
        bm.commit(seq)
        bm.check_invariants([seq])
    assert peak <= bm.max_sliding_blocks_per_seq(1)
    # equal numbers of full and sliding layers: the cost relative to keeping every block in both
    full_used, slide_used = bm.full.num_used, bm.sliding.num_used
    ratio = (full_used + slide_used) / (2 * full_used)
    assert 0.5 <= ratio < 0.52


def test_invariants_catch_corruption():
    bm = BlockManager(10, 10, BS, WINDOW)
    a = make_seq(list(range(6)), 1)
    run_prefill(bm, a)
    b = make_seq(list(range(3)), 2)
    b.full_blocks, b.sliding_blocks = [a.full_blocks[1]], [a.sliding_blocks[1]]
    bm.full.refcount[a.full_blocks[1]] += 1
    bm.sliding.refcount[a.sliding_blocks[1]] += 1
    with pytest.raises(InvariantError, match="owned twice"):
        bm.check_invariants([a, b])
    bm.full.refcount[a.full_blocks[0]] += 1
    with pytest.raises(InvariantError, match="refcount"):
        bm.check_invariants([a])
