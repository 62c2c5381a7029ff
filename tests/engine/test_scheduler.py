"""Scheduler driven by hand-written sampled tokens (no model): admission order, token budget,
chunked prefill, prefix hits, sliding-pool bound, preemption and resume, abort, finishing, refusal,
sibling sequences."""

from __future__ import annotations

import pytest
from fakes import ScriptedRunner, next_token, tiny_config

from gptoss_serve.config import CacheConfig, SchedulerConfig
from gptoss_serve.engine.block_manager import BlockManager
from gptoss_serve.engine.engine import LLMEngine
from gptoss_serve.engine.request import EngineRequest, SamplingParams
from gptoss_serve.engine.scheduler import Scheduler
from gptoss_serve.engine.sequence import SampledToken
from gptoss_serve.errors import ContextLengthError, InvalidRequestError

EOS = 96
BS, WINDOW = 4, 8


def make_sched(full: int = 64, slide: int = 64, max_seqs: int = 8, budget: int = 32,
               max_len: int = 1000, caching: bool = True) -> Scheduler:
    cfg = SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget,
                          debug_invariants=True)
    return Scheduler(BlockManager(full, slide, BS, WINDOW), cfg, max_model_len=max_len,
                     eos_token_ids=(EOS,), enable_prefix_caching=caching)


def req(rid: str, prompt, **params) -> EngineRequest:
    return EngineRequest(rid, tuple(prompt), SamplingParams(temperature=0, **params))


def step(sched: Scheduler, token: int = 7):
    out = sched.schedule()
    outputs = sched.update(out, [SampledToken(token) for _ in out.sampling])
    return out, outputs


def shape(out) -> list[tuple[str, int, int, bool]]:
    return [(s.seq.request_id, s.start_pos, s.num_new_tokens, s.sample) for s in out.scheduled]


def test_fcfs_admission_respects_max_num_seqs():
    sched = make_sched(max_seqs=2)
    for i in range(3):
        sched.add_request(req(f"r{i}", [1, 2, 3], max_tokens=1 + i))
    out, outputs = step(sched)
    assert [s[0] for s in shape(out)] == ["r0", "r1"]
    assert [o.finished for o in outputs] == [True, False]
    out, _ = step(sched)
    assert [s[0] for s in shape(out)] == ["r1", "r2"]  # running first, then the next in line


def test_token_budget_chunks_the_prefill():
    sched = make_sched(budget=4)
    sched.add_request(req("a", range(10), max_tokens=2))
    shapes = [shape(step(sched)[0]) for _ in range(4)]
    assert shapes == [[("a", 0, 4, False)], [("a", 4, 4, False)], [("a", 8, 2, True)],
                      [("a", 10, 1, True)]]


def test_decode_first_then_a_prefill_chunk_fills_the_budget():
    sched = make_sched(budget=6)
    sched.add_request(req("a", [1, 2], max_tokens=5))
    step(sched)
    sched.add_request(req("b", range(20), max_tokens=1))
    out, _ = step(sched)
    assert shape(out) == [("a", 2, 1, True), ("b", 0, 5, False)]
    assert out.num_batched_tokens == 6


def test_prefix_hit_skips_the_cached_tokens():
    sched = make_sched()
    sched.add_request(req("a", range(12), max_tokens=1))
    step(sched)
    sched.add_request(req("b", list(range(9)) + [50, 51], max_tokens=1))
    out, outputs = step(sched)
    assert shape(out) == [("b", 8, 3, True)]
    assert outputs[0].num_cached_tokens == 8
    stats = sched.stats()
    assert (stats.prefix_cache_queried_tokens, stats.prefix_cache_hit_tokens) == (23, 8)


def test_no_prefix_sharing_between_requests_when_caching_is_off():
    sched = make_sched(caching=False)
    sched.add_request(req("a", range(12), max_tokens=1))
    step(sched)
    sched.add_request(req("b", range(12), max_tokens=1))
    assert shape(step(sched)[0]) == [("b", 0, 12, True)]


def test_long_prompt_runs_in_a_sliding_pool_sized_for_one_window_and_chunk():
    bm = BlockManager(64, 0, BS, WINDOW)
    slide = bm.max_sliding_blocks_per_seq(8)
    sched = make_sched(slide=slide, budget=8)
    sched.add_request(req("a", range(150), max_tokens=20))
    while sched.has_unfinished():
        step(sched)
        assert sched.bm.sliding.num_used <= slide
    assert sched.stats().num_preemptions == 0


def run_all(engine: LLMEngine, requests: list[EngineRequest]) -> dict[str, list[int]]:
    for r in requests:
        engine.add_request(r)
    tokens: dict[str, list[int]] = {r.request_id: [] for r in requests}
    while engine.has_unfinished():
        for o in engine.step():
            tokens[o.request_id].extend(o.new_token_ids)
        engine.scheduler.check_invariants()
    return tokens


def scripted_engine(full: int, slide: int = 64, budget: int = 16, max_seqs: int = 8):
    return LLMEngine(ScriptedRunner(), tiny_config(window=WINDOW), CacheConfig(block_size=BS),
                     SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget),
                     num_full_blocks=full, num_sliding_blocks=slide)


