"""The `gptoss-serve bench` run from start to end: workload, load, summary, table, JSON.

Owns BenchOptions (every knob of a run) and the order of the steps. Knows nothing of argv: the
CLI fills BenchOptions. A custom httpx transport can be passed in for tests.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from gptoss_serve.bench.client import COMPLETIONS_ENDPOINT, RequestSettings
from gptoss_serve.bench.metrics import BenchMetrics, summarize
from gptoss_serve.bench.report import format_table, result_dict, write_json
from gptoss_serve.bench.runner import LoadShape, run_load
from gptoss_serve.bench.workloads import BenchRequest, Tokenizer, random_workload, sharegpt_workload
from gptoss_serve.errors import InvalidRequestError


@dataclass(frozen=True)
class BenchOptions:
    base_url: str = "http://127.0.0.1:8000"
    endpoint: str = COMPLETIONS_ENDPOINT
    model: str | None = None  # None: the first model that /v1/models lists
    api_key: str | None = None
    dataset_name: str = "random"  # random | sharegpt
    dataset_path: str | None = None
    num_prompts: int = 100
    random_input_len: int = 1024
    random_output_len: int = 128
    random_range_ratio: float = 0.0
    sharegpt_output_len: int | None = None
    seed: int = 0
    request_rate: float = math.inf
    max_concurrency: int | None = None
    num_warmups: int = 0
    ignore_eos: bool = False
    temperature: float = 0.0
    token_prompts: bool = True
    include_usage: bool = True
    extra_body: dict = field(default_factory=dict)
    timeout_s: float = 6 * 3600.0
    result_json: str | None = None
    show_progress: bool = True
    label: str = "Serving Benchmark Result"


def build_workload(o: BenchOptions, tokenizer: Tokenizer | None = None) -> list[BenchRequest]:
    """The prompts of the run (the o200k_harmony tokenizer unless one is given)."""
    if tokenizer is None:
        from gptoss_serve.harmony.tokenizer import get_tokenizer

        tokenizer = get_tokenizer()
    if o.dataset_name == "random":
        return random_workload(tokenizer, o.num_prompts, o.random_input_len,
                               o.random_output_len, o.random_range_ratio, o.seed)
    if o.dataset_name == "sharegpt":
        if not o.dataset_path:
            raise InvalidRequestError("the sharegpt workload needs --dataset-path")
        return sharegpt_workload(o.dataset_path, tokenizer, o.num_prompts, o.seed,
                                 o.sharegpt_output_len)
    raise InvalidRequestError(f"unknown dataset {o.dataset_name!r} (random | sharegpt)")


async def _first_model(client: httpx.AsyncClient) -> str:
    try:
        resp = await client.get("/v1/models")
        resp.raise_for_status()
        return str(resp.json()["data"][0]["id"])
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        raise InvalidRequestError(f"no --model given and /v1/models failed: {exc}") from exc


def _client(o: BenchOptions, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {o.api_key}"} if o.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(base_url=o.base_url, headers=headers, timeout=o.timeout_s,
                             limits=limits, transport=transport)


async def run_bench_async(
    o: BenchOptions,
    requests: list[BenchRequest],
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[BenchMetrics, dict[str, Any]]:
    """Run the load against the server; return the summary and the result dictionary."""
    async with _client(o, transport) as client:
        model = o.model or await _first_model(client)
        settings = RequestSettings(model, o.endpoint, o.ignore_eos, o.temperature,
                                   o.token_prompts, o.include_usage, dict(o.extra_body))
        shape = LoadShape(o.request_rate, o.max_concurrency, o.num_warmups, o.seed,
                          o.show_progress)
        outcome = await run_load(client, requests, settings, shape)
    metrics = summarize(outcome.results, outcome.duration_s)
    config = {**asdict(o), "model": model, "request_rate": str(o.request_rate)}
    data = result_dict(metrics, outcome.results, config)
    data["send_offsets_s"] = outcome.send_offsets
    return metrics, data


def run_bench(
    o: BenchOptions,
    tokenizer: Tokenizer | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    """The whole run: build the workload, send it, print the table, write the JSON."""
    requests = build_workload(o, tokenizer)
    metrics, data = asyncio.run(run_bench_async(o, requests, transport))
    if echo:
        print(format_table(metrics, o.label))
    if o.result_json:
        write_json(o.result_json, data)
    return data
