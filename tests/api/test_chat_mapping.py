"""Harmony -> OpenAI chat mapping through the whole API, with a FakeEngine replaying scripted
harmony tokens and the official `openai` client parsing every response and chunk.

Covers docs/guards.md 1-11: reasoning then final, preambles, one or more tool calls, a call cut by
length, malformed headers, control tokens never in any field, stream == non-stream.
"""

from __future__ import annotations

import json

import pytest
from openai.types.chat import ChatCompletionChunk

from gptoss_serve.api.testing import fold_stream, message_fields, without_ids

USER = [{"role": "user", "content": "What is the weather in Tokyo?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
MODEL = "gpt-oss-test"

REASON_FINAL = ("<|channel|>analysis<|message|>User asks 2+2. Simple.<|end|>"
                "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>")
PREAMBLE = ("<|channel|>commentary<|message|>Let me check.<|end|>"
            "<|start|>assistant<|channel|>final<|message|>Done.<|return|>")
ONE_CALL = ("<|channel|>analysis<|message|>Need the weather.<|end|>"
            "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
            '<|message|>{"location": "Tokyo"}<|call|>')
TWO_CALLS = ("<|channel|>commentary to=functions.get_weather <|constrain|>json"
             '<|message|>{"location": "Tokyo"}<|end|>'
             "<|start|>assistant to=functions.get_time<|channel|>commentary json"
             '<|message|>{"tz": "JST"}<|call|>')
MALFORMED = ("assistant<|channel|>commentary to=functions.get_weather<|constrain|>json"
             '<|message|>{"location": "Paris"}<|call|>')
UNKNOWN_TOOL = ("<|channel|>commentary to=functions.launch_rocket <|constrain|>json"
                '<|message|>{"now": true}<|call|>')
SCRIPTS = {"reason_final": REASON_FINAL, "preamble": PREAMBLE, "one_call": ONE_CALL,
           "malformed": MALFORMED, "unknown_tool": UNKNOWN_TOOL}


def _both(oai, script, tokens_per_step=1, **kw):
    """(non-streamed fields, folded streamed fields, chunks) for one script and request."""
    client, _ = oai(script, tokens_per_step=tokens_per_step)
    args = {"model": MODEL, "messages": USER, "tools": TOOLS, **kw}
    full = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(
        **args, stream=True, stream_options={"include_usage": True}))
    return full, fold_stream(chunks), chunks


def test_reasoning_then_final(oai, tok):
    full, _, _ = _both(oai, REASON_FINAL)
    msg = message_fields(full.choices[0])
    assert msg["reasoning"] == msg["reasoning_content"] == "User asks 2+2. Simple."
    assert msg["content"] == "2 + 2 = 4."
    assert msg["finish_reason"] == "stop" and not msg["tool_calls"]
    assert full.usage.completion_tokens == _count(tok, REASON_FINAL)
    details = full.usage.completion_tokens_details
    assert details.reasoning_tokens == len(tok.encode("User asks 2+2. Simple."))
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens


def _count(tok, text):
    from gptoss_serve.api.testing import script_ids

    return len(script_ids(tok, text))


def test_preamble_is_content(oai):
    full, _, _ = _both(oai, PREAMBLE)
    assert full.choices[0].message.content == "Let me check.\nDone."
    assert full.choices[0].finish_reason == "stop"


def test_one_tool_call(oai):
    full, folded, chunks = _both(oai, ONE_CALL)
    choice = full.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Tokyo"}
    assert folded["choices"][0]["finish_reason"] == "tool_calls"


def test_several_tool_calls_keep_order_and_index(oai):
    full, folded, chunks = _both(oai, TWO_CALLS, extra_body={"ignore_eos": True})
    calls = full.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"location": "Tokyo"},
                                                                  {"tz": "JST"}]
    assert len({c.id for c in calls}) == 2
    assert sorted(folded["choices"][0]["tool_calls"]) == [0, 1]
    assert full.choices[0].finish_reason == "tool_calls"


def test_first_tool_delta_has_index_id_type_name(oai):
    _, _, chunks = _both(oai, TWO_CALLS, extra_body={"ignore_eos": True})
    seen = set()
    for chunk in chunks:
        for c in chunk.choices:
            for call in c.delta.tool_calls or []:
                if call.index not in seen:
                    seen.add(call.index)
                    assert call.id and call.type == "function" and call.function.name
    assert seen == {0, 1}


@pytest.mark.parametrize("cut", [15, 25])  # inside the call's header; inside its arguments
def test_call_cut_by_length(oai, cut):
    full, folded, _ = _both(oai, ONE_CALL, max_tokens=cut)
    assert full.choices[0].finish_reason == "length"
    assert folded["choices"][0]["finish_reason"] == "length"
    assert without_ids(folded["choices"][0]) == without_ids(message_fields(full.choices[0]))
    calls = full.choices[0].message.tool_calls or []
    assert all(c.function.name == "get_weather" for c in calls)
    if cut == 25:  # the partial call is kept (it was streamed) but not finished: "length"
        assert calls[0].function.arguments == '{"location":'



