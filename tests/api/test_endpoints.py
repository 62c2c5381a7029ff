"""The endpoints around chat: errors (404, 401, 429, 503, context length), /v1/models,
/tokenize against openai-harmony, /detokenize, /health, /metrics, and the abort of a request
whose consumer goes away."""

from __future__ import annotations

import asyncio
import shutil

import openai
import pytest

from gptoss_serve.api.app import create_app
from gptoss_serve.api.context import ApiContext
from gptoss_serve.api.metrics import ServerMetrics
from gptoss_serve.api.testing import FakeEngine, fixed_script
from gptoss_serve.config import ServerConfig
from gptoss_serve.engine.request import EngineRequest, SamplingParams
from gptoss_serve.errors import EngineDeadError

MODEL = "gpt-oss-test"
USER = [{"role": "user", "content": "hi"}]
ANSWER = "<|channel|>final<|message|>ok<|return|>"


def test_unknown_model_is_404(oai):
    client, engine = oai(ANSWER)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=USER)
    assert info.value.body["code"] == "model_not_found"
    assert engine.admitted == []


def test_api_key(oai, make_client):
    client, _ = oai(ANSWER, api_key="sekrit")
    assert client.chat.completions.create(model=MODEL, messages=USER).choices[0].message.content
    bad, _ = oai(ANSWER, api_key="sekrit")
    bad.api_key = "wrong"
    with pytest.raises(openai.AuthenticationError) as info:
        bad.models.list()
    assert info.value.body["type"] == "invalid_request_error"
    http, _ = make_client(api_key="sekrit")
    assert http.get("/v1/models").status_code == 401
    assert http.get("/health").status_code == 200


def test_saturated_is_429(oai):
    client, engine = oai(ANSWER, max_queue=2)
    engine._waiting = 2
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=USER)
    engine._waiting = 1
    assert client.chat.completions.create(model=MODEL, messages=USER).choices


def test_context_length_states_both_numbers(oai):
    client, engine = oai(ANSWER)
    engine.max_model_len = 120
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=100)
    err = info.value.body
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
    assert "120" in err["message"] and "100" in err["message"]
    # no max_tokens: the default is trimmed to the room left, the prompt is never cut
    client.chat.completions.create(model=MODEL, messages=USER)
    p = engine.admitted[-1]
    assert len(p.prompt_token_ids) + p.sampling_params.max_tokens == 120
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[
            {"role": "user", "content": "word " * 200}])


def test_dead_engine(make_client):
    client, engine = make_client(ANSWER)
    engine.dead = True
    assert client.get("/health").status_code == 503
    resp = client.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "engine_dead"


def test_unknown_route_is_openai_shaped_404(make_client):
    client, _ = make_client()
    resp = client.get("/v1/nothing")
    assert resp.status_code == 404 and resp.json()["error"]["message"]


def test_models(oai):
    client, _ = oai(ANSWER)
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")


def test_tokenize_messages_matches_openai_harmony(make_client, tmp_path, monkeypatch):
    from gptoss_serve.harmony.vocab import ensure_vocab_file

    shutil.copy(ensure_vocab_file(), tmp_path / "o200k_base.tiktoken")
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(tmp_path))
    import openai_harmony as oh

    enc = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
    system = (oh.SystemContent.new().with_reasoning_effort(oh.ReasoningEffort.HIGH)
              .with_conversation_start_date("2025-06-28"))
    conv = oh.Conversation.from_messages([
        oh.Message.from_role_and_content(oh.Role.SYSTEM, system),
        oh.Message.from_role_and_content(oh.Role.USER, "What is 2 + 2?"),
    ])
    expected = enc.render_conversation_for_completion(conv, oh.Role.ASSISTANT)
    client, _ = make_client()
    body = {"messages": [{"role": "user", "content": "What is 2 + 2?"}],
            "reasoning_effort": "high"}
    got = client.post("/tokenize", json=body).json()
    assert got["tokens"] == list(expected) and got["count"] == len(expected)


def test_tokenize_and_detokenize_text(make_client, tok):
    client, _ = make_client()
    got = client.post("/tokenize", json={"prompt": "Hello <|start|> world",
                                         "return_token_strs": True}).json()
    assert got["tokens"] == tok.encode("Hello <|start|> world")
    assert "".join(got["token_strs"]) == "Hello <|start|> world"
    back = client.post("/detokenize", json={"tokens": got["tokens"]}).json()
    assert back == {"prompt": "Hello <|start|> world"}
    assert client.post("/detokenize", json={"tokens": [10**7]}).status_code == 400
    assert client.post("/tokenize", json={}).status_code == 400


