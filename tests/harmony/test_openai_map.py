"""Parser events -> OpenAI chat fields: routing, tool calls, finish reasons, stream parity."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss_serve.harmony.openai_map import ChatMapper, declared_tool_name
from gptoss_serve.harmony.parser import SPECIAL_NAME_RE

TOOLS = ("get_weather", "shell")


@dataclass
class Message:
    """The fields a client rebuilds from the deltas (`concat`), and the mapper's open_call."""

    content: str | None
    reasoning: str | None
    tool_calls: list[dict]
    open_call: bool


def stream(token_ids, tools=TOOLS, chunk=1, reason="stop"):
    """(deltas, the message they make, finish_reason) feeding `chunk` tokens at a time."""
    mapper = ChatMapper(tools)
    deltas = []
    for i in range(0, len(token_ids), chunk):
        deltas += mapper.feed(token_ids[i:i + chunk])
    deltas += mapper.flush()
    finish = mapper.finish(reason)
    return deltas, Message(*concat(deltas), mapper.open_call), finish


def concat(deltas):
    """Rebuild the message from streamed deltas the way an OpenAI client does."""
    content = "".join(d.content or "" for d in deltas) or None
    reasoning = "".join(d.reasoning or "" for d in deltas) or None
    calls: dict[int, dict] = {}
    for d in deltas:
        for c in d.tool_calls:
            if c.id is not None:
                assert c.index not in calls and c.name
                calls[c.index] = {"id": c.id, "name": c.name, "arguments": ""}
            calls[c.index]["arguments"] += c.arguments
    return content, reasoning, [calls[i] for i in sorted(calls)]


def test_analysis_to_reasoning_final_to_content(ids):
    deltas, got, reason = stream(ids(
        "<|channel|>analysis<|message|>Think.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Answer.<|return|>"))
    assert (got.reasoning, got.content, got.tool_calls, reason) == (
        "Think.", "Answer.", [], "stop")


def test_preamble_and_tool_call(ids):
    deltas, got, reason = stream(ids(
        "<|channel|>commentary<|message|>Let me check.<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
        '<|message|>{"city": "Paris"}<|call|>'))
    assert got.content == "Let me check." and reason == "tool_calls"
    (call,) = got.tool_calls
    assert call["name"] == "get_weather" and call["arguments"] == '{"city": "Paris"}'
    assert call["id"].startswith("call_")
    first = next(d for d in deltas if d.tool_calls).tool_calls[0]
    assert (first.index, first.id, first.name) == (0, call["id"], "get_weather")


def test_arguments_kept_exactly_as_written(ids):
    raw = '{ "city" :"Paris",\n  "unit":"c" }'
    _, got, _ = stream(ids(f"<|channel|>commentary to=functions.get_weather<|message|>{raw}"
                              "<|call|>"))
    assert got.tool_calls[0]["arguments"] == raw


def test_two_calls_get_stable_indexes(ids):
    deltas, got, reason = stream(ids(
        "<|channel|>commentary to=functions.shell json<|message|>{}<|end|>"
        "<|start|>assistant<|channel|>commentary to=functions.get_weather json<|message|>"
        '{"a":1}<|call|>'), chunk=3)
    assert [c["name"] for c in got.tool_calls] == ["shell", "get_weather"]
    assert len({c["id"] for c in got.tool_calls}) == 2 and reason == "tool_calls"


def test_call_closed_by_return_is_a_call(ids):
    _, got, reason = stream(ids(
        "<|channel|>commentary to=functions.shell <|constrain|>json<|message|>{}<|return|>"))
    assert got.tool_calls[0]["name"] == "shell" and reason == "tool_calls"


def test_unknown_function_is_text(ids):
    _, got, reason = stream(ids(
        '<|channel|>commentary to=functions.delete_all json<|message|>{"x": 1}<|call|>'))
    assert got.tool_calls == [] and got.content == '{"x": 1}' and reason == "stop"


def test_no_tools_declared_means_text(ids):
    _, got, _ = stream(ids("<|channel|>commentary to=functions.get_weather<|message|>{}"
                              "<|call|>"), tools=())
    assert got.tool_calls == [] and got.content == "{}"