def test_length_inside_reasoning(oai):
    full, _, _ = _both(oai, REASON_FINAL, max_tokens=4)
    assert full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == 4


def test_malformed_header_still_a_call(oai):
    full, _, _ = _both(oai, MALFORMED)
    (call,) = full.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}


def test_unknown_tool_is_text_not_a_call(oai):
    full, _, _ = _both(oai, UNKNOWN_TOOL)
    msg = full.choices[0].message
    assert not msg.tool_calls
    assert '{"now": true}' in msg.content
    assert full.choices[0].finish_reason == "stop"


def test_tools_offered_but_unused(oai):
    full, folded, _ = _both(oai, REASON_FINAL)
    msg = full.choices[0].message
    assert msg.content == "2 + 2 = 4." and not msg.tool_calls
    assert folded["choices"][0]["content"] == "2 + 2 = 4."


@pytest.mark.parametrize("name", sorted(SCRIPTS))
@pytest.mark.parametrize("tokens_per_step", [1, 4])
def test_stream_equals_non_stream(oai, name, tokens_per_step):
    full, folded, chunks = _both(oai, SCRIPTS[name], tokens_per_step=tokens_per_step)
    assert without_ids(folded["choices"][0]) == without_ids(message_fields(full.choices[0]))
    assert folded["usage"].model_dump() == full.usage.model_dump()
    assert len(folded["ids"]) == 1


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_no_control_tokens_in_any_field(oai, name):
    full, folded, _ = _both(oai, SCRIPTS[name], tokens_per_step=3)
    for fields in (message_fields(full.choices[0]), folded["choices"][0]):
        assert "<|" not in json.dumps(fields)


def test_stream_shape(oai, make_client):
    client, _ = make_client(REASON_FINAL)
    body = {"model": MODEL, "messages": USER, "stream": True,
            "stream_options": {"include_usage": True}}
    raw = client.post("/v1/chat/completions", json=body).text
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    for c in chunks:
        ChatCompletionChunk.model_validate(c)  # the openai client's own type
        assert c["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1


def test_reasoning_alias_can_be_switched_off(oai):
    client, _ = oai(REASON_FINAL, reasoning_content_alias=False)
    full = client.chat.completions.create(model=MODEL, messages=USER)
    extra = full.choices[0].message.model_extra
    assert extra["reasoning"] == "User asks 2+2. Simple." and "reasoning_content" not in extra
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, stream=True))
    assert not any("reasoning_content" in (c.choices[0].delta.model_extra or {})
                   for c in chunks if c.choices)


def test_stop_string_in_answer(oai):
    script = "<|channel|>final<|message|>Hello world. STOP here<|return|>"
    full, folded, _ = _both(oai, script, stop=["STOP"])
    assert full.choices[0].message.content == "Hello world. "
    assert folded["choices"][0]["content"] == "Hello world. "
    assert full.choices[0].finish_reason == "stop"


def test_stop_string_across_token_boundaries_streaming(oai, tok):
    script = "<|channel|>final<|message|>Hello wonderful world again<|return|>"
    assert len(tok.encode("lo wonderful w")) > 1
    _, folded, chunks = _both(oai, script, stop="lo wonderful w")
    assert folded["choices"][0]["content"] == "Hel"
    streamed = [c.choices[0].delta.content for c in chunks if c.choices]
    assert all("wonderful" not in (s or "") for s in streamed)


def test_stop_string_does_not_act_on_reasoning(oai):
    full, _, _ = _both(oai, REASON_FINAL, stop=["Simple"])
    assert full.choices[0].message.model_extra["reasoning"] == "User asks 2+2. Simple."
    assert full.choices[0].message.content == "2 + 2 = 4."


def test_n_choices(oai, ids):
    client, _ = oai("<|channel|>final<|message|>first<|return|>",
                    "<|channel|>final<|message|>second answer<|return|>")
    full = client.chat.completions.create(model=MODEL, messages=USER, n=2)
    assert [c.index for c in full.choices] == [0, 1]
    assert [c.message.content for c in full.choices] == ["first", "second answer"]
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, n=2, stream=True))
    folded = fold_stream(chunks)["choices"]
    assert [folded[i]["content"] for i in (0, 1)] == ["first", "second answer"]
    assert full.usage.completion_tokens == len(ids("first<|return|>") + ids(
        "second answer<|return|>")) + 2 * len(ids("<|channel|>final<|message|>"))


def test_logprobs_cover_answer_tokens(oai, tok):
    full, _, chunks = _both(oai, REASON_FINAL, logprobs=True, top_logprobs=3)
    entries = full.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == "2 + 2 = 4."
    assert all(len(e.top_logprobs) == 3 for e in entries)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content or []]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in entries]
