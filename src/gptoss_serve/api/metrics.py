"""Prometheus metrics of the server: engine gauges read at scrape time, request histograms.

Owns the metric names and one registry per app (so tests can build many apps). Engine state
(running, waiting, KV use per pool, prefix-cache hit rate) is read from `engine.stats()` when
/metrics is scraped; latencies and token counts are recorded by the handlers through
`RequestTimer`. Knows nothing of harmony or HTTP routing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gptoss_serve.engine.stats import EngineStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5, 5)


class _EngineCollector(Collector):
    """Reads engine.stats() at scrape time."""

    def __init__(self, stats: Callable[[], EngineStats]):
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self._stats()
        yield _gauge("gptoss_requests_running", "requests generating", s.num_running_requests)
        yield _gauge("gptoss_requests_waiting", "requests queued", s.num_waiting_requests)
        usage = GaugeMetricFamily(
            "gptoss_kv_cache_usage", "fraction of KV blocks in use", labels=["pool"]
        )
        blocks = GaugeMetricFamily("gptoss_kv_blocks_used", "KV blocks in use", labels=["pool"])
        for pool, used, total in _pools(s):
            usage.add_metric([pool], used / total if total else 0.0)
            blocks.add_metric([pool], used)
        yield usage
        yield blocks
        rate = s.prefix_cache_hit_rate
        yield _gauge("gptoss_prefix_cache_hit_rate", "prompt tokens served from cache", rate)
        yield _gauge("gptoss_preemptions", "sequences preempted so far", s.num_preemptions)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _pools(s: EngineStats) -> list[tuple[str, int, int]]:
    """(pool, used, total) for the two KV pools."""
    return [
        ("full", s.full_blocks_used, s.full_blocks_used + s.full_blocks_free),
        ("sliding", s.sliding_blocks_used, s.sliding_blocks_used + s.sliding_blocks_free),
    ]


class ServerMetrics:
    """All metrics of one app, in their own registry."""

    def __init__(self, stats: Callable[[], EngineStats]):
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(stats))
        r = self.registry
        self.ttft = Histogram(
            "gptoss_time_to_first_token_seconds", "time to first token", registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.itl = Histogram(
            "gptoss_inter_token_latency_seconds", "time between output steps", registry=r,
            buckets=ITL_BUCKETS,
        )
        self.e2e = Histogram(
            "gptoss_e2e_request_latency_seconds", "request latency", registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.prompt_tokens = Counter("gptoss_prompt_tokens", "prompt tokens", registry=r)
        self.generation_tokens = Counter("gptoss_generation_tokens", "tokens generated", registry=r)
        self.requests = Counter(
            "gptoss_requests", "finished requests", ["finish_reason"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def timer(self, num_prompt_tokens: int) -> RequestTimer:
        self.prompt_tokens.inc(num_prompt_tokens)
        return RequestTimer(self)


class RequestTimer:
    """Latency bookkeeping of one request: call `tokens(n)` per output step, `done()` at the end."""

    def __init__(self, metrics: ServerMetrics):
        self._m = metrics
        self._start = time.monotonic()
        self._last: float | None = None

    def tokens(self, n: int) -> None:
        if n <= 0:
            return
        now = time.monotonic()
        if self._last is None:
            self._m.ttft.observe(now - self._start)
        else:
            self._m.itl.observe(now - self._last)
        self._last = now
        self._m.generation_tokens.inc(n)

    def done(self, finish_reason: str) -> None:
        self._m.e2e.observe(time.monotonic() - self._start)
        self._m.requests.labels(finish_reason=finish_reason).inc()
