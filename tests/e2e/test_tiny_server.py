"""End to end with the tiny random checkpoint on a real engine and real HTTP, through the
official openai client: chat (stream and not), usage, length, n, seeds, logprobs, stop strings,
stream/non-stream parity, 64 concurrent streams, and KV blocks released afterwards."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from e2e_support import MODEL, stream_matches_full, wait_until

USER = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def client(tiny_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_server.base_url + "/v1", api_key="x", max_retries=0)


def _no_blocks_in_use(engine) -> bool:
    s = engine.stats()
    return (s.full_blocks_used, s.sliding_blocks_used, s.num_running_requests) == (0, 0, 0)


def test_chat_non_streaming_and_usage(client, tiny_server):
    out = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=8,
                                         temperature=0)
    prompt = httpx.post(tiny_server.base_url + "/tokenize", json={"messages": USER}).json()
    assert out.usage.prompt_tokens == prompt["count"]
    assert 1 <= out.usage.completion_tokens <= 8
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.choices[0].finish_reason in ("stop", "length")
    msg = out.choices[0].message.model_dump()
    assert "<|" not in str(msg)


def test_length(client):
    out = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5,
                                         extra_body={"ignore_eos": True})
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 5


@pytest.mark.parametrize("n", [1, 3])
def test_stream_equals_non_stream_greedy(client, n):
    args = {"model": MODEL, "messages": USER, "max_tokens": 12, "temperature": 0, "n": n,
            "extra_body": {"ignore_eos": True}}
    full, chunks, folded = stream_matches_full(client, **args)
    assert folded["usage"].model_dump() == full.usage.model_dump()
    assert chunks[0].choices[0].delta.role == "assistant"


def test_seeds_reproducible(client):
    args = {"model": "gpt-oss-tiny", "prompt": "Once upon a time", "max_tokens": 12,
            "temperature": 1.0, "seed": 1234, "extra_body": {"ignore_eos": True}}
    a = client.completions.create(**args)
    b = client.completions.create(**args)
    assert a.choices[0].text == b.choices[0].text
    c = client.completions.create(**{**args, "n": 2})
    assert len(c.choices) == 2


def test_logprobs_greedy_top1_is_chosen(client, tiny_server):
    out = client.completions.create(model=MODEL, prompt="Hello", max_tokens=6, temperature=0,
                                    logprobs=3, extra_body={"ignore_eos": True})
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) >= 1
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 3 and logprob <= 0
        assert max(top.values()) == pytest.approx(logprob, abs=1e-4)
        assert top.get(token) == pytest.approx(logprob, abs=1e-4)
    chat = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4,
                                          logprobs=True, top_logprobs=2)
    assert chat.choices[0].logprobs is not None


def test_stop_string_on_raw_text(client):
    args = {"model": MODEL, "prompt": "Once", "max_tokens": 24, "temperature": 0,
            "extra_body": {"ignore_eos": True}}
    text = client.completions.create(**args).choices[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    if not stop.strip():
        pytest.skip("random text has no usable middle")
    cut = client.completions.create(**args, stop=[stop]).choices[0]
    assert cut.text == text[: text.index(stop)] and cut.finish_reason == "stop"


def test_64_concurrent_streams_then_no_blocks_in_use(tiny_server):
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str | None, int]:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"stream {i}"}], max_tokens=4,
            stream=True, stream_options={"include_usage": True}, temperature=0,
            extra_body={"ignore_eos": True})
        reason, usage = None, 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                reason = chunk.choices[0].finish_reason
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        return reason, usage

    async def run() -> list[tuple[str | None, int]]:
        client = openai.AsyncOpenAI(base_url=tiny_server.base_url + "/v1", api_key="x",
                                    max_retries=0, http_client=httpx.AsyncClient(
                                        limits=httpx.Limits(max_connections=100), timeout=300))
        return await asyncio.gather(*(one(client, i) for i in range(64)))

    results = asyncio.run(run())
    assert results == [("length", 4)] * 64
    wait_until(lambda: _no_blocks_in_use(tiny_server.engine), "all KV blocks to be free")


def test_disconnect_frees_blocks(tiny_server):
    body = {"model": MODEL, "messages": USER, "stream": True, "max_tokens": 2000,
            "ignore_eos": True}
    with httpx.stream("POST", tiny_server.base_url + "/v1/chat/completions", json=body,
                      timeout=120) as resp:
        lines = resp.iter_lines()
        for _ in range(6):
            next(lines)
        assert tiny_server.engine.stats().num_running_requests == 1
    wait_until(lambda: _no_blocks_in_use(tiny_server.engine), "blocks freed after disconnect")


def _generated_total(base_url: str) -> float:
    text = httpx.get(base_url + "/metrics").text
    assert 'gptoss_kv_cache_usage{pool="full"}' in text
    rows = [ln for ln in text.splitlines() if ln.startswith("gptoss_generation_tokens_total")]
    assert rows, text
    return float(rows[0].split()[-1])


def test_metrics_after_traffic(tiny_server):
    """Its own traffic (not the tests before it): the generated-token counter grows by it."""
    before = _generated_total(tiny_server.base_url)
    body = {"model": MODEL, "messages": USER, "max_tokens": 5, "ignore_eos": True}
    out = httpx.post(tiny_server.base_url + "/v1/chat/completions", json=body, timeout=120)
    assert out.status_code == 200
    used = out.json()["usage"]["completion_tokens"]
    assert _generated_total(tiny_server.base_url) - before == used
