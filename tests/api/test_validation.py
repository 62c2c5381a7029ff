"""Every bound and type of the chat request: bad input is a 400 in OpenAI's shape naming the
parameter (never a 422 or 500); values on the bounds are accepted; defaults reach the engine."""

from __future__ import annotations

import pytest

MODEL = "gpt-oss-test"  # as in conftest.py

USER = [{"role": "user", "content": "hi"}]
BASE = {"model": MODEL, "messages": USER}
MISSING = object()

# (case id, field, bad value, param the error must name)
BAD = [
    ("model-missing", "model", MISSING, "model"),
    ("model-type", "model", 3, "model"),
    ("messages-missing", "messages", MISSING, "messages"),
    ("messages-empty", "messages", [], "messages"),
    ("messages-type", "messages", "hi", "messages"),
    ("role-missing", "messages", [{"content": "x"}], "messages.0.role"),
    ("role-unknown", "messages", [{"role": "robot", "content": "x"}], "messages.0.role"),
    ("content-missing", "messages", [{"role": "user"}], "messages.0"),
    ("content-type", "messages", [{"role": "user", "content": 5}], "messages.0.content"),
    ("content-part-image", "messages",
     [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages.0.content.0.type"),
    ("max_tokens-zero", "max_tokens", 0, "max_tokens"),
    ("max_tokens-string", "max_tokens", "10", "max_tokens"),
    ("max_tokens-float", "max_tokens", 1.5, "max_tokens"),
    ("max_tokens-bool", "max_tokens", True, "max_tokens"),
    ("max_completion_tokens-zero", "max_completion_tokens", 0, "max_completion_tokens"),
    ("temperature-low", "temperature", -0.01, "temperature"),
    ("temperature-high", "temperature", 2.01, "temperature"),
    ("temperature-string", "temperature", "0.5", "temperature"),
    ("top_p-low", "top_p", -0.01, "top_p"),
    ("top_p-high", "top_p", 1.01, "top_p"),
    ("top_p-string", "top_p", "1", "top_p"),
    ("stop-five", "stop", ["a", "b", "c", "d", "e"], "stop"),
    ("stop-int", "stop", 5, "stop"),
    ("stop-list-int", "stop", ["a", 5], "stop.1"),
    ("frequency_penalty-low", "frequency_penalty", -2.01, "frequency_penalty"),
    ("frequency_penalty-high", "frequency_penalty", 2.01, "frequency_penalty"),
    ("frequency_penalty-string", "frequency_penalty", "1", "frequency_penalty"),
    ("presence_penalty-low", "presence_penalty", -2.01, "presence_penalty"),
    ("presence_penalty-high", "presence_penalty", 2.01, "presence_penalty"),
    ("presence_penalty-string", "presence_penalty", "1", "presence_penalty"),
    ("stream-string", "stream", "yes", "stream"),
    ("n-zero", "n", 0, "n"),
    ("n-string", "n", "2", "n"),
    ("seed-string", "seed", "1", "seed"),
    ("seed-float", "seed", 1.5, "seed"),
    ("logprobs-string", "logprobs", "true", "logprobs"),
    ("top_logprobs-high", "top_logprobs", 21, "top_logprobs"),
    ("top_logprobs-negative", "top_logprobs", -1, "top_logprobs"),
    ("top_logprobs-without-logprobs", "top_logprobs", 2, "top_logprobs"),
    ("logit_bias-key", "logit_bias", {"abc": 1}, "logit_bias"),
    ("logit_bias-high", "logit_bias", {"5": 101}, "logit_bias.5"),
    ("logit_bias-value-type", "logit_bias", {"5": "a"}, "logit_bias.5"),
    ("logit_bias-outside-vocab", "logit_bias", {"999999": 1}, "logit_bias"),
    ("stream_options-without-stream", "stream_options", {"include_usage": True}, "stream_options"),
    ("reasoning_effort-unknown", "reasoning_effort", "extreme", "reasoning_effort"),
    ("tools-type", "tools", [{"type": "retrieval"}], "tools.0.type"),
    ("tools-no-name", "tools", [{"type": "function", "function": {}}], "tools.0.function.name"),
    ("tool_choice-unknown", "tool_choice", "bogus", "tool_choice"),
    ("tool_choice-required", "tool_choice", "required", "tool_choice"),
    ("tool_choice-named", "tool_choice", {"type": "function", "function": {"name": "f"}},
     "tool_choice"),
    ("response_format-schema-bad-type", "response_format",
     {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wat"}}},
     "response_format.json_schema.schema"),
    ("response_format-schema-unsupported-keyword", "response_format",
     {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array",
                                                                    "uniqueItems": True}}},
     "response_format.json_schema.schema"),
    ("response_format-schema-bad-bound", "response_format",
     {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string",
                                                                    "maxLength": -1}}},
     "response_format.json_schema.schema"),
    ("response_format-schema-bad-ref", "response_format",
     {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}},
     "response_format.json_schema.schema"),
    ("tools-bad-parameters", "tools",
     [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                  "required": "a"}}}],
     "tools[0].function.parameters"),
    ("structured_outputs-two", "structured_outputs", {"regex": "a", "choice": ["a"]},
     "structured_outputs"),
    ("structured_outputs-bad-regex", "structured_outputs", {"regex": "("},
     "structured_outputs.regex"),
    ("max_reasoning_tokens-negative", "max_reasoning_tokens", -1, "max_reasoning_tokens"),
    ("response_format-unknown", "response_format", {"type": "xml"}, "response_format.type"),
    ("top_k-low", "top_k", -2, "top_k"),
    ("min_p-high", "min_p", 1.5, "min_p"),
    ("min_tokens-negative", "min_tokens", -1, "min_tokens"),
    ("min_tokens-over-max", "min_tokens", 2000, "min_tokens"),
    ("ignore_eos-string", "ignore_eos", "x", "ignore_eos"),
    ("user-type", "user", 5, "user"),
    # issue 14.1: numbers the engine cannot hold are refused at the schema
    ("top_k-huge", "top_k", 10**309, "top_k"),
    ("min_tokens-huge", "min_tokens", 2**31, "min_tokens"),
    ("max_tokens-huge", "max_tokens", 2**31, "max_tokens"),
    ("max_completion_tokens-huge", "max_completion_tokens", 10**30, "max_completion_tokens"),
    ("n-huge", "n", 10**20, "n"),
    ("seed-huge", "seed", 2**63, "seed"),
    ("logit_bias-huge", "logit_bias", {"5": 10**309}, "logit_bias.5"),
    # issue 14.2: keys that str.isdigit() accepts but int() refuses
    ("logit_bias-superscript", "logit_bias", {"\u00b2": 1}, "logit_bias"),
    ("logit_bias-circled", "logit_bias", {"\u2460": 1}, "logit_bias"),
    ("logit_bias-4301-digits", "logit_bias", {"1" * 4301: 1}, "logit_bias"),
    ("logit_bias-negative", "logit_bias", {"-5": 1}, "logit_bias"),
]


