"""Full tool loops over real HTTP with the real built-in tools and a scripted model: python
computes in its sandbox (state kept across a previous_response_id chain)."""

from __future__ import annotations

import openai
import pytest
from e2e_support import MODEL

from asgi_server import serve_in_thread
from gptoss_serve.api.app import create_app
from gptoss_serve.api.testing import FakeEngine
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
        engine = FakeEngine(by_prompt(rules), tokens_per_step=4)
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
