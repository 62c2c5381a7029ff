"""Bench statistics (percentiles, TPOT) and workloads (exact lengths, range ratio, ShareGPT)."""

from __future__ import annotations

import json
import random

import pytest

from gptoss_serve.bench.client import RequestResult
from gptoss_serve.bench.metrics import Distribution, summarize, tpot
from gptoss_serve.bench.workloads import random_workload, sample_lengths, sharegpt_workload
from gptoss_serve.errors import InvalidRequestError
from gptoss_serve.harmony.tokenizer import get_tokenizer


def test_percentiles_interpolate_between_ranks():
    d = Distribution.of_seconds([i / 1000 for i in range(1, 101)])  # 1..100 ms
    # Rank (n-1)*q/100 between sorted values: p50 -> 50.5, p90 -> 90.1, p99 -> 99.01.
    assert (d.p50, d.p90, d.p99) == pytest.approx((50.5, 90.1, 99.01))
    assert d.mean == pytest.approx(50.5)
    assert Distribution.of_seconds([]) == Distribution(0.0, 0.0, 0.0, 0.0, 0.0)


def test_tpot_excludes_the_first_token_and_single_token_requests():
    r = RequestResult(success=True, output_tokens=11, ttft=0.5, latency=1.5)
    assert tpot(r) == pytest.approx(0.1)
    one = RequestResult(success=True, output_tokens=1, ttft=0.2, latency=0.2)
    assert tpot(one) is None
    m = summarize([r, one, RequestResult(success=False, error="x")], duration_s=2.0)
    assert m.tpot_ms.mean == pytest.approx(100.0) and m.failed == 1 and m.completed == 2
    assert m.request_throughput == pytest.approx(1.0)
    assert m.output_throughput == pytest.approx(6.0)


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer()


def test_random_prompts_have_exact_lengths_as_text_and_ids(tok):
    reqs = random_workload(tok, num_prompts=20, input_len=64, output_len=8,
                           range_ratio=0.5, seed=5)
    for r in reqs:
        assert 32 <= r.prompt_len <= 96 and 4 <= r.output_len <= 12
        assert len(r.prompt_ids) == r.prompt_len
        assert tok.encode(r.prompt) == list(r.prompt_ids)
    assert reqs == random_workload(tok, 20, 64, 8, 0.5, seed=5)
    assert reqs != random_workload(tok, 20, 64, 8, 0.5, seed=6)


def test_range_ratio_zero_fixes_lengths_and_bad_ratio_is_rejected():
    rng = random.Random(0)
    assert sample_lengths(128, 0.0, 5, rng) == [128] * 5
    with pytest.raises(InvalidRequestError):
        sample_lengths(128, 1.0, 5, rng)


def test_sharegpt_takes_first_turns_and_filters(tmp_path, tok):
    long_answer = "word " * 40
    data = [
        {"conversations": [{"from": "human", "value": "Tell me about the sea and the sky"},
                           {"from": "gpt", "value": long_answer}]},
        {"conversations": [{"from": "human", "value": "hi"},  # too short: skipped
                           {"from": "gpt", "value": long_answer}]},
        {"conversations": [{"from": "human", "value": "only one turn here"}]},
        "not a dict",
    ]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(data))
    reqs = sharegpt_workload(path, tok, num_prompts=10)
    assert len(reqs) == 1
    assert reqs[0].prompt_len == len(tok.encode("Tell me about the sea and the sky"))
    assert reqs[0].output_len == len(tok.encode(long_answer))
    assert sharegpt_workload(path, tok, 10, output_len=5)[0].output_len == 5
    path.write_text("{broken")
    with pytest.raises(InvalidRequestError):
        sharegpt_workload(path, tok, 10)
