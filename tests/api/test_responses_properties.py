"""Property test of /v1/responses (docs/guards.md 1, 7): any token stream the model may emit,
mixing text, control tokens and built-in tool recipients, gives a 200 whose response has no
`<|...|>` text anywhere, whose events are numbered without gaps, validate against the openai
package's models and add up to the stored items, and whose usage counts every token the stored
model calls generated."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from test_chat_properties import CONTROL, WORDS, model_output

from gptoss_serve.api.app import create_app
from gptoss_serve.api.testing import FakeEngine, fixed_script
from gptoss_serve.config import ServerConfig
from gptoss_serve.tools.base import ToolOutput
from responses_support import FakePython, event_models

MODEL = "gpt-oss-test"
MORE_WORDS = (*WORDS, " to=python", " to=browser.search", "code", " to=functions.get_weather")
TOOLS = [{"type": "function", "name": "get_weather"}, {"type": "code_interpreter"}]


class Constant(FakePython):
    async def run(self, session_id, recipient, body):
        item = {"type": "code_interpreter_call", "code": body, "container_id": "c",
                "outputs": [{"type": "logs", "logs": "ok"}], "status": "completed"}
        return ToolOutput("python", "ok", item)


def _events(raw: str) -> list[dict]:
    return [json.loads(block.split("\n", 1)[1].removeprefix("data: "))
            for block in raw.strip().split("\n\n")]


def test_any_output_gives_a_clean_consistent_response(tok):
    from openai.types.responses import Response

    models = event_models()
    engine = FakeEngine(fixed_script([1]))
    config = ServerConfig(served_model_names=(MODEL,), max_tool_turns=2)
    app = create_app(engine, config, tok, tools={"code_interpreter": Constant()})
    store = app.state.responses.store
    http = TestClient(app)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(ids=model_output(tok, MORE_WORDS), step=st.integers(1, 5))
    def check(ids, step):
        engine.script = lambda _r, _i: ids
        engine.tokens_per_step = step
        before = len(engine.admitted)
        with http.stream("POST", "/v1/responses", json={
                "model": MODEL, "input": "hi", "tools": TOOLS, "stream": True}) as r:
            assert r.status_code == 200
            events = _events("".join(r.iter_text()))
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        for event in events:
            models[event["type"]].model_validate(event)
        final = events[-1]["response"]
        Response.model_validate(final)
        assert not CONTROL.search(json.dumps(final["output"])), final["output"]
        streamed: dict[int, str] = {}
        for e in events:
            if e["type"].endswith(".delta"):
                streamed[e["output_index"]] = streamed.get(e["output_index"], "") + e["delta"]
        for i, item in enumerate(final["output"]):
            text = "".join(c["text"] for c in item.get("content") or []) or item.get(
                "arguments") or item.get("code") or ""
            assert streamed.get(i, "") == text
        calls = len(engine.admitted) - before
        generated = store.get(final["id"]).token_ids  # what each model call produced
        assert len(generated) == calls and all(g == ids[:len(g)] for g in generated)
        assert final["usage"]["output_tokens"] == sum(map(len, generated))
        stored = http.get(f"/v1/responses/{final['id']}").json()
        assert stored == final

    check()
    http.close()
