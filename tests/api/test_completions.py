"""POST /v1/completions with a FakeEngine: prompt forms, raw text (special ids never shown),
echo, legacy logprobs, stop strings, n, streaming == non-streaming, bad input."""

from __future__ import annotations

import openai
import pytest

MODEL = "gpt-oss-test"
TEXT = "The quick brown fox jumps over the lazy dog"


def _client(oai, tok, text=TEXT, tail="<|return|>", **kw):
    return oai(tok.encode(text) + [tok.encode_special(tail)], **kw)


def test_string_prompt(oai, tok):
    client, engine = _client(oai, tok)
    out = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=50)
    assert out.choices[0].text == TEXT and out.choices[0].finish_reason == "stop"
    assert list(engine.admitted[0].prompt_token_ids) == tok.encode("Once upon")
    assert out.usage.prompt_tokens == len(tok.encode("Once upon"))
    assert out.usage.completion_tokens == len(tok.encode(TEXT)) + 1


def test_default_max_tokens_is_16_and_length(oai, tok):
    client, engine = _client(oai, tok, text="word " * 40)
    out = client.completions.create(model=MODEL, prompt="x")
    assert engine.admitted[0].sampling_params.max_tokens == 16
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 16


def test_token_id_prompts_and_several_prompts(oai, tok):
    client, engine = _client(oai, tok)
    out = client.completions.create(model=MODEL, prompt=[[1, 2, 3], [4, 5]], max_tokens=50, n=2)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert {c.text for c in out.choices} == {TEXT}
    assert sorted(len(r.prompt_token_ids) for r in engine.admitted) == [2, 3]
    assert out.usage.prompt_tokens == 5
    client.completions.create(model=MODEL, prompt=["a b", "c"], max_tokens=50)
    assert [list(r.prompt_token_ids) for r in engine.admitted[2:]] == [tok.encode("a b"),
                                                                       tok.encode("c")]


def test_echo(oai, tok):
    client, _ = _client(oai, tok)
    out = client.completions.create(model=MODEL, prompt="Once upon", echo=True, max_tokens=50)
    assert out.choices[0].text == "Once upon" + TEXT


def test_special_tokens_never_in_text(oai, tok):
    ids = tok.encode("a") + [tok.encode_special("<|channel|>")] + tok.encode("b")
    client, _ = oai(ids + [tok.encode_special("<|return|>")])
    out = client.completions.create(model=MODEL, prompt="x", max_tokens=50)
    assert out.choices[0].text == "ab"


def test_stop_strings_and_stream_parity(oai, tok):
    client, _ = _client(oai, tok)
    args = {"model": MODEL, "prompt": "x", "max_tokens": 50, "stop": ["s over"]}
    out = client.completions.create(**args)
    assert out.choices[0].text == "The quick brown fox jump"
    chunks = list(client.completions.create(**args, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == out.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.model_dump() == out.usage.model_dump()


def test_logprobs(oai, tok):
    client, _ = _client(oai, tok)
    out = client.completions.create(model=MODEL, prompt="x", max_tokens=50, logprobs=2)
    lp = out.choices[0].logprobs
    assert "".join(lp.tokens) == TEXT
    assert len(lp.token_logprobs) == len(lp.tokens) == len(lp.top_logprobs)
    assert all(len(t) == 2 for t in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    # each offset is where its token starts in the returned text
    assert all(TEXT.startswith(t, o) for t, o in zip(lp.tokens, lp.text_offset, strict=True))
    assert lp.text_offset[-1] + len(lp.tokens[-1]) == len(TEXT)


@pytest.mark.parametrize(("body", "param"), [
    ({"prompt": []}, "prompt"),
    ({"prompt": [-1]}, "prompt.0"),
    ({"prompt": [10**7]}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "temperature": 3}, "temperature"),
    ({}, "prompt"),
])
def test_bad_input(make_client, body, param):
    client, _ = make_client()
    resp = client.post("/v1/completions", json={"model": MODEL, **body})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_unknown_model(oai, tok):
    client, _ = _client(oai, tok)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x")
