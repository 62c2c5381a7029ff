"""Load shaping for `gptoss-serve bench`: when each request is sent, and how many are in flight.

Owns Poisson arrivals (`request_rate`, `inf` = all at once), the concurrency cap, warm-up
requests, the progress bar and the wall-clock duration of a run. Knows nothing of the metrics'
formulas (metrics.py) or of the request bodies (client.py).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from tqdm.asyncio import tqdm

from gptoss_serve.bench.client import RequestResult, RequestSettings, send_request
from gptoss_serve.bench.workloads import BenchRequest
from gptoss_serve.errors import InvalidRequestError


@dataclass(frozen=True)
class LoadShape:
    request_rate: float = math.inf  # requests per second, Poisson; inf sends all at once
    max_concurrency: int | None = None  # cap on requests in flight; None = no cap
    num_warmups: int = 0
    seed: int = 0
    show_progress: bool = True


@dataclass(frozen=True)
class RunOutcome:
    results: list[RequestResult]
    duration_s: float
    send_offsets: list[float]  # when each request was handed to the client, from the run start


def arrival_gaps(n: int, request_rate: float, seed: int) -> list[float]:
    """Gaps (s) before each of `n` requests: exponential with mean 1/rate, or zeros for inf."""
    if request_rate <= 0:
        raise InvalidRequestError("request-rate must be positive (or inf)", param="request_rate")
    if math.isinf(request_rate):
        return [0.0] * n
    rng = random.Random(seed)
    return [rng.expovariate(request_rate) for _ in range(n)]


async def _warm_up(
    client: httpx.AsyncClient,
    requests: Sequence[BenchRequest],
    s: RequestSettings,
    shape: LoadShape,
) -> None:
    if shape.num_warmups <= 0:
        return
    limit = asyncio.Semaphore(shape.max_concurrency or shape.num_warmups)
    warmups = [requests[i % len(requests)] for i in range(shape.num_warmups)]

    async def one(req: BenchRequest) -> RequestResult:
        async with limit:
            return await send_request(client, req, s)

    outcomes = await asyncio.gather(*(one(r) for r in warmups))
    failed = [o.error for o in outcomes if not o.success]
    if len(failed) == len(outcomes):
        raise InvalidRequestError(f"every warm-up request failed; first error: {failed[0]}")


async def run_load(
    client: httpx.AsyncClient,
    requests: Sequence[BenchRequest],
    settings: RequestSettings,
    shape: LoadShape,
) -> RunOutcome:
    """Send `requests` with the given shape and collect every result (in workload order)."""
    if not requests:
        raise InvalidRequestError("the workload is empty", param="num_prompts")
    await _warm_up(client, requests, settings, shape)
    gaps = arrival_gaps(len(requests), shape.request_rate, shape.seed)
    limit = asyncio.Semaphore(shape.max_concurrency) if shape.max_concurrency else None
    bar = tqdm(total=len(requests), disable=not shape.show_progress, desc="requests")
    start = time.perf_counter()
    offsets: list[float] = [0.0] * len(requests)

    async def one(i: int, req: BenchRequest) -> RequestResult:
        if limit is None:
            offsets[i] = time.perf_counter() - start
            result = await send_request(client, req, settings)
        else:
            async with limit:
                offsets[i] = time.perf_counter() - start
                result = await send_request(client, req, settings)
        bar.update(1)
        return result

    tasks = []
    for i, (gap, req) in enumerate(zip(gaps, requests, strict=True)):
        if gap > 0:
            await asyncio.sleep(gap)
        tasks.append(asyncio.create_task(one(i, req)))
    results = list(await asyncio.gather(*tasks))
    duration = time.perf_counter() - start
    bar.close()
    return RunOutcome(results, duration, offsets)
