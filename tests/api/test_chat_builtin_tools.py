"""Chat completions with the built-in tools (extension): the server runs the tool loop and
answers in the chat shape; streaming folds to the same message."""

from __future__ import annotations

import openai
import pytest
from starlette.testclient import TestClient

from gptoss_serve.api.app import create_app
from gptoss_serve.api.testing import FakeEngine, fold_stream, message_fields, without_ids
from gptoss_serve.config import ServerConfig
from responses_support import FakeBrowser, FakePython, by_prompt

MODEL = "gpt-oss-test"
PY_CALL = ("<|channel|>analysis<|message|>Compute it.<|end|>"
           "<|start|>assistant<|channel|>analysis to=python code<|message|>6*7<|call|>")
PY_ANSWER = ("<|channel|>analysis<|message|>Got 42.<|end|>"
             "<|start|>assistant<|channel|>final<|message|>It is 42.<|return|>")
SEARCH = '<|channel|>analysis to=browser.search code<|message|>{"query":"tokyo"}<|call|>'
CITED = "<|channel|>final<|message|>Sunny 【0†L1】.<|return|>"
USER = [{"role": "user", "content": "6*7?"}]


@pytest.fixture
def chat(tok):
    clients = []

    def make(rules, tools):
        engine = FakeEngine(by_prompt(rules), tokens_per_step=2)
        config = ServerConfig(served_model_names=(MODEL,), current_date="2025-06-28")
        http = TestClient(create_app(engine, config, tok, tools=tools),
                          raise_server_exceptions=False)
        clients.append(http)
        return openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http,
                             max_retries=0), engine, http

    yield make
    for c in clients:
        c.close()


def test_python_loop_in_chat(chat, tok):
    python = FakePython()
    client, engine, _ = chat([("python to=assistant", PY_ANSWER), (None, PY_CALL)],
                             {"code_interpreter": python})
    out = client.chat.completions.create(model=MODEL, messages=USER,
                                         tools=[{"type": "code_interpreter"}])
    choice = out.choices[0]
    assert choice.message.content == "It is 42." and choice.finish_reason == "stop"
    assert choice.message.model_extra["reasoning"] == "Compute it.\nGot 42."
    (ran,) = choice.message.model_extra["builtin_tool_calls"]
    assert ran["type"] == "code_interpreter_call" and ran["outputs"][0]["logs"] == "42"
    assert len(python.calls) == 1 and len(engine.admitted) == 2
    assert python.closed_sessions == [python.calls[0][0]]  # the request's kernel is gone
    assert "<|start|>python to=assistant<|channel|>analysis<|message|>42<|end|>" in tok.decode(
        list(engine.admitted[1].prompt_token_ids))
    assert out.usage.prompt_tokens == sum(len(r.prompt_token_ids) for r in engine.admitted)
    chunks = list(client.chat.completions.create(model=MODEL, messages=USER, stream=True,
                                                 tools=[{"type": "code_interpreter"}]))
    folded = fold_stream(chunks)["choices"][0]
    assert without_ids(folded) == without_ids(message_fields(choice))


def test_browser_citations_in_chat_shape(chat):
    client, _, _ = chat([("browser.search to=assistant", CITED), (None, SEARCH)],
                        {"web_search": FakeBrowser()})
    msg = client.chat.completions.create(model=MODEL, messages=USER,
                                         tools=[{"type": "web_search"}]).choices[0].message
    (note,) = msg.annotations
    assert note.type == "url_citation" and note.url_citation.url == "file:///corpus/tokyo.md"
    cite = note.url_citation
    assert msg.content[cite.start_index:cite.end_index] == "【0†L1】"


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2}, "n"), ({"stop": "x"}, "stop"), ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"tools": [{"type": "function"}]}, "tools.0"), ({"tool_choice": "required"}, "tool_choice"),
    ({"model": "other"}, "model"), ({"max_reasoning_tokens": 3}, "max_reasoning_tokens"),
    ({"structured_outputs": {"json_object": True}}, "structured_outputs"),
])
def test_chat_tool_refusals(chat, extra, param):
    _, _, http = chat([(None, PY_ANSWER)], {"code_interpreter": FakePython()})
    body = {"model": MODEL, "messages": USER, "tools": [{"type": "code_interpreter"}], **extra}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == (404 if param == "model" else 400), r.text
    assert r.json()["error"]["param"] == param
