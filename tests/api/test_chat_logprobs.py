"""Chat logprobs and prompt streaming when the model writes no harmony header (issue 14.10):
every generated content token has its logprob entry, in order; streaming starts with the first
token and its logprobs equal the non-streamed ones."""

from __future__ import annotations

import json

import pytest

from gptoss_serve.harmony.parser import ContentDelta, StreamParser

MODEL = "gpt-oss-test"
TEXT = "The quick brown fox jumps over the lazy dog, again and again, " * 8


def _body(max_tokens: int) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens, "logprobs": True, "top_logprobs": 2}


def _chat(client, max_tokens: int):
    return client.post("/v1/chat/completions", json=_body(max_tokens))


@pytest.mark.parametrize("max_tokens", [1, 3, 100])
def test_every_content_token_of_headerless_output_has_its_logprob(make_client, tok, max_tokens):
    ids = tok.encode(TEXT)[:max_tokens]
    assert len(ids) == max_tokens
    client, _ = make_client(ids + [0] * 5)
    body = _chat(client, max_tokens).json()
    entries = body["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in entries] == [tok.decode([t]) for t in ids]
    assert body["choices"][0]["message"]["content"] == tok.decode(ids).lstrip()


def test_headed_output_logprobs_cover_exactly_the_answer(make_client, ids, tok):
    answer = tok.encode(TEXT)[:60]
    client, _ = make_client(ids("<|channel|>analysis<|message|>Think.<|end|><|start|>assistant"
                                "<|channel|>final<|message|>") + answer + ids("<|return|>"))
    body = _chat(client, 200).json()
    entries = body["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in entries] == [tok.decode([t]) for t in answer]


def test_headerless_stream_starts_at_once_and_equals_the_body(make_client, tok):
    ids = tok.encode(TEXT)[:40]
    client, _ = make_client(ids)
    plain = _chat(client, 40).json()["choices"][0]
    with client.stream("POST", "/v1/chat/completions",
                       json={**_body(40), "stream": True}) as resp:
        chunks = [json.loads(line[6:]) for line in resp.iter_lines()
                  if line.startswith("data: {")]
    deltas = [c["choices"][0] for c in chunks if c["choices"]]
    # chunk 0 carries the role; chunk 1 is the first token's text, not 48 tokens later
    assert deltas[1]["delta"].get("content") == tok.decode(ids[:1]).lstrip()
    assert "".join(d["delta"].get("content") or "" for d in deltas) == plain["message"]["content"]
    streamed = [e for d in deltas if d["logprobs"] for e in d["logprobs"]["content"]]
    assert streamed == plain["logprobs"]["content"]


def test_parser_text_without_header_is_content_from_its_first_token(tok):
    parser = StreamParser()
    first = parser.feed(tok.encode("Hello")[:1])
    assert [e.text for e in first if isinstance(e, ContentDelta)] == ["Hello"]


@pytest.mark.parametrize("text", ["assistant is what I am and will stay for a long while now",
                                  "user " * 12])
def test_a_role_word_without_marker_becomes_content_within_a_few_tokens(tok, text):
    parser = StreamParser()
    ids = tok.encode(text)
    seen = []
    for i, t in enumerate(ids):
        if any(isinstance(e, ContentDelta) for e in parser.feed([t])):
            seen.append(i)
    assert seen and seen[0] <= 9
    assert parser.anomalies["no_header"] == 1
