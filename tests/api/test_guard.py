"""The guard every request passes (issue 14.3, 14.4, 14.5, 14.6, 14.7, 14.12): the key on every
route but /health, keys compared as bytes, the body limit, 405 with Allow, Retry-After, and a
client that leaves mid-body getting a quiet 499."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gptoss_serve.api.app import create_app
from gptoss_serve.api.testing import FakeEngine, fixed_script
from gptoss_serve.config import ServerConfig

MODEL = "gpt-oss-test"  # as in conftest.py
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
ROUTES = [("post", "/v1/chat/completions", CHAT), ("post", "/v1/completions", {}),
          ("get", "/v1/models", None), ("get", f"/v1/models/{MODEL}", None),
          ("post", "/tokenize", {"prompt": "hi"}), ("post", "/detokenize", {"tokens": [1]}),
          ("get", "/metrics", None), ("get", "/openapi.json", None), ("get", "/nowhere", None)]


def _openai_error(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[r[1] for r in ROUTES])
def test_the_key_protects_every_route_but_health(make_client, method, path, body):
    client, engine = make_client("ok", api_key="sekrit")
    kw = {"json": body} if body is not None else {}
    err = _openai_error(getattr(client, method)(path, **kw), 401)
    assert err["code"] == "invalid_api_key"
    assert engine.admitted == []  # the refused request reached no engine
    good = getattr(client, method)(path, headers={"Authorization": "Bearer sekrit"}, **kw)
    assert good.status_code != 401
    assert client.get("/health").status_code == 200
    assert engine.admitted == [] or path == "/v1/chat/completions"


def test_public_metrics_needs_no_key(make_client):
    client, _ = make_client(api_key="sekrit", public_metrics=True)
    assert client.get("/metrics").status_code == 200
    assert client.get("/tokenize").status_code == 401


@pytest.mark.parametrize("header", ["Bearer sécret".encode(), b"Bearer \xff\xfe", b"bearer"])
def test_odd_authorization_headers_are_401(make_client, header):
    client, _ = make_client(api_key="sekrit")
    err = _openai_error(client.get("/v1/models", headers={"Authorization": header}), 401)
    assert err["code"] == "invalid_api_key"


def test_a_non_ascii_key_works(make_client):
    client, _ = make_client(api_key="sécret")
    resp = client.get("/v1/models", headers={"Authorization": "Bearer sécret".encode()})
    assert resp.status_code == 200


def test_a_body_over_the_limit_is_413(make_client):
    client, engine = make_client("ok", max_body_bytes=1000)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    err = _openai_error(client.post("/v1/chat/completions", json=big), 413)
    assert err["code"] == "request_too_large" and "1000" in err["message"]

    def chunks():  # no Content-Length: the limit applies while the body streams
        for _ in range(5):
            yield b" " * 300

    resp = client.post("/v1/chat/completions", content=chunks(),
                       headers={"content-type": "application/json"})
    _openai_error(resp, 413)
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert len(engine.admitted) == 1


def test_405_says_which_methods_are_allowed(make_client):
    client, _ = make_client()
    resp = client.get("/v1/chat/completions")
    _openai_error(resp, 405)
    assert resp.headers["allow"] == "POST"


def test_429_and_503_carry_retry_after(make_client):
    client, engine = make_client("ok", max_queue=1)
    engine._waiting = 1
    resp = client.post("/v1/chat/completions", json=CHAT)
    _openai_error(resp, 429)
    assert int(resp.headers["retry-after"]) >= 1
    engine._waiting, engine.dead = 0, True
    resp = client.post("/v1/chat/completions", json=CHAT)
    assert _openai_error(resp, 503)["code"] == "engine_dead"
    assert int(resp.headers["retry-after"]) >= 1
    health = client.get("/health")
    assert health.status_code == 503 and int(health.headers["retry-after"]) >= 1


def test_a_client_leaving_mid_body_gets_a_quiet_499(tok, caplog):
    """Straight ASGI: half a body, then the disconnect."""
    app = create_app(FakeEngine(fixed_script([1])), ServerConfig(served_model_names=(MODEL,)),
                     tok)
    messages = [{"type": "http.request", "body": b'{"model": "gpt', "more_body": True},
                {"type": "http.disconnect"}]
    sent: list[dict] = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json")], "scheme": "http",
             "server": ("testserver", 80), "client": ("test", 1), "http_version": "1.1",
             "asgi": {"version": "3.0"}}
    with caplog.at_level(logging.INFO):
        asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 499
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
