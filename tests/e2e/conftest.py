"""Fixtures of the end-to-end tests: real uvicorn servers on free ports.

`tiny_server` (session): the engine with the tiny random checkpoint. `fake_server`: a FakeEngine
replaying scripted harmony tokens (a random model never calls tools); its `gate` can hold
requests as waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from e2e_support import Running, start

from gptoss_serve.api.testing import FakeEngine, fixed_script, script_ids
from gptoss_serve.config import CacheConfig, SchedulerConfig
from gptoss_serve.harmony.tokenizer import get_tokenizer


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory) -> Iterator[Running]:
    from gptoss_serve.engine.async_engine import AsyncEngine
    from gptoss_serve.model.synthetic import write_checkpoint

    ckpt = tmp_path_factory.mktemp("tiny")
    write_checkpoint(ckpt, preset="tiny", seed=0)
    engine = AsyncEngine.from_config(
        ckpt, dtype="float32", device="cpu", cache=CacheConfig(kv_cache_memory_gib=0.05),
        sched=SchedulerConfig(max_num_seqs=64, max_num_batched_tokens=2048, max_model_len=4096),
    )
    running = start(engine)
    yield running
    running.stop()
    asyncio.run(engine.shutdown())


@pytest.fixture
def fake_server() -> Iterator[Callable[..., Running]]:
    """fake_server(*harmony_scripts, **server_config) -> Running (stopped after the test)."""
    started: list[Running] = []

    def make(*scripts: str, tokens_per_step: int = 1, **cfg: Any) -> Running:
        tok = get_tokenizer()
        engine = FakeEngine(fixed_script(*[script_ids(tok, s) for s in scripts]),
                            tokens_per_step=tokens_per_step)
        started.append(start(engine, **cfg))
        return started[-1]

    yield make
    for r in started:
        r.stop()
