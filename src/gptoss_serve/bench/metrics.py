"""Benchmark statistics: per-request timings in, the summary that `vllm bench serve` reports out.

Owns the formulas: TTFT, TPOT = (latency - TTFT) / (output tokens - 1) per request, ITL (every
gap between text chunks, pooled over requests), end-to-end latency, throughputs. Percentiles use
linear interpolation between closest ranks (numpy's default). Knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from gptoss_serve.bench.client import RequestResult

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Distribution:
    """Mean, standard deviation and percentiles of one quantity, in milliseconds."""

    mean: float
    std: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of_seconds(cls, values: Sequence[float]) -> Distribution:
        if len(values) == 0:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0)
        ms = np.asarray(values, dtype=np.float64) * 1000.0
        p50, p90, p99 = (float(np.percentile(ms, q)) for q in PERCENTILES)
        return cls(float(ms.mean()), float(ms.std()), p50, p90, p99)


@dataclass(frozen=True)
class BenchMetrics:
    completed: int
    failed: int
    duration_s: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    ttft_ms: Distribution
    tpot_ms: Distribution
    itl_ms: Distribution
    e2el_ms: Distribution

    def to_dict(self) -> dict:
        return asdict(self)


def tpot(result: RequestResult) -> float | None:
    """Time per output token after the first, or None for a request with fewer than 2 tokens."""
    if result.output_tokens < 2:
        return None
    return (result.latency - result.ttft) / (result.output_tokens - 1)


def summarize(results: Sequence[RequestResult], duration_s: float) -> BenchMetrics:
    """The run's summary; failed requests are counted but excluded from every other figure."""
    ok = [r for r in results if r.success]
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    tpots = [t for t in (tpot(r) for r in ok) if t is not None]
    itls = [gap for r in ok for gap in r.itl]
    per_s = (lambda n: n / duration_s) if duration_s > 0 else (lambda n: 0.0)
    return BenchMetrics(
        completed=len(ok),
        failed=len(results) - len(ok),
        duration_s=duration_s,
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=per_s(len(ok)),
        output_throughput=per_s(total_out),
        total_token_throughput=per_s(total_in + total_out),
        ttft_ms=Distribution.of_seconds([r.ttft for r in ok]),
        tpot_ms=Distribution.of_seconds(tpots),
        itl_ms=Distribution.of_seconds(itls),
        e2el_ms=Distribution.of_seconds([r.latency for r in ok]),
    )
