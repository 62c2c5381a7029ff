"""/v1/responses over real HTTP with the official openai client and scripted models: the store
across a server restart (retrieve, input items, chains, stream replay), background runs (poll,
resume a live stream, cancel), concurrent chains on one parent, and a client that leaves
stopping a tool loop."""

from __future__ import annotations

import asyncio
import json
import threading

import openai
import pytest
from e2e_support import MODEL, Running, wait_until

from asgi_server import serve_in_thread
from gptoss_serve.api.app import create_app
from gptoss_serve.api.testing import FakeEngine, fixed_script, script_ids
from gptoss_serve.config import ServerConfig
from gptoss_serve.harmony.tokenizer import get_tokenizer
from responses_support import REASON_AND_ANSWER, FakePython, by_prompt, fold_events, item_text

PY_CALL = "<|channel|>analysis to=python code<|message|>1+1<|call|>"


@pytest.fixture
def serve():
    started: list[Running] = []

    def make(script, tools=None, **cfg) -> tuple[openai.OpenAI, FakeEngine, Running]:
        tok = get_tokenizer()
        if isinstance(script, str):
            script = fixed_script(script_ids(tok, script))
        engine = FakeEngine(script)
        config = ServerConfig(served_model_names=(MODEL,), current_date="2025-06-28", **cfg)
        app = create_app(engine, config, tok, tools=tools or {})
        served = serve_in_thread(app, timeout_graceful_shutdown=1)
        started.append(Running(served.base_url, engine, served))
        client = openai.OpenAI(base_url=served.base_url + "/v1", api_key="x", max_retries=0)
        return client, engine, started[-1]

    yield make
    for r in started:
        r.stop()
    started.clear()


def test_store_survives_restart(serve, tmp_path):
    db = str(tmp_path / "responses.sqlite3")
    client, _, running = serve(REASON_AND_ANSWER, responses_db=db)
    first = client.responses.create(model=MODEL, input="Hi", metadata={"run": "1"})
    events = list(client.responses.create(model=MODEL, input="More", stream=True,
                                          previous_response_id=first.id))
    second = fold_events(events)["response"]
    # a new server (new process state) on the same file
    client, engine, running = serve(REASON_AND_ANSWER, responses_db=db)
    assert client.responses.retrieve(first.id).model_dump() == first.model_dump()
    assert client.responses.retrieve(second.id).model_dump() == second.model_dump()
    assert [i.content[0].text for i in client.responses.input_items.list(second.id).data] == [
        "More"]
    replay = list(client.responses.retrieve(second.id, stream=True, starting_after=3))
    assert [e.model_dump() for e in replay] == [e.model_dump() for e in events[4:]]
    third = client.responses.create(model=MODEL, input="Last", previous_response_id=second.id)
    prompt = get_tokenizer().decode(list(engine.admitted[0].prompt_token_ids))
    for said in ("Hi", "More", "Last"):
        assert f"<|start|>user<|message|>{said}<|end|>" in prompt
    assert third.status == "completed"
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    # the chain does not depend on the deleted ancestor
    assert client.responses.create(model=MODEL, input="x", previous_response_id=second.id)


def test_background_poll_and_resume_a_live_stream(serve):
    client, _, running = serve(REASON_AND_ANSWER)
    queued = client.responses.create(model=MODEL, input="Hi", background=True)
    assert queued.status == "queued" and queued.background is True
    wait_until(lambda: client.responses.retrieve(queued.id).status == "completed", "completed")
    assert client.responses.retrieve(queued.id).output_text == "Hello! How can I help?"
    stream = client.responses.create(model=MODEL, input="Hi", background=True, stream=True)
    head = []
    for event in stream:
        head.append(event)
        if len(head) == 3:
            break
    stream.close()  # leaving a background stream does not stop the run
    rid = head[0].response.id
    rest = list(client.responses.retrieve(rid, stream=True, starting_after=2))
    events = head + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events[:3]] == ["response.created", "response.queued",
                                            "response.in_progress"]
    assert events[0].response.status == "queued"
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Hello! How can I help?"


