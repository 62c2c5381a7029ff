"""Full tool loops over real HTTP with the real built-in tools and a scripted model: python
computes in its sandbox (state kept across a previous_response_id chain); the browser searches a
local corpus, opens a result and the answer's citation becomes a url_citation annotation."""

from __future__ import annotations

import re

import openai
import pytest
from e2e_support import MODEL

from asgi_server import serve_in_thread
from gptoss_serve.api.app import create_app
from gptoss_serve.api.testing import FakeEngine, script_ids
from gptoss_serve.config import ServerConfig
from gptoss_serve.harmony.tokenizer import get_tokenizer
from gptoss_serve.tools.sandbox import self_test
from responses_support import by_prompt

ANSWER = "<|channel|>final<|message|>Done.<|return|>"


def _call(code: str) -> str:
    return f"<|channel|>analysis to=python code<|message|>{code}<|call|>"


@pytest.fixture
def served():
    started = []

    def make(rules, tools):
        script = rules if callable(rules) else by_prompt(rules)
        engine = FakeEngine(script, tokens_per_step=4)
        config = ServerConfig(served_model_names=(MODEL,), current_date="2025-06-28")
        started.append(serve_in_thread(create_app(engine, config, get_tokenizer(), tools=tools),
                                       timeout_graceful_shutdown=1))
        client = openai.OpenAI(base_url=started[-1].base_url + "/v1", api_key="x",
                               max_retries=0)
        return client, engine

    yield make
    for s in started:
        s.stop()


@pytest.mark.skipif(self_test() is not None, reason=f"no sandbox here: {self_test()}")
def test_python_computes_and_keeps_state_across_a_chain(served):
    from gptoss_serve.tools.python_tool import PythonTool

    python = PythonTool(timeout=20.0, memory_mb=256)
    try:
        rules = [("python to=assistant", ANSWER), ("Next", _call("print(x + 1)")),
                 (None, _call("x = 6 * 7\nprint(x)"))]
        client, engine = served(rules, {"code_interpreter": python})
        tools = [{"type": "code_interpreter"}]
        first = client.responses.create(model=MODEL, input="Compute.", tools=tools)
        call = first.output[0]
        assert call.type == "code_interpreter_call" and call.outputs[0].logs == "42\n"
        assert first.output_text == "Done."
        events = list(client.responses.create(model=MODEL, input="Next", tools=tools,
                                              previous_response_id=first.id, stream=True))
        second = events[-1].response
        assert second.output[0].outputs[0].logs == "43\n"  # the kernel kept x
        prompt = get_tokenizer().decode(list(engine.admitted[-1].prompt_token_ids))
        assert "<|start|>python to=assistant<|channel|>analysis<|message|>43\n<|end|>" in prompt
        assert "time out after 20.0 seconds" in prompt  # the real limit, as the model sees it
    finally:
        python.close()


TOKYO = "# Tokyo weather\n\nTokyo is sunny today, with a high of 24 degrees.\n"
KYOTO = "# Kyoto temples\n\nKyoto has many temples and shrines.\n"


def _browsing_model(request, _index):
    """Search, open the first result, then answer citing the opened page's first line."""
    tok = get_tokenizer()
    text = tok.decode(list(request.prompt_token_ids))
    last = text.rsplit("<|start|>", 2)[-2]
    if last.startswith("browser.search"):
        link = re.search(r"【(\d+)†", last).group(1)
        reply = ('<|channel|>analysis to=browser.open code<|message|>{"id": ' + link + '}'
                 "<|call|>")
    elif last.startswith("browser.open"):
        cursor = re.search(r"\[(\d+)\]", last).group(1)
        line = re.search(r"L(\d+): .*sunny", last).group(1)
        reply = f"<|channel|>final<|message|>It is sunny 【{cursor}†L{line}】.<|return|>"
    else:
        reply = ('<|channel|>analysis to=browser.search code<|message|>'
                 '{"query": "tokyo weather"}<|call|>')
    return script_ids(tok, reply)


def test_browser_searches_the_local_corpus_and_cites(served, tmp_path):
    pytest.importorskip("gptoss_serve.tools.browser_tool")  # 13b's browser (branch i13b)
    from gptoss_serve.tools.base import ToolOptions
    from gptoss_serve.tools.registry import build_tools

    (tmp_path / "tokyo.md").write_text(TOKYO)
    (tmp_path / "kyoto.md").write_text(KYOTO)
    tools, _ = build_tools(ToolOptions(python_tool="off", browser_corpus=str(tmp_path)))
    try:
        client, engine = served(_browsing_model, tools)
        resp = client.responses.create(model=MODEL, input="Weather in Tokyo?",
                                       tools=[{"type": "web_search_preview"}])
        search, opened, message = resp.output
        assert search.type == opened.type == "web_search_call"
        assert search.action.query == "tokyo weather" and search.status == "completed"
        (note,) = message.content[0].annotations
        text = message.content[0].text
        assert note.type == "url_citation" and "tokyo" in note.url
        assert text[note.start_index:note.end_index].startswith("【")
        from openai.types.responses import Response

        Response.model_validate(resp.model_dump())  # strictly, with the client's own models
        results = get_tokenizer().decode(list(engine.admitted[1].prompt_token_ids))
        assert "Tokyo weather" in results  # the corpus document the search found
    finally:
        for tool in tools.values():
            tool.close()
