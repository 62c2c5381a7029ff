"""Prompt parity of multi-turn /v1/responses conversations with openai-harmony.

Conversations are driven through the real API with a scripted model (reasoning, function calls
and their outputs, python and browser tool loops run by the server, previous_response_id chains);
the prompt of each model call must equal openai-harmony's rendering of the same conversation,
built here by hand with its own message types."""

from __future__ import annotations

import openai
import pytest
from starlette.testclient import TestClient

from gptoss_serve.api.app import create_app
from gptoss_serve.api.testing import FakeEngine
from gptoss_serve.config import ServerConfig
from gptoss_serve.harmony.builtin_tools import PYTHON
from responses_support import (
    WEATHER_CALL,
    WEATHER_TOOL,
    FakeBrowser,
    FakePython,
    by_prompt,
)

MODEL = "gpt-oss-test"
DATE = "2025-06-28"
ANSWER = ("<|channel|>analysis<|message|>Sunny per the tool.<|end|>"
          "<|start|>assistant<|channel|>final<|message|>It is sunny.<|return|>")
PY_CALL = ("<|channel|>analysis<|message|>Compute it.<|end|>"
           "<|start|>assistant<|channel|>analysis to=python code<|message|>6*7<|call|>")
SEARCH = ('<|channel|>analysis<|message|>Search.<|end|><|start|>assistant<|channel|>analysis'
          ' to=browser.search code<|message|>{"query":"tokyo"}<|call|>')
PAGE = "[0] Tokyo weather (file:///corpus/tokyo.md)\nL1: Tokyo is sunny today."


class StdPython(FakePython):
    def description(self):
        return PYTHON  # openai-harmony's own python namespace text


@pytest.fixture
def api(tok):
    clients = []

    def make(rules, tools=None):
        engine = FakeEngine(by_prompt(rules), tokens_per_step=3)
        config = ServerConfig(served_model_names=(MODEL,), current_date=DATE)
        http = TestClient(create_app(engine, config, tok, tools=tools or {}))
        clients.append(http)
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http,
                               max_retries=0)
        return client, engine

    yield make
    for c in clients:
        c.close()


def _h():
    import openai_harmony as H

    return H


def _system(H, tools=(), effort="MEDIUM"):
    system = H.SystemContent.new().with_reasoning_effort(H.ReasoningEffort[effort]) \
        .with_conversation_start_date(DATE)
    for name in tools:
        system = system.with_tools(getattr(H.ToolNamespaceConfig, name)())
    return H.Message.from_role_and_content(H.Role.SYSTEM, system)


def _assistant(H, text, channel, recipient=None, content_type=None):
    msg = H.Message.from_role_and_content(H.Role.ASSISTANT, text).with_channel(channel)
    if recipient:
        msg = msg.with_recipient(recipient)
    return msg.with_content_type(content_type) if content_type else msg


def _tool(H, author, text, channel):
    return H.Message.from_author_and_content(H.Author.new(H.Role.TOOL, author), text) \
        .with_channel(channel).with_recipient("assistant")


def _render(oracle, messages):
    H = _h()
    conv = H.Conversation.from_messages(messages)
    return oracle.render_conversation_for_completion(conv, H.Role.ASSISTANT)


def _user(H, text):
    return H.Message.from_role_and_content(H.Role.USER, text)


