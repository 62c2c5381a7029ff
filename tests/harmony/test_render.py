"""Renderer: token-identical to openai-harmony on a corpus; CoT drop rule; errors; round trip."""

from __future__ import annotations

import json

import pytest
from render_corpus import CASES, WEATHER

from gptoss_serve.harmony.openai_map import ChatMapper
from gptoss_serve.harmony.render import (
    HarmonyRenderError,
    RenderOptions,
    declared_function_names,
    render_chat,
)

EFFORT_NAMES = {"low": "LOW", "medium": "MEDIUM", "high": "HIGH"}


def _text(content):
    """Instructions (system/developer text) are one string in openai-harmony: parts back to
    back, as every other message's parts render (see _message)."""
    if isinstance(content, list):
        return "".join(part["text"] for part in content)
    return content


def _message(author, content, H):
    """A message with one openai-harmony TextContent per text part: the oracle joins them.
    `author`: a Role, or an Author for a named one (tools)."""
    parts = content if isinstance(content, list) else [{"text": content}]
    if isinstance(author, H.Role):
        msg = H.Message.from_role_and_content(author, parts[0]["text"])
    else:
        msg = H.Message.from_author_and_content(author, parts[0]["text"])
    for part in parts[1:]:
        msg = msg.adding_content(H.TextContent(text=part["text"]))
    return msg


def _response_format_text(rf):
    """docs/model-facts.md §5.10 written out by hand for the test."""
    if rf is None or rf["type"] == "text":
        return None
    if rf["type"] == "json_object":
        return '# Response Formats\n\n## json_object\n\n{"type":"object"}'
    spec = rf["json_schema"]
    desc = f"// {spec['description']}\n" if spec.get("description") else ""
    schema = json.dumps(spec.get("schema", {}), separators=(",", ":"), ensure_ascii=False)
    return f"# Response Formats\n\n## {spec['name']}\n\n{desc}{schema}"


def _assistant(msg, call_names, H):
    out = []
    reasoning = msg.get("reasoning") or msg.get("reasoning_content")
    if reasoning:
        out.append(H.Message.from_role_and_content(H.Role.ASSISTANT, reasoning)
                   .with_channel("analysis"))
    if not msg.get("tool_calls"):
        if msg.get("content") is not None:
            out.append(_message(H.Role.ASSISTANT, msg["content"], H)
                       .with_channel("final"))
        return out
    if msg.get("content"):
        out.append(_message(H.Role.ASSISTANT, msg["content"], H)
                   .with_channel("commentary"))
    for call in msg["tool_calls"]:
        call_names[call["id"]] = call["function"]["name"]
        out.append(H.Message.from_role_and_content(H.Role.ASSISTANT, call["function"]["arguments"])
                   .with_channel("commentary")
                   .with_recipient("functions." + call["function"]["name"])
                   .with_content_type("<|constrain|>json"))
    return out


def oracle_conversation(messages, opts):
    """Builds the openai-harmony Conversation by hand from the OpenAI-style case."""
    import openai_harmony as H

    system = H.SystemContent.new().with_reasoning_effort(
        H.ReasoningEffort[EFFORT_NAMES[opts.get("reasoning_effort", "medium")]])
    if opts.get("current_date"):
        system = system.with_conversation_start_date(opts["current_date"])
    for name in opts.get("builtin_tools", ()):
        system = system.with_tools(getattr(H.ToolNamespaceConfig, name)())
    out = [H.Message.from_role_and_content(H.Role.SYSTEM, system)]
    instructions = [_text(m["content"]) for m in messages if m["role"] in ("system", "developer")]
    rf_text = _response_format_text(opts.get("response_format"))
    instructions += [rf_text] if rf_text else []
    developer = H.DeveloperContent.new()
    if instructions:
        developer = developer.with_instructions("\n\n".join(instructions))
    if opts.get("tools"):
        developer = developer.with_function_tools([
            H.ToolDescription.new(t["function"]["name"], t["function"].get("description") or "",
                                  parameters=t["function"].get("parameters"))
            for t in opts["tools"]])
    if instructions or opts.get("tools"):
        out.append(H.Message.from_role_and_content(H.Role.DEVELOPER, developer))
    call_names: dict[str, str] = {}
    for msg in messages:
        if msg["role"] == "user":
            out.append(_message(H.Role.USER, msg["content"], H))
        elif msg["role"] == "assistant":
            out += _assistant(msg, call_names, H)
        elif msg["role"] == "tool":
            name = call_names.get(msg.get("tool_call_id")) or msg["name"]
            out.append(_message(H.Author.new(H.Role.TOOL, f"functions.{name}"), msg["content"], H)
                       .with_recipient("assistant").with_channel("commentary"))
    return H.Conversation.from_messages(out)


def test_corpus_size_and_coverage():
    assert len(CASES) >= 40
    options = [opts for _, _, opts in CASES]
    assert {o.get("reasoning_effort", "medium") for o in options} == {"low", "medium", "high"}
    assert any(o.get("builtin_tools") for o in options)
    assert any(o.get("response_format") for o in options)


@pytest.mark.parametrize(("name", "messages", "opts"), CASES, ids=[c[0] for c in CASES])
def test_token_identical_to_openai_harmony(name, messages, opts, oracle, tok):
    from openai_harmony import Role

    ours = render_chat(messages, RenderOptions(**opts))
    theirs = oracle.render_conversation_for_completion(
        oracle_conversation(messages, opts), Role.ASSISTANT)
    if ours.token_ids != theirs:
        assert tok.decode(ours.token_ids) == tok.decode(theirs)  # shows the text difference
    assert ours.token_ids == theirs
    assert set(ours.stop_token_ids) == set(oracle.stop_tokens_for_assistant_actions())