@pytest.mark.parametrize(("channel", "field"), [("analysis", "reasoning"),
                                                ("commentary", "content")])
def test_builtin_recipient_is_text(channel, field, ids):
    _, got, _ = stream(ids(f"<|channel|>{channel} to=browser.search code<|message|>"
                              '{"query": "x"}<|call|>'))
    assert got.tool_calls == [] and getattr(got, field) == '{"query": "x"}'


def test_glued_content_type_is_sanitised(ids):
    _, got, _ = stream(ids("<|channel|>commentary to=functions.shelljson<|message|>"
                              '{"cmd": "ls"}<|call|>'))
    assert got.tool_calls[0]["name"] == "shell"


def test_sanitising_rules():
    declared = {"get_weather", "shell"}
    assert declared_tool_name("functions.get_weather", declared) == "get_weather"
    assert declared_tool_name("get_weather", declared) == "get_weather"
    assert declared_tool_name('functions.shell"', declared) == "shell"
    assert declared_tool_name("python", declared) is None
    assert declared_tool_name("browser.shell", declared) is None
    assert declared_tool_name("functions.shellfish", declared) is None


def test_empty_finished_call_gets_empty_object(ids):
    deltas, got, _ = stream(ids("<|channel|>commentary to=functions.shell<|message|><|call|>"))
    assert got.tool_calls[0]["arguments"] == "{}"


def test_call_cut_by_length_is_not_a_finished_call(ids):
    deltas, got, reason = stream(ids(
        '<|channel|>commentary to=functions.get_weather json<|message|>{"city": "Pa'),
        reason="length")
    assert reason == "length" and got.open_call
    assert got.tool_calls[0]["arguments"] == '{"city": "Pa'


def test_cut_mid_reasoning_surfaces_it(ids):
    _, got, reason = stream(ids("<|channel|>analysis<|message|>Half a thou"), reason="length")
    assert got.reasoning == "Half a thou" and reason == "length"


def test_several_messages_of_one_field_joined_in_stream(ids):
    deltas, got, _ = stream(ids(
        "<|channel|>analysis<|message|>one<|end|><|start|>assistant<|channel|>analysis"
        "<|message|>two<|end|><|start|>assistant<|channel|>commentary<|message|>pre<|end|>"
        "<|start|>assistant<|channel|>final<|message|>ans<|return|>"))
    assert (got.reasoning, got.content) == ("one\ntwo", "pre\nans")


def test_tools_offered_but_not_used(ids):
    _, got, reason = stream(ids("<|channel|>final<|message|>Just text.<|return|>"))
    assert (got.content, got.tool_calls, reason) == ("Just text.", [], "stop")


def test_half_a_character_comes_out_at_flush(tok):
    mapper = ChatMapper(TOOLS)
    emoji = [tok._enc.encode_single_token(bytes([b])) for b in "é".encode()]
    deltas = mapper.feed([200005] + tok.encode("final") + [200008] + emoji[:1])
    deltas += mapper.flush()
    assert mapper.finish("length") == "length" and concat(deltas)[0] == "\ufffd"


_IDS = st.lists(st.one_of(st.integers(0, 199997), st.sampled_from(
    list(range(199998, 200014)) + [35644, 17196, 12606, 316, 28, 44580, 3490])), max_size=60)


@settings(max_examples=200, deadline=None)
@given(_IDS, st.integers(2, 9), st.sampled_from(["stop", "length"]))
def test_random_streams_never_raise_or_leak(token_ids, chunk, reason):
    one = stream(token_ids, chunk=1, reason=reason)
    many = stream(token_ids, chunk=chunk, reason=reason)

    def without_ids(calls):
        return [(c["name"], c["arguments"]) for c in calls]

    assert (one[1].content, one[1].reasoning, without_ids(one[1].tool_calls), one[2]) == (
        many[1].content, many[1].reasoning, without_ids(many[1].tool_calls), many[2])
    values = [one[1].content, one[1].reasoning] + [
        v for c in one[1].tool_calls for v in (c["name"], c["arguments"])]
    assert not any(v and SPECIAL_NAME_RE.search(v) for v in values)
