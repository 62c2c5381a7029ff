"""Bench load generator against the in-process fake server: counts, failures, TPOT, load shape."""

from __future__ import annotations

import asyncio
import math
import statistics

import pytest
from bench_fake_openai import FAIL_MARKER, MODEL, FakeServer

from gptoss_serve.bench.main import BenchOptions, run_bench_async
from gptoss_serve.bench.runner import arrival_gaps
from gptoss_serve.bench.workloads import BenchRequest
from gptoss_serve.errors import InvalidRequestError


def _requests(n: int, out: int, fail_every: int = 0) -> list[BenchRequest]:
    reqs = []
    for i in range(n):
        if fail_every and i % fail_every == 0:  # sent as text so that the server sees the marker
            reqs.append(BenchRequest(f"prompt {i} {FAIL_MARKER}", None, 4, out))
        else:
            reqs.append(BenchRequest(f"prompt {i}", (1, 2, 3, i), 4, out))
    return reqs


def _run(server: FakeServer, reqs: list[BenchRequest], **kw) -> tuple:
    opts = BenchOptions(base_url="http://fake", model=kw.pop("model", MODEL),
                        show_progress=False, **kw)
    return asyncio.run(run_bench_async(opts, reqs, server.transport()))


def test_counts_ttft_and_tpot_formula():
    server = FakeServer(delay_s=0.003)
    metrics, data = _run(server, _requests(6, out=5), max_concurrency=3)
    assert metrics.completed == 6 and metrics.failed == 0
    assert data["output_lens"] == [5] * 6 and metrics.total_output_tokens == 30
    assert all(len(gaps) == 4 for gaps in data["itls_s"])
    # Each chunk is preceded by a 3 ms sleep: lower bounds hold on any machine.
    assert min(data["ttfts_s"]) >= 0.003
    assert min(g for gaps in data["itls_s"] for g in gaps) >= 0.003
    pairs = zip(data["latencies_s"], data["ttfts_s"], strict=True)
    tpots = [(lat - ttft) / (5 - 1) for lat, ttft in pairs]
    assert metrics.tpot_ms.mean == pytest.approx(1000 * statistics.fmean(tpots))
    assert metrics.output_throughput == pytest.approx(30 / metrics.duration_s)
    assert metrics.total_input_tokens == 6 * 7  # the server's usage.prompt_tokens wins


def test_failed_requests_are_counted_and_excluded():
    metrics, data = _run(FakeServer(), _requests(9, out=3, fail_every=3))
    assert metrics.failed == 3 and metrics.completed == 6
    assert metrics.total_output_tokens == 18
    failed = [e for e in data["errors"] if e]
    assert len(failed) == 3 and all(e.startswith("HTTP 500") for e in failed)


def test_unreachable_server_is_a_failure_not_a_crash():
    opts = BenchOptions(base_url="http://127.0.0.1:9", model=MODEL, show_progress=False,
                        timeout_s=5)
    metrics, data = asyncio.run(run_bench_async(opts, _requests(2, out=2)))
    assert metrics.failed == 2 and metrics.completed == 0
    assert all("ConnectError" in e for e in data["errors"])


def test_usage_counts_grouped_tokens_and_chunks_count_without_usage():
    grouped = FakeServer(tokens_per_chunk=3)
    metrics, data = _run(grouped, _requests(2, out=7))
    assert data["output_lens"] == [7, 7] and all(data["usage_reported"])
    assert all(len(gaps) == 2 for gaps in data["itls_s"])  # 3 chunks -> 2 gaps
    no_usage = FakeServer(send_usage=False)
    metrics, data = _run(no_usage, _requests(2, out=4))
    assert data["output_lens"] == [4, 4] and not any(data["usage_reported"])
    assert metrics.total_input_tokens == 8  # the workload's lengths when no usage comes


def test_chat_endpoint_counts_reasoning_chunks_not_the_role_chunk():
    server = FakeServer(send_usage=False)
    _, data = _run(server, _requests(2, out=4), endpoint="/v1/chat/completions")
    assert data["output_lens"] == [4, 4]
    assert server.bodies[0]["messages"] == [{"role": "user", "content": "prompt 0"}]


def test_request_body_carries_ids_ignore_eos_and_usage():
    server = FakeServer()
    _run(server, _requests(1, out=2), ignore_eos=True, extra_body={"top_k": 1})
    body = server.bodies[0]
    assert body["prompt"] == [1, 2, 3, 0] and body["ignore_eos"] is True
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 2 and body["model"] == MODEL and body["top_k"] == 1


def test_max_concurrency_caps_requests_in_flight():
    server = FakeServer(delay_s=0.002)
    _run(server, _requests(12, out=3), max_concurrency=3)
    assert 1 < server.max_in_flight <= 3
    unbounded = FakeServer(delay_s=0.002)
    _run(unbounded, _requests(12, out=3))
    assert unbounded.max_in_flight > 3


def test_warmups_are_sent_but_not_counted():
    server = FakeServer()
    metrics, data = _run(server, _requests(3, out=2), num_warmups=2)
    assert len(server.bodies) == 5
    assert metrics.completed == 3 and len(data["output_lens"]) == 3


def test_model_comes_from_v1_models_when_not_given():
    server = FakeServer()
    _, data = _run(server, _requests(1, out=2), model=None)
    assert data["config"]["model"] == MODEL and server.bodies[0]["model"] == MODEL


def test_poisson_gaps_have_the_asked_mean_and_inf_sends_at_once():
    gaps = arrival_gaps(4000, request_rate=20.0, seed=1)
    assert statistics.fmean(gaps) == pytest.approx(1 / 20.0, rel=0.1)
    assert gaps == arrival_gaps(4000, request_rate=20.0, seed=1)
    assert arrival_gaps(5, math.inf, 0) == [0.0] * 5
    with pytest.raises(InvalidRequestError):
        arrival_gaps(5, 0.0, 0)


def test_request_rate_delays_each_send_by_its_cumulative_gap():
    rate, seed, n = 200.0, 3, 8
    _, data = _run(FakeServer(), _requests(n, out=2), request_rate=rate, seed=seed)
    offsets = data["send_offsets_s"]
    cumulative = [sum(arrival_gaps(n, rate, seed)[: i + 1]) for i in range(n)]
    assert all(off >= due for off, due in zip(offsets, cumulative, strict=True))
    assert offsets == sorted(offsets)
