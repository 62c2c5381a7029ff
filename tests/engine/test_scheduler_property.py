"""Property test: random workloads (arrivals, lengths, shared prefixes, n, aborts, tiny caches).

After every step the block-manager invariants hold; at the end no block is in use; and every
request that was not aborted produced exactly the tokens it produces alone (the fake model's
tokens depend on the whole context, so preemption, chunking and prefix hits cannot hide)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_scheduler import BS, WINDOW, expected, req, scripted_engine

from gptoss_serve.engine.block_manager import BlockManager
from gptoss_serve.errors import ContextLengthError

PREFIXES = [list(range(60, 60 + 11)), list(range(20, 20 + 6)), []]

request_st = st.tuples(
    st.integers(0, 6),  # arrival step
    st.sampled_from(range(len(PREFIXES))),
    st.lists(st.integers(0, 90), min_size=1, max_size=30),  # own suffix
    st.integers(1, 12),  # max_tokens
    st.integers(1, 3),  # n
    st.one_of(st.none(), st.integers(0, 12)),  # abort at step (None: never)
)


# random workloads and cache shapes (tests/engine/test_persistent_batch.py drives them too)
random_workloads = given(workload=st.lists(request_st, min_size=1, max_size=8),
                         full=st.integers(6, 40), budget=st.integers(4, 24),
                         max_seqs=st.integers(1, 6), caching=st.booleans())
few_examples = settings(max_examples=40, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow])


def sliding_blocks(full: int, budget: int) -> int:
    """A sliding pool that never limits (the full pool is the tight one)."""
    return BlockManager(full, 0, BS, WINDOW).max_sliding_blocks_per_seq(budget) + 2


@few_examples
@random_workloads
def test_random_workloads_keep_invariants_and_outputs(workload, full, budget, max_seqs, caching):
    slide = sliding_blocks(full, budget)
    engine = scripted_engine(full=full, slide=slide, budget=budget, max_seqs=max_seqs)
    engine.scheduler.enable_prefix_caching = caching
    tokens: dict[tuple[str, int], list[int]] = {}
    reasons: dict[tuple[str, int], str] = {}
    prompts, aborted = {}, set()
    step = 0
    while step <= 7 or engine.has_unfinished():
        for i, (at, pre, suffix, max_tokens, n, abort_at) in enumerate(workload):
            rid = f"r{i}"
            if at == step:
                try:
                    engine.add_request(req(rid, PREFIXES[pre] + suffix, max_tokens=max_tokens,
                                           n=n, ignore_eos=True))
                    prompts[rid] = (PREFIXES[pre] + suffix, max_tokens, n)
                except ContextLengthError:
                    assert len(PREFIXES[pre] + suffix) >= engine.max_model_len
            if abort_at == step and rid in prompts:
                engine.abort(rid)
                aborted.add(rid)
        for out in engine.step():
            tokens.setdefault((out.request_id, out.index), []).extend(out.new_token_ids)
            if out.finished:
                reasons[(out.request_id, out.index)] = out.finish_reason
        engine.scheduler.check_invariants()
        step += 1
        assert step < 2000, "no progress"
    stats = engine.stats()
    assert stats.full_blocks_used == 0 and stats.sliding_blocks_used == 0
    for rid, (prompt, max_tokens, n) in prompts.items():
        for idx in range(n):
            got = tokens.get((rid, idx), [])
            if rid in aborted and reasons.get((rid, idx)) == "abort":
                continue
            limit = min(max_tokens, engine.max_model_len - len(prompt))
            assert got == expected(prompt, limit)
            assert reasons[(rid, idx)] == "length"
