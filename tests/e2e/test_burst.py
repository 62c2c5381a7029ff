"""--max-queue under a burst (issue 14.5): N simultaneous requests over real HTTP while the only
sequence slot is taken; exactly N - limit are refused with 429 and Retry-After, the rest run."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from e2e_support import MODEL, start

from gptoss_serve.config import CacheConfig, SchedulerConfig

LIMIT, BURST = 4, 12


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory):
    from gptoss_serve.engine.async_engine import AsyncEngine
    from gptoss_serve.model.synthetic import write_checkpoint

    ckpt = tmp_path_factory.mktemp("tiny-burst")
    write_checkpoint(ckpt, preset="tiny", seed=0)
    engine = AsyncEngine.from_config(
        ckpt, dtype="float32", device="cpu", cache=CacheConfig(kv_cache_memory_gib=0.05),
        sched=SchedulerConfig(max_num_seqs=1, max_num_batched_tokens=512, max_model_len=4096))
    running = start(engine, max_queue=LIMIT)
    yield running
    running.stop()
    asyncio.run(engine.shutdown())


def test_a_burst_over_max_queue_rejects_exactly_the_excess(one_slot_server):
    url = one_slot_server.base_url + "/v1/completions"
    small = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "temperature": 0}
    blocker = {"model": MODEL, "prompt": "block", "max_tokens": 4000, "ignore_eos": True,
               "stream": True, "temperature": 0}

    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=BURST + 2)
        async with httpx.AsyncClient(limits=limits, timeout=120) as client:
            async with client.stream("POST", url, json=blocker) as stream:
                lines = stream.aiter_lines()
                await lines.__anext__()  # the blocker holds the only sequence slot
                tasks = [asyncio.create_task(client.post(url, json=small))
                         for _ in range(BURST)]
                deadline = time.monotonic() + 60  # a safety bound, not a timing assertion
                while sum(t.done() for t in tasks) < BURST - LIMIT and \
                        time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
            return await asyncio.gather(*tasks)  # the blocker is gone: the queue drains

    responses = asyncio.run(main())
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * LIMIT + [429] * (BURST - LIMIT)
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
