"""/v1/responses in process (FakeEngine, official openai client): shapes, errors, chains,
streaming events, and the server-run tool loop with fake built-in tools."""

from __future__ import annotations

import json

import openai
import pytest
from starlette.testclient import TestClient

from gptoss_serve.api.app import create_app
from gptoss_serve.api.testing import FakeEngine, fixed_script, script_ids
from gptoss_serve.config import ServerConfig
from responses_support import (
    REASON_AND_ANSWER,
    WEATHER_CALL,
    WEATHER_TOOL,
    FakeBrowser,
    FakePython,
    by_prompt,
    event_models,
    fold_events,
    item_text,
)

MODEL = "gpt-oss-test"
PY_CALL = ("<|channel|>analysis<|message|>Compute it.<|end|>"
           "<|start|>assistant<|channel|>analysis to=python code<|message|>6*7<|call|>")
PY_ANSWER = "<|channel|>final<|message|>The answer is 42.<|return|>"
SEARCH_CALL = ('<|channel|>analysis to=browser.search code<|message|>{"query":"tokyo weather"}'
               "<|call|>")
CITED = "<|channel|>final<|message|>Sunny 【0†L1】.<|return|>"


@pytest.fixture
def serve(tok):
    clients = []

    def make(script, tools=None, tokens_per_step=2, **cfg):
        if isinstance(script, str):
            script = fixed_script(script_ids(tok, script))
        engine = FakeEngine(script, tokens_per_step=tokens_per_step)
        config = ServerConfig(served_model_names=(MODEL,), current_date="2025-06-28", **cfg)
        http = TestClient(create_app(engine, config, tok, tools=tools or {}),
                          raise_server_exceptions=False)
        clients.append(http)
        client = openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http,
                               max_retries=0)
        return client, engine, http

    yield make
    for c in clients:
        c.close()


def test_create_shapes_usage_and_retrieve(serve, tok):
    client, engine, _ = serve(REASON_AND_ANSWER)
    resp = client.responses.create(model=MODEL, input="Hi", instructions="Be brief.",
                                   reasoning={"effort": "low"}, metadata={"k": "v"})
    assert resp.status == "completed" and resp.object == "response"
    reasoning, message = resp.output
    assert reasoning.type == "reasoning"
    assert reasoning.content[0].text == "The user greets."
    assert message.type == "message" and resp.output_text == "Hello! How can I help?"
    assert message.content[0].annotations == []
    assert resp.metadata == {"k": "v"} and resp.reasoning.effort == "low"
    generated = len(script_ids(tok, REASON_AND_ANSWER))
    assert resp.usage.output_tokens == generated
    assert resp.usage.input_tokens == len(engine.admitted[0].prompt_token_ids)
    assert resp.usage.output_tokens_details.reasoning_tokens == len(tok.encode("The user greets."))
    prompt = tok.decode(list(engine.admitted[0].prompt_token_ids))
    assert "Reasoning: low" in prompt and "# Instructions\n\nBe brief." in prompt
    again = client.responses.retrieve(resp.id)
    assert again.model_dump() == resp.model_dump()
    items = client.responses.input_items.list(resp.id)
    assert [i.content[0].text for i in items.data] == ["Hi"]