def test_background_cancel_aborts_the_engine_request(serve):
    client, engine, running = serve(REASON_AND_ANSWER)
    engine.gate = asyncio.Event()  # the request waits in the engine's queue
    queued = client.responses.create(model=MODEL, input="Hi", background=True)
    wait_until(lambda: engine.admitted, "admitted")
    cancelled = client.responses.cancel(queued.id)
    assert cancelled.status == "cancelled"
    assert engine.admitted[0].request_id in engine.aborted
    assert client.responses.retrieve(queued.id).status == "cancelled"
    doomed = client.responses.create(model=MODEL, input="Hi", background=True)
    wait_until(lambda: len(engine.admitted) == 2, "admitted")
    client.responses.delete(doomed.id)  # a live run: stopped, then removed
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(doomed.id)
    assert engine.admitted[1].request_id in engine.aborted
    running.loop.call_soon_threadsafe(engine.gate.set)
    done = client.responses.create(model=MODEL, input="x")
    with pytest.raises(openai.BadRequestError):  # a foreground response cannot be cancelled
        client.responses.cancel(done.id)


def test_concurrent_children_of_one_parent(serve):
    client, engine, running = serve(REASON_AND_ANSWER)
    parent = client.responses.create(model=MODEL, input="Parent")
    results: dict[int, str] = {}

    def child(i: int) -> None:
        r = client.responses.create(model=MODEL, input=f"child {i}",
                                    previous_response_id=parent.id)
        results[i] = r.id

    threads = [threading.Thread(target=child, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6
    tok = get_tokenizer()
    prompts = [tok.decode(list(r.prompt_token_ids)) for r in engine.admitted[1:]]
    for prompt in prompts:
        assert "<|start|>user<|message|>Parent<|end|>" in prompt
        assert sum(f"child {i}" in prompt for i in range(6)) == 1
    for i, rid in results.items():  # each child chains on from its own turn only
        grand = client.responses.create(model=MODEL, input="next", previous_response_id=rid)
        text = tok.decode(list(engine.admitted[-1].prompt_token_ids))
        assert grand.status == "completed" and f"child {i}" in text
        assert sum(f"child {j}" in text for j in range(6)) == 1


def test_client_leaving_stops_the_tool_loop(serve):
    python = FakePython(hang=asyncio.Event())
    script = by_prompt([(None, PY_CALL)])
    client, engine, running = serve(script, tools={"code_interpreter": python})
    stream = client.responses.create(model=MODEL, input="x", stream=True,
                                     tools=[{"type": "code_interpreter"}])
    for event in stream:
        if event.type == "response.code_interpreter_call.interpreting":
            rid = event.item_id
            break
    stream.close()
    wait_until(lambda: python.cancelled == 1, "the tool call cancelled")
    assert rid and len(engine.admitted) == 1  # no further model call
    with pytest.raises(openai.APITimeoutError):  # not streamed: the client gives up waiting
        client.responses.create(model=MODEL, input="x", tools=[{"type": "code_interpreter"}],
                                timeout=1.0)
    wait_until(lambda: python.cancelled == 2, "the second tool call cancelled")
    assert len(engine.admitted) == 2


def test_real_engine_stream_equals_stored(tiny_server):
    """The tiny random model (real engine, noise output): whatever it writes, the stream adds up
    to the stored response and the status says how it ended."""
    client = openai.OpenAI(base_url=tiny_server.base_url + "/v1", api_key="x", max_retries=0)
    events = list(client.responses.create(model=MODEL, input="hi", max_output_tokens=24,
                                          stream=True, temperature=0))
    folded = fold_events(events)
    final = folded["response"]
    assert final.status in ("completed", "incomplete")
    assert final.usage.output_tokens <= 24
    assert client.responses.retrieve(final.id).model_dump() == final.model_dump()
    texts = {i: item_text(item) for i, item in enumerate(final.output)}
    assert {i: t for i, t in texts.items() if t} == {i: t for i, t in folded["texts"].items() if t}


def test_real_engine_text_format_and_forced_call(tiny_server):
    """Constrained decoding with the tiny random model: `responses.parse` gets an instance of
    the Pydantic model, a named tool_choice a call whose arguments fit the function's schema."""
    import jsonschema
    from test_constrained_server import ADD, BUDGET, Trip

    client = openai.OpenAI(base_url=tiny_server.base_url + "/v1", api_key="x", max_retries=0)
    out = client.responses.parse(model=MODEL, input="Plan a trip.", text_format=Trip,
                                 max_output_tokens=200, temperature=1.0, extra_body=BUDGET)
    assert out.status == "completed" and isinstance(out.output_parsed, Trip)
    assert Trip.model_validate_json(out.output_text) == out.output_parsed
    add = {"type": "function", **ADD["function"]}
    called = client.responses.create(model=MODEL, input="Add.", tools=[add], extra_body=BUDGET,
                                     tool_choice={"type": "function", "name": "add"},
                                     max_output_tokens=100)
    call = called.output[-1]
    assert call.type == "function_call" and call.name == "add"
    jsonschema.validate(json.loads(call.arguments), add["parameters"])
