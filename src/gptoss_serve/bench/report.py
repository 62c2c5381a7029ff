"""How a benchmark's outcome is shown: the terminal table and the result JSON.

Owns the layout of both. Knows nothing of how the figures were measured.
"""

from __future__ import annotations

import json
from pathlib import Path

from gptoss_serve.bench.client import RequestResult
from gptoss_serve.bench.metrics import PERCENTILES, BenchMetrics, Distribution

_WIDTH = 52


def _row(label: str, value: object) -> str:
    shown = f"{value:.2f}" if isinstance(value, float) else str(value)
    return f"{label:<{_WIDTH - 14}}{shown:>14}"


def _dist_rows(title: str, d: Distribution) -> list[str]:
    rows = [f"{title:-^{_WIDTH}}"]
    rows += [_row(f"Mean {title.split()[0]} (ms):", d.mean)]
    rows += [_row(f"P{q} {title.split()[0]} (ms):", getattr(d, f"p{q}")) for q in PERCENTILES]
    return rows


def format_table(m: BenchMetrics, label: str = "Serving Benchmark Result") -> str:
    """The summary as a fixed-width table for the terminal."""
    rows = [f"{' ' + label + ' ':=^{_WIDTH}}"]
    rows += [
        _row("Successful requests:", m.completed),
        _row("Failed requests:", m.failed),
        _row("Benchmark duration (s):", m.duration_s),
        _row("Total input tokens:", m.total_input_tokens),
        _row("Total generated tokens:", m.total_output_tokens),
        _row("Request throughput (req/s):", m.request_throughput),
        _row("Output token throughput (tok/s):", m.output_throughput),
        _row("Total token throughput (tok/s):", m.total_token_throughput),
    ]
    rows += _dist_rows("TTFT (time to first token)", m.ttft_ms)
    rows += _dist_rows("TPOT (time per output token, excl. 1st)", m.tpot_ms)
    rows += _dist_rows("ITL (inter-token latency)", m.itl_ms)
    rows += _dist_rows("E2EL (end-to-end latency)", m.e2el_ms)
    rows.append("=" * _WIDTH)
    return "\n".join(rows)


def result_dict(m: BenchMetrics, results: list[RequestResult], config: dict) -> dict:
    """Everything a script needs: the configuration, the summary and per-request arrays."""
    return {
        "config": config,
        "metrics": m.to_dict(),
        "input_lens": [r.prompt_len for r in results],
        "output_lens": [r.output_tokens for r in results],
        "expected_output_lens": [r.expected_output_len for r in results],
        "usage_reported": [r.usage_reported for r in results],
        "ttfts_s": [r.ttft for r in results],
        "latencies_s": [r.latency for r in results],
        "itls_s": [r.itl for r in results],
        "errors": [r.error for r in results],
        "generated_texts": [r.text for r in results],
    }


def write_json(path: str | Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