def test_function_calls_and_chain(api, oracle):
    H = _h()
    client, engine = api([("functions.get_weather to=assistant", ANSWER), ("Thanks", ANSWER),
                          (None, WEATHER_CALL)])
    first = client.responses.create(model=MODEL, input="Weather?", tools=[WEATHER_TOOL],
                                    instructions="Answer briefly.")
    call = first.output[1]
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, tools=[WEATHER_TOOL],
        instructions="Answer briefly.",
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"t":20}'}])
    client.responses.create(model=MODEL, previous_response_id=second.id, input="Thanks",
                            reasoning={"effort": "high"})
    developer = H.Message.from_role_and_content(
        H.Role.DEVELOPER, H.DeveloperContent.new().with_instructions("Answer briefly.")
        .with_function_tools([H.ToolDescription.new(
            "get_weather", "Weather of a city.", parameters=WEATHER_TOOL["parameters"])]))
    turn1 = [_user(H, "Weather?"), _assistant(H, "Need the weather.", "analysis"),
             _assistant(H, '{"city":"Tokyo"}', "commentary", "functions.get_weather",
                        "<|constrain|>json")]
    turn2 = [_tool(H, "functions.get_weather", '{"t":20}', "commentary"),
             _assistant(H, "Sunny per the tool.", "analysis"),
             _assistant(H, "It is sunny.", "final")]
    want = [_render(oracle, [_system(H), developer, turn1[0]]),
            _render(oracle, [_system(H), developer, *turn1, turn2[0]]),
            _render(oracle, [_system(H, effort="HIGH"), *turn1, *turn2, _user(H, "Thanks")])]
    assert [list(r.prompt_token_ids) for r in engine.admitted] == want


def test_python_loop_and_next_turn(api, oracle):
    H = _h()
    client, engine = api([("python to=assistant", ANSWER), (None, PY_CALL)],
                         tools={"code_interpreter": StdPython()})
    tools = [{"type": "code_interpreter"}]
    first = client.responses.create(model=MODEL, input="6 times 7?", tools=tools)
    client.responses.create(model=MODEL, input="And 6*8?", tools=tools,
                            previous_response_id=first.id)
    loop = [_user(H, "6 times 7?"), _assistant(H, "Compute it.", "analysis"),
            _assistant(H, "6*7", "analysis", "python", "code"),
            _tool(H, "python", "42", "analysis")]
    answer = [_assistant(H, "Sunny per the tool.", "analysis"),
              _assistant(H, "It is sunny.", "final")]
    sys_py = _system(H, ["python"])
    want = [_render(oracle, [sys_py, *loop[:1]]), _render(oracle, [sys_py, *loop]),
            _render(oracle, [sys_py, *loop, *answer, _user(H, "And 6*8?")])]
    assert [list(r.prompt_token_ids) for r in engine.admitted][:3] == want


def test_browser_loop(api, oracle):
    H = _h()
    client, engine = api([("browser.search to=assistant", ANSWER), (None, SEARCH)],
                         tools={"web_search": FakeBrowser()})
    client.responses.create(model=MODEL, input="Tokyo?", tools=[{"type": "web_search"}])
    msgs = [_system(H, ["browser"]), _user(H, "Tokyo?"), _assistant(H, "Search.", "analysis"),
            _assistant(H, '{"query":"tokyo"}', "analysis", "browser.search", "code"),
            _tool(H, "browser.search", PAGE, "analysis")]
    assert list(engine.admitted[1].prompt_token_ids) == _render(oracle, msgs)


def test_manual_context_items(api, oracle):
    """A client that keeps the context itself (store=false) sends the output items back."""
    H = _h()
    client, engine = api([(None, ANSWER)])
    client.responses.create(model=MODEL, store=False, tools=[WEATHER_TOOL], input=[
        {"role": "developer", "content": "Be kind."},
        {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "reasoning", "summary": [],
         "content": [{"type": "reasoning_text", "text": "Need the weather."}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather",
         "arguments": '{"city":"Tokyo"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
    ])
    developer = H.Message.from_role_and_content(
        H.Role.DEVELOPER, H.DeveloperContent.new().with_instructions("Be kind.")
        .with_function_tools([H.ToolDescription.new(
            "get_weather", "Weather of a city.", parameters=WEATHER_TOOL["parameters"])]))
    msgs = [_system(H), developer, _user(H, "Weather?"),
            _assistant(H, "Need the weather.", "analysis"),
            _assistant(H, '{"city":"Tokyo"}', "commentary", "functions.get_weather",
                       "<|constrain|>json"),
            _tool(H, "functions.get_weather", "sunny", "commentary")]
    assert list(engine.admitted[0].prompt_token_ids) == _render(oracle, msgs)