def expected(prompt, n: int) -> list[int]:
    ctx, out = list(prompt), []
    for _ in range(n):
        out.append(next_token(ctx))
        ctx.append(out[-1])
    return out


def test_preemption_recomputes_and_produces_the_same_tokens():
    prompts = [list(range(i, i + 10)) for i in range(6)]
    reqs = [req(f"r{i}", p, max_tokens=12, ignore_eos=True) for i, p in enumerate(prompts)]
    engine = scripted_engine(full=14)
    tokens = run_all(engine, reqs)
    assert engine.stats().num_preemptions > 0
    for r, p in zip(reqs, prompts, strict=True):
        assert tokens[r.request_id] == expected(p, 12)
    assert engine.stats().full_blocks_used == 0 and engine.stats().sliding_blocks_used == 0


def test_the_newest_running_sequence_is_preempted():
    sched = make_sched(full=6, budget=64)
    sched.add_request(req("old", range(11), max_tokens=30))
    sched.add_request(req("new", range(20, 31), max_tokens=30))
    step(sched)  # each holds 3 blocks (11 tokens + room), pool full
    step(sched)  # both grow to 12 tokens: still 3 blocks each
    out, _ = step(sched)  # 13 tokens need a 4th block: "new" goes back to the queue
    assert [s[0] for s in shape(out)] == ["old"]
    assert out.num_preempted == 1
    assert [s.request_id for s in sched.waiting] == ["new"]


def test_abort_frees_everything_at_once():
    sched = make_sched(max_seqs=1)
    sched.add_request(req("run", range(10), max_tokens=50))
    sched.add_request(req("wait", range(10), max_tokens=50))
    step(sched)
    sched.abort("run")
    sched.abort("wait")
    sched.abort("wait")  # idempotent
    assert sched.bm.full.num_used == 0 and sched.bm.sliding.num_used == 0
    _, outputs = step(sched)
    assert {(o.request_id, o.finish_reason) for o in outputs} == {("run", "abort"),
                                                                  ("wait", "abort")}
    assert not sched.has_unfinished()


@pytest.mark.parametrize(("params", "tokens", "reason", "count"), [
    ({"max_tokens": 10}, [5, EOS, 5], "stop", 2),  # eos ends, and is reported
    ({"max_tokens": 10, "stop_token_ids": (5,)}, [4, 5, 6], "stop", 2),
    ({"max_tokens": 10, "min_tokens": 3}, [EOS, EOS, EOS, 4], "stop", 3),
    ({"max_tokens": 3, "ignore_eos": True}, [EOS, EOS, EOS, EOS], "length", 3),
    ({"max_tokens": 2}, [1, 2, 3], "length", 2),
])
def test_finishing(params, tokens, reason, count):
    sched = make_sched()
    sched.add_request(req("a", [1, 2, 3], **params))
    got = []
    for t in tokens:
        _, outputs = step(sched, t)
        got.extend(outputs)
        if got[-1].finished:
            break
    assert len(got) == count and got[-1].finish_reason == reason
    assert [o.new_token_ids[0] for o in got] == tokens[:count]


def test_context_length_finishes_with_length():
    sched = make_sched(max_len=8)
    sched.add_request(req("a", range(6), max_tokens=100))
    outputs = step(sched)[1] + step(sched)[1]
    assert outputs[-1].finish_reason == "length" and len(outputs) == 2


def test_a_prompt_that_can_never_fit_is_refused_with_numbers():
    sched = make_sched(max_len=8)
    with pytest.raises(ContextLengthError) as err:
        sched.validate(req("a", range(8)))
    assert (err.value.prompt_tokens, err.value.limit) == (8, 8)
    assert "8" in err.value.message
    with pytest.raises(InvalidRequestError):
        sched.validate(req("b", []))


def test_engine_limits_context_to_the_full_pool():
    engine = scripted_engine(full=10)
    assert engine.max_model_len == 10 * BS
    with pytest.raises(ContextLengthError):
        engine.add_request(req("a", range(40)))


def test_siblings_wait_for_the_prompt_then_share_its_blocks():
    sched = make_sched(budget=8)
    sched.add_request(req("a", range(13), max_tokens=3, n=2))
    out, _ = step(sched)
    assert shape(out) == [("a", 0, 8, False)]  # sibling 1 waits for the prompt
    out, _ = step(sched)
    assert [(s.seq.index, s.start_pos) for s in out.scheduled] == [(0, 8)]
    out, _ = step(sched)  # the prompt is done: the sibling takes its 3 full blocks
    assert [(s.seq.index, s.start_pos) for s in out.scheduled] == [(0, 13), (1, 12)]
    s0, s1 = sched.groups["a"]
    assert s0.full_blocks[:3] == s1.full_blocks[:3]
    assert all(sched.bm.full.refcount[b] == 2 for b in s0.full_blocks[:3])
    while sched.has_unfinished():
        step(sched)
    assert sched.bm.full.num_used == 0