def test_metrics(oai, make_client):
    client, engine = oai(ANSWER)
    client.chat.completions.create(model=MODEL, messages=USER)
    http = client._client
    text = http.get("/metrics").text
    for name in ("gptoss_requests_running", "gptoss_requests_waiting", "gptoss_kv_cache_usage",
                 "gptoss_prefix_cache_hit_rate", "gptoss_time_to_first_token_seconds_bucket",
                 "gptoss_inter_token_latency_seconds_bucket",
                 "gptoss_e2e_request_latency_seconds_count", "gptoss_prompt_tokens_total",
                 "gptoss_generation_tokens_total"):
        assert name in text
    assert 'gptoss_kv_cache_usage{pool="sliding"}' in text
    assert "gptoss_e2e_request_latency_seconds_count 1.0" in text


def test_consumer_leaving_aborts_the_request(tok):
    engine = FakeEngine(fixed_script(list(range(100, 200))))
    ctx = ApiContext(engine, ServerConfig(), tok, ServerMetrics(engine.stats))
    req = EngineRequest("r1", (1, 2, 3), SamplingParams(max_tokens=100))

    async def read_two():
        gen = ctx.generate(req)
        await gen.__anext__()
        await gen.__anext__()
        await gen.aclose()

    asyncio.run(read_two())
    assert engine.aborted == {"r1"}


def test_client_disconnect_mid_stream_aborts(tok):
    """A streaming response whose client goes away aborts the engine request."""
    engine = FakeEngine(fixed_script(list(range(100, 5000))))
    app = create_app(engine, ServerConfig(served_model_names=(MODEL,)), tok)
    messages: list[dict] = []

    async def run():
        body = (b'{"model": "gpt-oss-test", "stream": true, "max_tokens": 4000,'
                b' "messages": [{"role": "user", "content": "hi"}]}')
        inbox = [{"type": "http.request", "body": body, "more_body": False}]
        disconnect = asyncio.Event()

        async def receive():
            if inbox:
                return inbox.pop()
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            messages.append(message)
            if message["type"] == "http.response.body" and len(messages) > 5:
                disconnect.set()

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
                 "headers": [(b"content-type", b"application/json")], "query_string": b"",
                 "http_version": "1.1", "scheme": "http", "server": ("t", 80),
                 "client": ("c", 1), "root_path": ""}
        await app(scope, receive, send)

    asyncio.run(run())
    assert len(engine.aborted) == 1
    assert len(messages) < 100


def test_engine_error_at_admission_is_a_status(make_client):
    client, engine = make_client(ANSWER)

    async def boom(request):
        raise EngineDeadError("gone")
        yield  # pragma: no cover

    engine.generate = boom
    for stream in (False, True):
        resp = client.post("/v1/chat/completions",
                           json={"model": MODEL, "messages": USER, "stream": stream})
        assert resp.status_code == 503


def _tokens(client, messages, **kw) -> list[int]:
    resp = client.post("/tokenize", json={"messages": messages, **kw})
    assert resp.status_code == 200, resp.text
    return resp.json()["tokens"]


def test_content_parts_render_like_a_string(make_client):
    client, _ = make_client()
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is 2 + 2?"}]}]
    plain = [{"role": "user", "content": "What is 2 + 2?"}]
    assert _tokens(client, parts) == _tokens(client, plain)


@pytest.mark.parametrize("spelling", ["reasoning", "reasoning_content"])
def test_input_reasoning_accepted_in_both_spellings(make_client, tok, spelling):
    client, _ = make_client()
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, spelling: "Look it up.",
                 "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "rain"}]
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    text = tok.decode(_tokens(client, messages, tools=tools))
    assert "<|channel|>analysis<|message|>Look it up.<|end|>" in text


@pytest.mark.parametrize(("sent", "param"), [
    ({"max_completion_tokens": 100}, "max_completion_tokens"),
    ({"max_tokens": 100}, "max_tokens"),
    ({}, "messages"),
])
def test_context_error_names_what_was_sent(make_client, sent, param):
    """issue 14.12: max_tokens was named when max_completion_tokens or nothing was sent."""
    client, engine = make_client(ANSWER)
    engine.max_model_len = 120
    long = [{"role": "user", "content": "word " * 200}] if not sent else USER
    resp = client.post("/v1/chat/completions", json={"model": MODEL, "messages": long, **sent})
    err = resp.json()["error"]
    assert resp.status_code == 400 and err["param"] == param
    other = {"max_tokens", "max_completion_tokens"} - {param}
    assert not any(f" {name} " in err["message"] for name in other), err["message"]


def test_completions_default_max_tokens_is_lowered_to_what_fits(make_client, tok):
    client, engine = make_client([5] * 40)
    engine.max_model_len = 20
    prompt = tok.encode("one two three four five six seven eight nine ten")
    assert 4 < len(prompt) < 20 - 4
    resp = client.post("/v1/completions", json={"model": MODEL, "prompt": prompt})
    assert resp.status_code == 200, resp.text
    assert engine.admitted[-1].sampling_params.max_tokens == 20 - len(prompt)
    resp = client.post("/v1/completions", json={"model": MODEL, "prompt": prompt,
                                                "max_tokens": 16})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "max_tokens"
    resp = client.post("/v1/completions", json={"model": MODEL, "prompt": [1] * 25})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"