def _body(field: str, value) -> dict:
    body = dict(BASE)
    if value is MISSING:
        body.pop(field)
    else:
        body[field] = value
    return body


def _assert_400(resp, param: str | None) -> None:
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert err["message"]
    assert set(err) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(("field", "value", "param"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_value_is_400_naming_param(make_client, field, value, param):
    client, engine = make_client("<|channel|>final<|message|>ok<|return|>")
    _assert_400(client.post("/v1/chat/completions", json=_body(field, value)), param)
    assert engine.admitted == []


@pytest.mark.parametrize("raw", [b"{", b"not json", b"", b'{"model": "x",}'])
def test_malformed_json_is_400(make_client, raw):
    client, _ = make_client()
    resp = client.post("/v1/chat/completions", content=raw,
                       headers={"content-type": "application/json"})
    _assert_400(resp, None)


def test_body_must_be_an_object(make_client):
    client, _ = make_client()
    _assert_400(client.post("/v1/chat/completions", json=[BASE]), None)


GOOD = [
    ("temperature", 0.0), ("temperature", 2), ("top_p", 0), ("top_p", 1.0),
    ("frequency_penalty", -2), ("frequency_penalty", 2.0), ("presence_penalty", -2.0),
    ("presence_penalty", 2), ("stop", ["a", "b", "c", "d"]), ("stop", "a"), ("max_tokens", 1),
    ("max_completion_tokens", 1), ("n", 2), ("seed", -5), ("top_k", -1), ("min_p", 1.0),
    ("reasoning_effort", "low"), ("reasoning_effort", "high"), ("tool_choice", "none"),
    ("tool_choice", "auto"), ("response_format", {"type": "text"}), ("logit_bias", {"5": -100}),
]


@pytest.mark.parametrize(("field", "value"), GOOD, ids=[f"{f}={v}" for f, v in GOOD])
def test_values_on_the_bounds_are_accepted(make_client, field, value):
    client, engine = make_client("<|channel|>final<|message|>ok<|return|>")
    resp = client.post("/v1/chat/completions", json=_body(field, value))
    assert resp.status_code == 200, resp.text
    assert len(engine.admitted) == 1


def test_top_logprobs_20_accepted(make_client):
    client, engine = make_client("<|channel|>final<|message|>ok<|return|>")
    body = {**BASE, "logprobs": True, "top_logprobs": 20}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert engine.admitted[0].sampling_params.logprobs == 20


def test_defaults_reach_the_engine(make_client):
    client, engine = make_client("<|channel|>final<|message|>ok<|return|>")
    assert client.post("/v1/chat/completions", json=BASE).status_code == 200
    p = engine.admitted[0].sampling_params
    assert (p.temperature, p.top_p, p.max_tokens, p.n) == (0.7, 1.0, 1024, 1)
    assert (p.frequency_penalty, p.presence_penalty, p.logprobs, p.seed) == (0.0, 0.0, None, None)
    assert set(p.stop_token_ids) == {200002, 200012}


def test_the_temperature_defaults_are_the_documented_ones(make_client):
    """README: chat's default temperature is 0.7 (as the `chat` command's), completions' is
    OpenAI's 1.0, as a bare SamplingParams'."""
    from gptoss_serve.cli import build_parser
    from gptoss_serve.engine.request import SamplingParams

    client, engine = make_client("<|channel|>final<|message|>ok<|return|>")
    body = {"model": BASE["model"], "prompt": "hi", "max_tokens": 2}
    assert client.post("/v1/completions", json=body).status_code == 200
    assert engine.admitted[0].sampling_params.temperature == 1.0 == SamplingParams().temperature
    args = build_parser().parse_args(["chat", "--model", "x"])
    assert args.temperature == 0.7


def test_fields_reach_the_engine(make_client):
    client, engine = make_client("<|channel|>final<|message|>ok<|return|>")
    body = {**BASE, "temperature": 0.3, "top_p": 0.9, "max_completion_tokens": 7, "max_tokens": 9,
            "seed": 11, "top_k": 5, "min_p": 0.1, "frequency_penalty": 0.5,
            "presence_penalty": -0.5, "logit_bias": {"17": 3.0}, "ignore_eos": True,
            "min_tokens": 2, "n": 3}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    p = engine.admitted[0].sampling_params
    assert (p.temperature, p.top_p, p.max_tokens, p.seed, p.top_k, p.min_p) == (
        0.3, 0.9, 7, 11, 5, 0.1)
    assert (p.frequency_penalty, p.presence_penalty, p.logit_bias) == (0.5, -0.5, ((17, 3.0),))
    assert (p.ignore_eos, p.min_tokens, p.n) == (True, 2, 3)


def test_the_engine_killing_completion_is_a_400(make_client):
    """issue 14.1's exact body: top_k = 1 followed by 309 zeros."""
    client, engine = make_client("ok")
    body = f'{{"model":"{MODEL}","prompt":"hi","max_tokens":2,"top_k":1{"0" * 309},"top_p":0.5}}'
    resp = client.post("/v1/completions", content=body,
                       headers={"content-type": "application/json"})
    _assert_400(resp, "top_k")
    assert engine.admitted == []