def test_chain_renders_history_and_drops_earlier_reasoning(serve, tok):
    client, engine, _ = serve(REASON_AND_ANSWER)
    first = client.responses.create(model=MODEL, input="Hi")
    second = client.responses.create(model=MODEL, input="Again", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    prompt = tok.decode(list(engine.admitted[1].prompt_token_ids))
    # the earlier final answer is kept, its chain of thought dropped (a final answer followed)
    assert "<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|>" \
           "Hello! How can I help?<|end|><|start|>user<|message|>Again<|end|>" in prompt
    assert "The user greets." not in prompt
    assert "Be brief" not in prompt  # instructions are not carried over (OpenAI's rule)


def test_function_call_round_trip_through_chain(serve, tok):
    script = by_prompt([("functions.get_weather to=assistant", REASON_AND_ANSWER),
                        (None, WEATHER_CALL)])
    client, engine, _ = serve(script)
    call_resp = client.responses.create(model=MODEL, input="Weather?", tools=[WEATHER_TOOL])
    reasoning, call = call_resp.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Tokyo"} and call.status == "completed"
    out = client.responses.create(
        model=MODEL, previous_response_id=call_resp.id, tools=[WEATHER_TOOL],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert out.output_text == "Hello! How can I help?"
    prompt = tok.decode(list(engine.admitted[1].prompt_token_ids))
    # inside a tool round the chain of thought is kept, and the call is rendered as written
    assert ("<|start|>assistant<|channel|>analysis<|message|>Need the weather.<|end|>"
            "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json"
            '<|message|>{"city":"Tokyo"}<|call|>'
            "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>sunny"
            "<|end|><|start|>assistant") in prompt


def test_stream_events_are_typed_numbered_and_add_up(serve):
    client, _, _ = serve(REASON_AND_ANSWER)
    events = list(client.responses.create(model=MODEL, input="Hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds.count("response.output_item.added") == kinds.count("response.output_item.done")
    assert "response.reasoning_text.delta" in kinds and "response.output_text.delta" in kinds
    folded = fold_events(events)
    final = folded["response"]
    assert {i: item_text(item) for i, item in enumerate(final.output)} == folded["texts"]
    assert client.responses.retrieve(final.id).model_dump() == final.model_dump()


def test_length_cut_is_incomplete(serve):
    client, _, _ = serve(REASON_AND_ANSWER)
    resp = client.responses.create(model=MODEL, input="Hi", max_output_tokens=5)
    assert resp.status == "incomplete"
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage.output_tokens == 5 and resp.output[-1].status == "incomplete"


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"input": "x", "previous_response_id": "resp_nope"}, 404, "previous_response_id"),
    ({"input": [{"type": "message", "role": "user"}]}, 400, "input.0.content"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, 400,
     "input.0.call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c1", "output": "x"}]}, 400,
     "input.0.call_id"),
    ({"input": [{"type": "image", "url": "x"}]}, 400, "input.0"),
    ({"input": "x", "tools": [{"type": "file_search"}]}, 400, "tools.0"),
    ({"input": "x", "tools": [{"type": "code_interpreter"}]}, 400, "tools.0.type"),
    ({"input": "x", "temperature": 3}, 400, "temperature"),
    ({"input": "x", "text": {"format": {"type": "json_schema"}}}, 400, "text.format"),
    ({"input": "x", "tool_choice": "required"}, 400, "tool_choice"),
    ({"input": "x", "tool_choice": {"type": "function", "name": "nope"},
      "tools": [WEATHER_TOOL]}, 400, "tool_choice.name"),
    ({"input": "x", "tool_choice": {"type": "web_search"}}, 400, "tool_choice.type"),
    ({"input": "x", "tool_choice": {"type": "file_search"}}, 400, "tool_choice.type"),
    ({"input": []}, 400, "input"),
    ({"input": "x", "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
    ({"input": "x", "metadata": {"k": "v" * 513}}, 400, "metadata"),
    ({"input": "x", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"input": "x", "reasoning": {"effort": "max"}}, 400, "reasoning.effort"),
])
def test_bad_requests_name_the_field(serve, body, status, param):
    _, _, http = serve(REASON_AND_ANSWER)
    r = http.post("/v1/responses", json={"model": MODEL, **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"


SCHEMA_FORMAT = {"format": {"type": "json_schema", "name": "city",
                            "schema": {"type": "object", "properties": {"c": {"type": "string"}}}}}


@pytest.mark.parametrize(("body", "param"), [
    ({"text": SCHEMA_FORMAT}, "text.format"),
    ({"text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"tool_choice": "required", "tools": [WEATHER_TOOL]}, "tool_choice"),
    ({"tool_choice": {"type": "function", "name": "get_weather"}, "tools": [WEATHER_TOOL]},
     "tool_choice"),
    ({"max_reasoning_tokens": 4}, "max_reasoning_tokens"),
])
def test_constrained_options(serve, tok, body, param):
    """The run is constrained (every model call); a bad schema is a 400 naming this API's field;
    combined with a built-in tool it is a 400."""
    _, engine, http = serve(REASON_AND_ANSWER, tools={"code_interpreter": FakePython()})
    r = http.post("/v1/responses", json={"model": MODEL, "input": "x", **body})
    assert r.status_code == 200, r.text
    assert engine.admitted[0].sampling_params.constraint is not None
    if "text" in body:
        assert "# Response Formats" in tok.decode(list(engine.admitted[0].prompt_token_ids))
    bad = {"format": {"type": "json_schema", "name": "x", "schema": {"type": "nope"}}}
    r = http.post("/v1/responses", json={"model": MODEL, "input": "x", "text": bad})
    assert r.status_code == 400 and r.json()["error"]["param"] == "text.format.schema"
    assert "response_format" not in r.json()["error"]["message"]
    mixed = {**body, "tools": [*body.get("tools", [WEATHER_TOOL]), {"type": "code_interpreter"}]}
    r = http.post("/v1/responses", json={"model": MODEL, "input": "x", **mixed})
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_not_found_and_delete(serve):
    client, _, http = serve(REASON_AND_ANSWER)
    resp = client.responses.create(model=MODEL, input="Hi")
    r = http.get(f"/v1/responses/{resp.id}?stream=true")
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    assert http.delete(f"/v1/responses/{resp.id}").json() == {
        "id": resp.id, "object": "response", "deleted": True}
    for call in (lambda: client.responses.retrieve(resp.id),
                 lambda: client.responses.delete(resp.id),
                 lambda: client.responses.input_items.list(resp.id)):
        with pytest.raises(openai.NotFoundError):
            call()


def test_store_false_and_no_store(serve):
    client, _, _ = serve(REASON_AND_ANSWER)
    resp = client.responses.create(model=MODEL, input="Hi", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)
    off, _, http = serve(REASON_AND_ANSWER, responses_db=None)
    assert off.responses.create(model=MODEL, input="Hi").store is False
    r = http.post("/v1/responses", json={"model": MODEL, "input": "x", "background": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "background"


# ---- the server-run tool loop ----------------------------------------------------------------
def test_python_tool_loop(serve, tok):
    python = FakePython()
    script = by_prompt([("python to=assistant", PY_ANSWER), (None, PY_CALL)])
    client, engine, _ = serve(script, tools={"code_interpreter": python})
    events = list(client.responses.create(model=MODEL, input="6 times 7?", stream=True,
                                          tools=[{"type": "code_interpreter",
                                                  "container": {"type": "auto"}}]))
    final = fold_events(events)["response"]
    assert [o.type for o in final.output] == ["reasoning", "code_interpreter_call", "message"]
    call = final.output[1]
    assert call.code == "6*7" and call.outputs[0].logs == "42" and call.status == "completed"
    assert final.output_text == "The answer is 42."
    assert python.calls == [(final.id, "python", "6*7")]
    kinds = [e.type for e in events]
    ci = list(dict.fromkeys(k for k in kinds if "code_interpreter" in k))
    assert ci == ["response.code_interpreter_call.in_progress",
                  "response.code_interpreter_call_code.delta",
                  "response.code_interpreter_call_code.done",
                  "response.code_interpreter_call.interpreting",
                  "response.code_interpreter_call.completed"]
    assert fold_events(events)["texts"][1] == "6*7"  # the code as streamed
    assert len(engine.admitted) == 2
    second = tok.decode(list(engine.admitted[1].prompt_token_ids))
    assert "Runs Python. Times out after 7 seconds." in second  # the tool's own description
    assert ("<|start|>assistant to=python<|channel|>analysis code<|message|>6*7<|call|>"
            "<|start|>python to=assistant<|channel|>analysis<|message|>42<|end|>"
            "<|start|>assistant") in second
    assert "Compute it." in second  # chain of thought kept inside the loop
    assert final.usage.input_tokens == sum(len(r.prompt_token_ids) for r in engine.admitted)


def test_tool_session_is_the_conversation(serve):
    python = FakePython()
    script = by_prompt([("python to=assistant", PY_ANSWER), (None, PY_CALL)])
    client, _, _ = serve(script, tools={"code_interpreter": python})
    tools = [{"type": "code_interpreter"}]
    first = client.responses.create(model=MODEL, input="a", tools=tools)
    second = client.responses.create(model=MODEL, input="b", tools=tools,
                                     previous_response_id=first.id)
    assert second.status == "completed"
    assert [c[0] for c in python.calls] == [first.id, first.id]
    assert python.closed_sessions == []  # a stored conversation may still go on
    lone = client.responses.create(model=MODEL, input="c", tools=tools, store=False)
    assert python.closed_sessions == [lone.id]  # nothing can continue it


def test_browser_loop_cites(serve):
    browser = FakeBrowser()
    script = by_prompt([("browser.search to=assistant", CITED), (None, SEARCH_CALL)])
    client, _, _ = serve(script, tools={"web_search": browser})
    resp = client.responses.create(model=MODEL, input="Weather in Tokyo?",
                                   tools=[{"type": "web_search_preview"}])
    search, message = resp.output
    assert search.type == "web_search_call" and search.action.query == "tokyo weather"
    (note,) = message.content[0].annotations
    text = message.content[0].text
    assert note.type == "url_citation" and note.url == "file:///corpus/tokyo.md"
    assert text[note.start_index:note.end_index] == "【0†L1】"
    assert browser.calls[0][1] == "browser.search"


def test_tool_turns_are_capped(serve):
    python = FakePython()
    client, engine, _ = serve(PY_CALL, tools={"code_interpreter": python}, max_tool_turns=2)
    resp = client.responses.create(model=MODEL, input="loop", tools=[{"type": "code_interpreter"}])
    assert resp.status == "completed" and resp.incomplete_details is None
    assert len(python.calls) == 2 and len(engine.admitted) == 3
    last = resp.output[-1]  # the call past the cap is left unrun (OpenAI: ignored)
    assert last.type == "code_interpreter_call" and last.status == "incomplete"
    capped = client.responses.create(model=MODEL, input="loop", max_tool_calls=1,
                                     tools=[{"type": "code_interpreter"}])
    assert capped.output[-1].status == "incomplete" and len(python.calls) == 3


def test_tool_choice_none_offers_no_tools(serve, tok):
    client, engine, _ = serve(REASON_AND_ANSWER, tools={"code_interpreter": FakePython()})
    client.responses.create(model=MODEL, input="x", tool_choice="none",
                            tools=[{"type": "code_interpreter"}, WEATHER_TOOL])
    prompt = tok.decode(list(engine.admitted[0].prompt_token_ids))
    assert "namespace python" not in prompt and "get_weather" not in prompt


def test_openapi_describes_the_request_body(serve):
    import jsonschema

    _, _, http = serve(REASON_AND_ANSWER)
    doc = http.get("/openapi.json").json()
    op = doc["paths"]["/v1/responses"]["post"]
    schema = {**op["requestBody"]["content"]["application/json"]["schema"],
              "components": doc["components"]}  # its $ref points into the document
    good = {"model": MODEL, "input": [{"role": "user", "content": "hi"},
                                      {"type": "function_call_output", "call_id": "c",
                                       "output": "x"}],
            "tools": [{"type": "code_interpreter"}], "reasoning": {"effort": "low"}}
    jsonschema.validate(good, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "reasoning": {"effort": "extreme"}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"input": "no model"}, schema)


def test_empty_call_arguments_stream_as_braces(serve):
    empty = ("<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
             "<|call|>")
    client, _, _ = serve(empty)
    events = list(client.responses.create(model=MODEL, input="x", tools=[WEATHER_TOOL],
                                          stream=True))
    folded = fold_events(events)
    (call,) = folded["response"].output
    assert call.arguments == "{}" == folded["texts"][0]


def _sse_events(http, body):
    with http.stream("POST", "/v1/responses", json={"model": MODEL, "stream": True, **body}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = "".join(r.iter_text())
    events = []
    for block in raw.strip().split("\n\n"):
        name, data = block.split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        events.append(event)
    return events


@pytest.mark.parametrize("case", ["answer", "function", "python", "browser"])
def test_events_and_bodies_validate_against_the_client_types(serve, case):
    """Strict validation with the openai package's own models (its stream reader does not
    validate)."""
    from openai.types.responses import Response

    script, tools, body = {
        "answer": (REASON_AND_ANSWER, {}, {}),
        "function": (WEATHER_CALL, {}, {"tools": [WEATHER_TOOL]}),
        "python": (by_prompt([("python to=assistant", PY_ANSWER), (None, PY_CALL)]),
                   {"code_interpreter": FakePython()}, {"tools": [{"type": "code_interpreter"}]}),
        "browser": (by_prompt([("browser.search to=assistant", CITED), (None, SEARCH_CALL)]),
                    {"web_search": FakeBrowser()}, {"tools": [{"type": "web_search"}]}),
    }[case]
    _, _, http = serve(script, tools=tools)
    events = _sse_events(http, {"input": "x", **body})
    models = event_models()
    for event in events:
        models[event["type"]].model_validate(event)
    final = events[-1]["response"]
    Response.model_validate(final)
    Response.model_validate(http.get(f"/v1/responses/{final['id']}").json())


def test_input_items_validate_and_page(serve):
    import typing

    from openai.types.responses import ResponseItem

    _, _, http = serve(REASON_AND_ANSWER)
    items = [{"role": "developer", "content": "Be kind."},
             {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
             {"type": "function_call", "call_id": "c1", "name": "get_weather",
              "arguments": "{}"},
             {"type": "function_call_output", "call_id": "c1", "output": "sunny"}]
    rid = http.post("/v1/responses", json={"model": MODEL, "input": items,
                                           "tools": [WEATHER_TOOL]}).json()["id"]
    page = http.get(f"/v1/responses/{rid}/input_items?order=asc").json()
    union = typing.get_args(typing.get_args(ResponseItem)[0])
    by_type = {}
    for model in union:
        for t in typing.get_args(model.model_fields["type"].annotation):
            by_type.setdefault(t, []).append(model)
    for item in page["data"]:
        errors = []
        for model in by_type[item["type"]]:
            try:
                model.model_validate(item)
                break
            except Exception as exc:  # another model of the same type may fit
                errors.append(exc)
        else:
            raise AssertionError(errors)
    assert [i["type"] for i in page["data"]] == ["message", "message", "function_call",
                                                 "function_call_output"]
    first = http.get(f"/v1/responses/{rid}/input_items?limit=2").json()
    assert first["has_more"] and len(first["data"]) == 2
    assert first["data"][0]["type"] == "function_call_output"  # newest first by default
    rest = http.get(f"/v1/responses/{rid}/input_items?limit=2&after={first['last_id']}").json()
    assert [i["type"] for i in rest["data"]] == ["message", "message"] and not rest["has_more"]


def test_context_too_long_is_a_400_before_anything_streams(serve):
    _, engine, http = serve(REASON_AND_ANSWER)
    long = "word " * (engine.max_model_len + 10)
    for extra in ({}, {"stream": True}, {"background": True}):
        r = http.post("/v1/responses", json={"model": MODEL, "input": long, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"
        assert r.json()["error"]["code"] == "context_length_exceeded"
    r = http.post("/v1/responses", json={"model": MODEL, "input": "hi",
                                         "max_output_tokens": engine.max_model_len})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_output_tokens"
    assert "max_output_tokens" in r.json()["error"]["message"]
    assert engine.admitted == []


def test_engine_death_mid_loop_fails_the_response(serve):
    class Killer(FakePython):
        async def run(self, session_id, recipient, body):
            engine.dead = True  # the engine dies while the tool runs
            return await super().run(session_id, recipient, body)

    script = by_prompt([("python to=assistant", PY_ANSWER), (None, PY_CALL)])
    client, engine, http = serve(script, tools={"code_interpreter": Killer()})
    events = list(client.responses.create(model=MODEL, input="x", stream=True,
                                          tools=[{"type": "code_interpreter"}]))
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.code == "server_error"
    assert "engine" in failed.error.message
    from openai.types.responses import Response

    Response.model_validate(events[-1].model_dump()["response"])
    assert client.responses.retrieve(failed.id).status == "failed"
    r = http.post("/v1/responses", json={"model": MODEL, "input": "x"})  # dead from the start
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"


def test_a_codex_style_request(serve, tok):
    """The fields a Codex-style client sends (store off, its own context, extra options)."""
    client, engine, http = serve(WEATHER_CALL)
    shell = {"type": "function", "name": "shell", "description": "Runs a command.",
             "strict": False, "parameters": {"type": "object", "properties": {
                 "command": {"type": "array", "items": {"type": "string"}}},
                 "required": ["command"]}}
    body = {"model": MODEL, "instructions": "You are a coding agent.", "store": False,
            "stream": True, "include": ["reasoning.encrypted_content"], "tool_choice": "auto",
            "parallel_tool_calls": False, "reasoning": {"effort": "high", "summary": "auto"},
            "text": {"verbosity": "medium"}, "prompt_cache_key": "abc", "tools": [shell],
            "input": [{"type": "message", "role": "user",
                       "content": [{"type": "input_text", "text": "list files"}]},
                      {"type": "reasoning", "id": "rs_1", "summary": [],
                       "encrypted_content": None},
                      {"type": "message", "role": "assistant", "id": "msg_1",
                       "content": [{"type": "output_text", "text": "Sure.",
                                    "annotations": []}]},
                      {"type": "message", "role": "user",
                       "content": [{"type": "input_text", "text": "now"}]}]}
    events = _sse_events(http, body)
    assert events[-1]["type"] == "response.completed"
    prompt = tok.decode(list(engine.admitted[0].prompt_token_ids))
    assert "Reasoning: high" in prompt and "type shell = (_: {" in prompt
    assert "<|start|>assistant<|channel|>final<|message|>Sure.<|end|>" in prompt
    assert "<|channel|>analysis<|message|><|end|>" not in prompt  # no empty reasoning


def test_app_lifespans_stop_runs_and_close_closes(tok, tmp_path):
    python = FakePython()
    engine = FakeEngine(fixed_script(script_ids(tok, REASON_AND_ANSWER)))
    config = ServerConfig(served_model_names=(MODEL,), responses_db=str(tmp_path / "r.db"))
    app = create_app(engine, config, tok, tools={"code_interpreter": python})
    for _ in range(2):  # an app may run several lifespans (test clients, fuzzers)
        with TestClient(app) as http:
            r = http.post("/v1/responses", json={"model": MODEL, "input": "x"})
            assert r.status_code == 200
            assert http.get(f"/v1/responses/{r.json()['id']}").status_code == 200
    assert not python.closed
    app.state.responses.close()  # the server's last step
    assert python.closed
    with pytest.raises(Exception, match="closed"):
        app.state.responses.store.get("anything")


def test_responses_routes_need_the_key(serve):
    _, _, http = serve(REASON_AND_ANSWER, api_key="sekrit")
    for method, path in (("post", "/v1/responses"), ("get", "/v1/responses/resp_x"),
                         ("delete", "/v1/responses/resp_x"),
                         ("get", "/v1/responses/resp_x/input_items"),
                         ("post", "/v1/responses/resp_x/cancel")):
        r = getattr(http, method)(path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", path
    ok = http.post("/v1/responses", json={"model": MODEL, "input": "x"},
                   headers={"Authorization": "Bearer sekrit"})
    assert ok.status_code == 200


def test_bodies_and_events_match_the_openapi_document(serve):
    import jsonschema

    python = FakePython()
    script = by_prompt([("python to=assistant", PY_ANSWER), (None, PY_CALL)])
    _, _, http = serve(script, tools={"code_interpreter": python})
    doc = http.get("/openapi.json").json()

    def check(path, method, status, body, media="application/json"):
        declared = doc["paths"][path][method]["responses"]
        declared = declared.get(str(status)) or declared[f"{str(status)[0]}XX"]
        jsonschema.validate(body, {**declared["content"][media]["schema"],
                                   "components": doc["components"]})

    body = {"model": MODEL, "input": "x", "tools": [{"type": "code_interpreter"}],
            "metadata": {"k": "v"}}
    made = http.post("/v1/responses", json=body).json()
    check("/v1/responses", "post", 200, made)
    rid = made["id"]
    for event in _sse_events(http, body):
        check("/v1/responses", "post", 200, event, "text/event-stream")
    check("/v1/responses/{response_id}", "get", 200, http.get(f"/v1/responses/{rid}").json())
    check("/v1/responses/{response_id}/input_items", "get", 200,
          http.get(f"/v1/responses/{rid}/input_items").json())
    bad = http.post(f"/v1/responses/{rid}/cancel")
    check("/v1/responses/{response_id}/cancel", "post", bad.status_code, bad.json())
    check("/v1/responses/{response_id}", "delete", 200,
          http.delete(f"/v1/responses/{rid}").json())
    gone = http.get(f"/v1/responses/{rid}")
    check("/v1/responses/{response_id}", "get", gone.status_code, gone.json())
    with pytest.raises(jsonschema.ValidationError):  # the schema is closed: it would notice
        check("/v1/responses", "post", 200, {**made, "surprise": 1})
