"""Constrained decoding end to end: the tiny random checkpoint behind real HTTP, driven by the
official openai client. `chat.completions.parse` with Pydantic models, json_object, named and
required tool calls, vLLM's structured_outputs on /v1/completions, streaming equal to
non-streaming for every constrained case, and 400s for bad schemas."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pytest
from e2e_support import MODEL, stream_matches_full
from pydantic import BaseModel, ConfigDict, Field

from gptoss_serve.api.testing import message_fields

USER = [{"role": "user", "content": "Plan a trip."}]
BUDGET = {"max_reasoning_tokens": 8}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                     "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["a"], "additionalProperties": False}}}


class Stop(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties false, as parse() sends
    city: str = Field(max_length=10)
    nights: int = Field(ge=1, le=9)


class Trip(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["beach", "city", "hike"]
    stops: list[Stop] = Field(min_length=1, max_length=2)
    booked: bool


@pytest.fixture(scope="module")
def client(tiny_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_server.base_url + "/v1", api_key="x", max_retries=0)


def test_parse_with_pydantic(client):
    for seed in range(3):
        out = client.chat.completions.parse(model=MODEL, messages=USER, response_format=Trip,
                                            max_tokens=200, temperature=1.0, seed=seed,
                                            extra_body=BUDGET)
        choice = out.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Trip)
        assert Trip.model_validate_json(choice.message.content) == choice.message.parsed


def _same_stream(client, **args) -> dict:
    full, _, folded = stream_matches_full(client, **args)
    # the second request may find more of its prompt in the prefix cache
    assert (folded["usage"].model_dump(exclude={"prompt_tokens_details"})
            == full.usage.model_dump(exclude={"prompt_tokens_details"}))
    return [message_fields(c) for c in full.choices]


@pytest.mark.parametrize("fmt", ["json_object", "json_schema"])
def test_response_format_stream_equals_non_stream(client, fmt):
    schema = Trip.model_json_schema()
    rf = {"type": "json_object"} if fmt == "json_object" else {
        "type": "json_schema", "json_schema": {"name": "trip", "schema": schema, "strict": True}}
    fields = _same_stream(client, model=MODEL, messages=USER, response_format=rf, max_tokens=200,
                          temperature=1.0, seed=1, n=2, extra_body=BUDGET)
    for choice in fields:
        assert choice["finish_reason"] == "stop"
        value = json.loads(choice["content"])
        if fmt == "json_object":
            assert isinstance(value, dict)
        else:
            Trip.model_validate(value)


def test_chat_structured_outputs_choice(client):
    so = {"structured_outputs": {"choice": ["yes", "no", "maybe later"]}, **BUDGET}
    fields = _same_stream(client, model=MODEL, messages=USER, max_tokens=40, temperature=1.0,
                          seed=2, extra_body=so)
    assert fields[0]["finish_reason"] == "stop"
    assert fields[0]["content"] in ("yes", "no", "maybe later")


@pytest.mark.parametrize("choice", ["required", "get_weather", "add"])
def test_tool_choice_stream_equals_non_stream(client, choice):
    tool_choice = choice if choice == "required" else {"type": "function",
                                                       "function": {"name": choice}}
    fields = _same_stream(client, model=MODEL, messages=USER, tools=[WEATHER, ADD],
                          tool_choice=tool_choice, parallel_tool_calls=False, max_tokens=120,
                          temperature=1.0, seed=3, extra_body=BUDGET)
    assert fields[0]["finish_reason"] == "tool_calls"
    assert len(fields[0]["tool_calls"]) == 1
    call = fields[0]["tool_calls"][0]
    assert choice == "required" or call["name"] == choice
    params = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}
    jsonschema.validate(json.loads(call["arguments"]), params[call["name"]])


def test_completions_structured_outputs(client):
    so = {"structured_outputs": {"regex": r"[a-z]{2,6}@[a-z]{2,6}\.(com|org)"}}
    args = {"model": MODEL, "prompt": "Email:", "max_tokens": 30, "temperature": 1.0, "seed": 5,
            "extra_body": so}
    full = client.completions.create(**args)
    streamed = list(client.completions.create(**args, stream=True))
    text = full.choices[0].text
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text
    if full.choices[0].finish_reason == "stop":
        import re
        assert re.fullmatch(r"[a-z]{2,6}@[a-z]{2,6}\.(com|org)", text), text
    rf = {"type": "json_schema", "json_schema": {"name": "n", "schema": {
        "type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["n"], "additionalProperties": False}}}
    out = client.completions.create(model=MODEL, prompt="JSON:", max_tokens=30, temperature=0,
                                    extra_body={"response_format": rf})
    assert out.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(out.choices[0].text), rf["json_schema"]["schema"])


@pytest.mark.parametrize(("kw", "param"), [
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}}},
     "response_format.json_schema.schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"minLength": "2"}}}}}]},
     "tools[0].function.parameters"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
])
def test_bad_schema_is_400(client, kw, param):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4, **kw)
    assert exc.value.status_code == 400
    assert exc.value.body["param"] == param
