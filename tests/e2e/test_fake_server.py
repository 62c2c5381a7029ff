"""Over real HTTP with a FakeEngine (scripted harmony tokens) and the official openai client:
tool-call round trip, reasoning in both spellings, 401, 404, 429 under saturation, malformed
JSON, and a client disconnect that aborts the request."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from e2e_support import MODEL, wait_until

CALL = ("<|channel|>analysis<|message|>Need the weather.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"location": "Tokyo"}<|call|>')
ANSWER = ("<|channel|>analysis<|message|>It is sunny per the tool.<|end|>"
          "<|start|>assistant<|channel|>final<|message|>Sunny, 20 C.<|return|>")
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object",
                                          "properties": {"location": {"type": "string"}}}}}]
USER = {"role": "user", "content": "Weather in Tokyo?"}


def _client(running, key="unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=running.base_url + "/v1", api_key=key, max_retries=0)


def test_tool_round_trip(fake_server):
    first = fake_server(CALL)
    client = _client(first)
    out = client.chat.completions.create(model=MODEL, messages=[USER], tools=TOOLS)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    reasoning = choice.message.model_extra["reasoning"]
    # second turn: the assistant's call (with its reasoning) and the tool result go back
    history = [USER, {"role": "assistant", "content": None, "reasoning_content": reasoning,
                      "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_call_id": call.id, "content": '{"sunny": true}'}]
    second = fake_server(ANSWER)
    final = _client(second).chat.completions.create(model=MODEL, messages=history, tools=TOOLS)
    assert final.choices[0].message.content == "Sunny, 20 C."
    prompt = second.engine.admitted[0].prompt_token_ids
    from gptoss_serve.harmony.tokenizer import get_tokenizer

    text = get_tokenizer().decode(prompt)
    assert "functions.get_weather to=assistant" in text and '{"sunny": true}' in text
    assert '{"location": "Tokyo"}' in text


def test_reasoning_in_both_spellings(fake_server):
    client = _client(fake_server(ANSWER))
    msg = client.chat.completions.create(model=MODEL, messages=[USER]).choices[0].message
    assert msg.model_extra["reasoning"] == msg.model_extra["reasoning_content"]
    assert msg.model_extra["reasoning"] == "It is sunny per the tool."
    chunks = list(client.chat.completions.create(model=MODEL, messages=[USER], stream=True))
    extras = [c.choices[0].delta.model_extra for c in chunks if c.choices]
    assert "".join(e.get("reasoning") or "" for e in extras) == "It is sunny per the tool."
    assert "".join(e.get("reasoning_content") or "" for e in extras) == "It is sunny per the tool."


def test_401_and_404(fake_server):
    running = fake_server(ANSWER, api_key="k1")
    with pytest.raises(openai.AuthenticationError):
        _client(running, "wrong").chat.completions.create(model=MODEL, messages=[USER])
    with pytest.raises(openai.NotFoundError):
        _client(running, "k1").chat.completions.create(model="other", messages=[USER])
    assert _client(running, "k1").chat.completions.create(model=MODEL, messages=[USER]).choices


def test_malformed_json_over_http(fake_server):
    running = fake_server(ANSWER)
    resp = httpx.post(running.base_url + "/v1/chat/completions", content=b'{"model": ',
                      headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"


def test_429_when_saturated(fake_server):
    running = fake_server(ANSWER, max_queue=2)
    engine = running.engine
    engine.gate = asyncio.Event()  # every request waits until the gate opens

    async def scenario() -> list[object]:
        client = openai.AsyncOpenAI(base_url=running.base_url + "/v1", api_key="x",
                                    max_retries=0)
        held = [asyncio.ensure_future(client.chat.completions.create(model=MODEL,
                                                                     messages=[USER]))
                for _ in range(2)]
        await asyncio.to_thread(wait_until, lambda: engine.stats().num_waiting_requests == 2,
                                "two waiting requests")
        with pytest.raises(openai.RateLimitError) as info:
            await client.chat.completions.create(model=MODEL, messages=[USER])
        assert "saturated" in info.value.message
        running.loop.call_soon_threadsafe(engine.gate.set)
        return await asyncio.gather(*held)

    done = asyncio.run(scenario())
    assert [d.choices[0].message.content for d in done] == ["Sunny, 20 C."] * 2


def test_disconnect_aborts(fake_server):
    long = "<|channel|>final<|message|>" + "word " * 3000
    running = fake_server(long)
    body = {"model": MODEL, "messages": [USER], "stream": True, "max_tokens": 4000}
    with httpx.stream("POST", running.base_url + "/v1/chat/completions", json=body) as resp:
        lines = resp.iter_lines()
        first = [next(lines) for _ in range(6)]
    assert any(json.loads(x[6:])["choices"][0]["delta"].get("role") for x in first if x)
    wait_until(lambda: len(running.engine.aborted) == 1, "the request to be aborted")


def test_client_leaving_while_queued_aborts(fake_server):
    running = fake_server(ANSWER)
    engine = running.engine
    engine.gate = asyncio.Event()  # held in the queue: no first token ever comes
    for stream in (False, True):
        body = {"model": MODEL, "messages": [USER], "stream": stream}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(running.base_url + "/v1/chat/completions", json=body, timeout=0.5)
    wait_until(lambda: len(engine.aborted) == 2, "both queued requests to be aborted")
    wait_until(lambda: engine.stats().num_waiting_requests == 0, "the queue to empty")
