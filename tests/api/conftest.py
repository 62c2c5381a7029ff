"""Fixtures for API tests: the real tokenizer, a FakeEngine app, and the official openai client.

The app runs in-process (Starlette's TestClient), so these tests need no network or model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import openai
import pytest
from starlette.testclient import TestClient

from gptoss_serve.api.app import create_app
from gptoss_serve.api.testing import FakeEngine, fixed_script, script_ids
from gptoss_serve.config import ServerConfig
from gptoss_serve.harmony.tokenizer import get_tokenizer

MODEL = "gpt-oss-test"


@pytest.fixture(scope="session")
def tok():
    return get_tokenizer()


@pytest.fixture
def ids(tok) -> Callable[[str], list[int]]:
    """Harmony text with `<|name|>` control tokens -> token ids."""
    return lambda text: script_ids(tok, text)


@pytest.fixture
def make_client(tok) -> Iterator[Callable[..., tuple[TestClient, FakeEngine]]]:
    """make_client(*scripts, tokens_per_step=1, **server_config) -> (http client, engine)."""
    clients: list[TestClient] = []

    def make(*scripts: str | list[int], tokens_per_step: int = 1, **cfg) -> tuple:
        seqs = [s if isinstance(s, list) else script_ids(tok, s) for s in scripts] or [[]]
        engine = FakeEngine(fixed_script(*seqs), tokens_per_step=tokens_per_step)
        cfg.setdefault("current_date", "2025-06-28")
        config = ServerConfig(served_model_names=(MODEL,), **cfg)
        client = TestClient(create_app(engine, config, tok), raise_server_exceptions=False)
        clients.append(client)
        return client, engine

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def oai(make_client) -> Callable[..., tuple[openai.OpenAI, FakeEngine]]:
    """The official client talking to a FakeEngine app: oai(*scripts, **kw) -> (client, engine)."""

    def make(*scripts, **kw):
        http, engine = make_client(*scripts, **kw)
        client = openai.OpenAI(
            base_url="http://testserver/v1", api_key=kw.get("api_key") or "unused",
            http_client=http, max_retries=0,
        )
        return client, engine

    return make
