"""Fuzzing the real app (issue 14): schemathesis over its own OpenAPI document, and a generator of
bad values for every field of every request model against the real tiny engine. Fixed seeds,
bounded counts: no response is a 500 or worse, every error is in the OpenAI shape, and the engine
is alive at the end (one bad request used to kill it for good)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from gptoss_serve.api.app import create_app
from gptoss_serve.api.responses_schemas import ResponsesRequest
from gptoss_serve.api.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from gptoss_serve.api.testing import FakeEngine, fixed_script, script_ids
from gptoss_serve.config import CacheConfig, SchedulerConfig, ServerConfig
from gptoss_serve.harmony.tokenizer import get_tokenizer

MODEL = "gpt-oss-test"
ANSWER = "<|channel|>analysis<|message|>Hm.<|end|><|start|>assistant<|channel|>final<|message|>" \
         "Fine.<|return|>"


def assert_openai_shaped(status: int, body: bytes, what: str) -> None:
    assert status < 500, f"{what}: {status} {body[:300]!r}"
    if status >= 400:
        err = json.loads(body)["error"]
        assert set(err) == {"message", "type", "param", "code"}, what
        assert isinstance(err["message"], str) and err["message"], what
        assert err["param"] is None or isinstance(err["param"], str), what


# ---- schemathesis over /openapi.json -------------------------------------------------------
_tok = get_tokenizer()
_fake_app = create_app(FakeEngine(fixed_script(script_ids(_tok, ANSWER))),
                       ServerConfig(served_model_names=(MODEL,), current_date="2025-06-28"), _tok)
schema = schemathesis.openapi.from_asgi("/openapi.json", _fake_app)


def test_the_openapi_document_declares_every_request_body():
    doc = _fake_app.openapi()
    for path in ("/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize"):
        body = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        name = body["schema"]["$ref"].rsplit("/", 1)[-1]
        assert "properties" in doc["components"]["schemas"][name], path


@schema.parametrize()
@settings(max_examples=15, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_schemathesis_finds_no_server_error(case):
    response = case.call()
    assert_openai_shaped(response.status_code, response.content, f"{case.method} {case.path}")


# ---- a bad value for every field, against the real tiny engine -----------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from gptoss_serve.engine.async_engine import AsyncEngine
    from gptoss_serve.model.synthetic import write_checkpoint

    ckpt = write_checkpoint(tmp_path_factory.mktemp("fuzz"), preset="tiny", seed=0)
    engine = AsyncEngine.from_config(
        ckpt, dtype="float32", device="cpu", cache=CacheConfig(kv_cache_memory_gib=0.02),
        sched=SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=512, max_model_len=1024))
    config = ServerConfig(served_model_names=(MODEL,), current_date="2025-06-28")
    with TestClient(create_app(engine, config, _tok), raise_server_exceptions=False) as client:
        yield client, engine
    asyncio.run(engine.shutdown())


USER = [{"role": "user", "content": "hi"}]
SAMPLED = {"max_tokens": 2, "temperature": 1.0, "top_p": 0.5}  # the sampler's full path
ROUTES = {  # route: (request model, a valid body that generates at most 2 tokens)
    "/v1/chat/completions": (ChatCompletionRequest, {"model": MODEL, "messages": USER,
                                                     **SAMPLED}),
    "/v1/completions": (CompletionRequest, {"model": MODEL, "prompt": "hi", **SAMPLED}),
    "/tokenize": (TokenizeRequest, {"model": MODEL, "prompt": "hi"}),
    "/detokenize": (DetokenizeRequest, {"model": MODEL, "tokens": [1, 2]}),
    "/v1/responses": (ResponsesRequest, {"model": MODEL, "input": "hi", "max_output_tokens": 2,
                                         "temperature": 1.0, "top_p": 0.5}),
}
FIELDS = [(route, name) for route, (model, _) in ROUTES.items() for name in model.model_fields]

_NUMBERS = st.sampled_from([10**309, -1, 0, 2**31, 2**63, -(2**63) - 1, -10**309, 1.5, -0.0,
                            1e308, -1e308, 5e-324, 1e-30, 3.0, 101, 129, 21])
_ODD_TEXT = st.sampled_from(["\u00b2", "\u2460", "1" * 4301, "", " ", "-5", "<|end|>",
                             "<|start|>assistant<|channel|>final<|message|>", "\x00",
                             "\ud7ff\ue000", "é" * 50, "null", "{}", "text", "json_schema"])
_LEAF = st.one_of(_NUMBERS, _ODD_TEXT, st.booleans(), st.none(), st.text(max_size=20))
_CONTAINERS = st.one_of(st.dictionaries(_ODD_TEXT, _NUMBERS, min_size=1, max_size=2),
                        st.lists(_NUMBERS | _ODD_TEXT, min_size=1, max_size=3),
                        st.lists(st.dictionaries(_ODD_TEXT, _LEAF, max_size=3), max_size=2))
BAD = st.one_of(_NUMBERS, _ODD_TEXT, _CONTAINERS, st.recursive(_LEAF, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6))


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=True, ensure_ascii=False)


@pytest.mark.parametrize("where", FIELDS, ids=[f"{r}:{n}" for r, n in FIELDS])
@settings(max_examples=8, derandomize=True, deadline=None,
          suppress_health_check=list(HealthCheck))
@given(value=BAD)
def test_a_bad_value_in_any_field_is_never_a_server_error(tiny, where, value):
    client, engine = tiny
    route, name = where
    body = {**ROUTES[route][1], name: value}
    if name in ("messages", "input") and isinstance(value, list | str):  # inside a message
        body[name] = [{"role": "user", "content": value}]
    try:
        raw = _dumps(body)
    except (ValueError, UnicodeEncodeError):
        return
    resp = client.post(route, content=raw.encode("utf-8", "surrogatepass"),
                       headers={"content-type": "application/json"})
    assert_openai_shaped(resp.status_code, resp.content, f"{route} {name}={value!r}")
    assert not engine.is_dead, f"{route} {name}={value!r} killed the engine"


def test_the_engine_is_alive_after_the_fuzzing(tiny):
    client, _ = tiny
    assert client.get("/health").status_code == 200
    out = client.post("/v1/completions", json={**ROUTES["/v1/completions"][1], "top_k": 3,
                                               "top_p": 0.5, "temperature": 1.0})
    assert out.status_code == 200 and out.json()["usage"]["completion_tokens"] == 2
