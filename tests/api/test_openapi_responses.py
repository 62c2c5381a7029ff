"""/openapi.json describes what the server sends (issue 16): every body of every route, and every
event of a stream, validates against the schema the document declares for that route and status
(jsonschema, with `additionalProperties: false` from the response models, so an undeclared key
fails as well as a missing or mistyped one).
"""

from __future__ import annotations

import json

import jsonschema
import pytest

MODEL = "gpt-oss-test"  # the name the make_client fixture serves

USER = [{"role": "user", "content": "Weather in Tokyo?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
REASON_CALL = ("<|channel|>analysis<|message|>Need the weather.<|end|>"
               "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
               '<|message|>{"city": "Tokyo"}<|call|>')
ANSWER = "<|channel|>final<|message|>Sunny, 20 C.<|return|>"


@pytest.fixture
def app_and_doc(make_client):
    client, _ = make_client(REASON_CALL, ANSWER)
    return client, client.get("/openapi.json").json()


def check(doc: dict, path: str, method: str, status: int, body: dict,
          media: str = "application/json") -> None:
    responses = doc["paths"][path][method]["responses"]
    declared = responses.get(str(status)) or responses[f"{str(status)[0]}XX"]
    schema = {**declared["content"][media]["schema"], "components": doc["components"]}
    jsonschema.validate(body, schema)


def events(text: str) -> list[dict]:
    data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


@pytest.mark.parametrize("alias", [True, False])
def test_chat_bodies_and_chunks_match_the_document(make_client, alias):
    client, _ = make_client(REASON_CALL, ANSWER, reasoning_content_alias=alias)
    doc = client.get("/openapi.json").json()
    base = {"model": MODEL, "messages": USER, "tools": TOOLS, "n": 2, "logprobs": True,
            "top_logprobs": 2}
    r = client.post("/v1/chat/completions", json=base)
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["message"]["tool_calls"]  # the shapes below are all exercised
    check(doc, "/v1/chat/completions", "post", 200, body)
    r = client.post("/v1/chat/completions",
                    json={**base, "stream": True, "stream_options": {"include_usage": True}})
    chunks = events(r.text)
    assert chunks[-1]["usage"] and any("tool_calls" in c["choices"][0]["delta"]
                                       for c in chunks if c["choices"])
    for chunk in chunks:
        check(doc, "/v1/chat/completions", "post", 200, chunk, "text/event-stream")


def test_completions_bodies_and_chunks_match_the_document(app_and_doc):
    client, doc = app_and_doc
    base = {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 4, "logprobs": 2}
    r = client.post("/v1/completions", json=base)
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"]["tokens"]
    check(doc, "/v1/completions", "post", 200, r.json())
    for extra in ({"stream_options": {"include_usage": True}}, {"echo": True, "logprobs": None}):
        r = client.post("/v1/completions", json={**base, "stream": True, **extra})
        assert r.status_code == 200
        for chunk in events(r.text):
            check(doc, "/v1/completions", "post", 200, chunk, "text/event-stream")


def test_other_routes_and_errors_match_the_document(app_and_doc):
    client, doc = app_and_doc
    cases = [("/v1/models", "get", client.get("/v1/models")),
             ("/v1/models/{model_id}", "get", client.get(f"/v1/models/{MODEL}")),
             ("/v1/models/{model_id}", "get", client.get("/v1/models/nope")),
             ("/tokenize", "post", client.post("/tokenize", json={"prompt": "hi",
                                                                   "return_token_strs": True})),
             ("/tokenize", "post", client.post("/tokenize", json={"messages": USER})),
             ("/detokenize", "post", client.post("/detokenize", json={"tokens": [1, 2]})),
             ("/detokenize", "post", client.post("/detokenize", json={"tokens": [-1]})),
             ("/v1/chat/completions", "post", client.post("/v1/chat/completions", json={})),
             ("/health", "get", client.get("/health"))]
    statuses = set()
    for path, method, r in cases:
        statuses.add(r.status_code)
        check(doc, path, method, r.status_code, r.json())
    assert statuses == {200, 400, 404}


def test_every_route_declares_its_success_body(app_and_doc):
    _, doc = app_and_doc
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            content = op["responses"]["200"]["content"]
            schema = next(iter(content.values())).get("schema", {})
            assert "$ref" in schema or path == "/metrics", (method, path)