def test_prompt_ends_with_generation_prompt(tok):
    ids = render_chat([{"role": "user", "content": "x"}], RenderOptions()).token_ids
    assert ids[-2:] == [200006, 173781] and ids[0] == 200006


def _decoded(messages, tok, **opts):
    return tok.decode(render_chat(messages, RenderOptions(**opts)).token_ids)


def test_harmony_drop_rule_differs_from_facts(tok):
    """Facts §5.8 intends: drop ALL analysis of finished turns. openai-harmony (which we match)
    drops only analysis before the first final, and nothing while the last assistant message is a
    tool call."""
    two_turns = [
        {"role": "user", "content": "A"},
        {"role": "assistant", "reasoning": "THINK-ONE", "content": "one"},
        {"role": "user", "content": "B"},
        {"role": "assistant", "reasoning": "THINK-TWO", "content": "two"},
        {"role": "user", "content": "C"}]
    text = _decoded(two_turns, tok)
    assert "THINK-ONE" not in text  # same as §5.8
    assert "THINK-TWO" in text  # §5.8 would drop it
    in_tool_loop = [two_turns[0], two_turns[1], {"role": "user", "content": "weather?"},
                    {"role": "assistant", "reasoning": "THINK-CALL", "tool_calls": [{
                        "id": "c", "type": "function", "function": {
                            "name": "get_current_weather", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "c", "content": "sun"}]
    text = _decoded(in_tool_loop, tok, tools=[WEATHER])
    assert "THINK-CALL" in text  # same as §5.8: the unfinished tool loop keeps its analysis
    assert "THINK-ONE" in text  # §5.8 would drop the finished turn's analysis


@pytest.mark.parametrize(("messages", "opts", "param"), [
    ([], {}, "messages"),
    ([{"role": "wizard", "content": "x"}], {}, "messages[0].role"),
    ([{"role": "user"}], {}, "messages[0].content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], {},
     "messages[0].content[0]"),
    ([{"role": "user", "content": 5}], {}, "messages[0].content"),
    ([{"role": "tool", "tool_call_id": "nope", "content": "x"}], {}, "messages[0].tool_call_id"),
    ([{"role": "assistant", "tool_calls": [{"id": "a"}]}], {}, "messages[0].tool_calls[0]"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": ""}}]}], {},
     "messages[0].tool_calls[0].function.name"),
    ([{"role": "assistant", "reasoning": 3, "content": "x"}], {}, "messages[0].reasoning"),
    ([{"role": "user", "content": "x"}], {"reasoning_effort": "extreme"}, "reasoning_effort"),
    ([{"role": "user", "content": "x"}], {"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ([{"role": "user", "content": "x"}], {"builtin_tools": ("shell",)}, "tools"),
    ([{"role": "user", "content": "x"}], {"response_format": {"type": "yaml"}}, "response_format"),
])
def test_bad_input_is_a_400_naming_the_field(messages, opts, param):
    with pytest.raises(HarmonyRenderError) as info:
        render_chat(messages, RenderOptions(**opts))
    assert info.value.status == 400 and info.value.param == param


def test_every_assistant_shape_renders_as_openai_harmony(oracle):
    """Each combination of content, reasoning and tool_calls renders, token-identical to the oracle
    (with a tool result after a call, so that the turn is an ongoing tool loop)."""
    from openai_harmony import Role

    call = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    result = {"role": "tool", "tool_call_id": "c", "content": "ok"}
    for content in (None, "", "text", [{"type": "text", "text": "t"}]):
        for reasoning in (None, "why"):
            for tool_calls in (None, [], call):
                msg = {"role": "assistant", "content": content, "reasoning": reasoning,
                       "tool_calls": tool_calls}
                tail = [result] if tool_calls else []
                messages = [{"role": "user", "content": "q"}, msg, *tail]
                ours = render_chat(messages, RenderOptions()).token_ids
                theirs = oracle.render_conversation_for_completion(
                    oracle_conversation(messages, {}), Role.ASSISTANT)
                assert ours == theirs, msg


def test_declared_function_names():
    assert declared_function_names([WEATHER]) == ["get_current_weather"]
    assert declared_function_names(None) == []


def test_round_trip_render_then_parse():
    """An assistant turn rendered by us, parsed back by our mapper, gives the same fields."""
    turn = {"role": "assistant", "reasoning": "Need weather.", "content": "Checking.",
            "tool_calls": [{"id": "c", "type": "function", "function": {
                "name": "get_current_weather", "arguments": '{"location": "Paris"}'}}]}
    user = [{"role": "user", "content": "Weather in Paris?"}]
    prefix = render_chat(user, RenderOptions(tools=[WEATHER])).token_ids
    full = render_chat([*user, turn], RenderOptions(tools=[WEATHER])).token_ids
    completion = full[len(prefix):-2]  # drop the final generation prompt <|start|>assistant
    assert full[:len(prefix)] == prefix
    mapper = ChatMapper(["get_current_weather"])
    deltas = mapper.feed(completion) + mapper.flush()
    assert mapper.finish("stop") == "tool_calls"
    assert "".join(d.reasoning or "" for d in deltas) == "Need weather."
    assert "".join(d.content or "" for d in deltas) == "Checking."
    calls = [c for d in deltas for c in d.tool_calls]
    assert [c.name for c in calls if c.id] == ["get_current_weather"]
    assert "".join(c.arguments for c in calls) == '{"location": "Paris"}'
    final = render_chat([*user, {"role": "assistant", "content": "It is sunny."}],
                        RenderOptions()).token_ids
    plain = ChatMapper()
    deltas = plain.feed(final[len(render_chat(user, RenderOptions()).token_ids):-2])
    deltas += plain.flush()
    assert "".join(d.content or "" for d in deltas) == "It is sunny."
    assert plain.finish("stop") == "stop"
