"""What the chat and completions handlers hand the engine for structured outputs: a constraint
exactly when an option asks for one, the server's reasoning budget as the default that a
request's own `max_reasoning_tokens` overrides, and the `# Response Formats` section in the
prompt (the constraint itself is tested in tests/constrain, the fake engine ignores it)."""

from __future__ import annotations

from gptoss_serve.harmony.render import RenderOptions, render_chat

USER = [{"role": "user", "content": "hi"}]
FINAL = "<|channel|>final<|message|>{}<|return|>"
RF = {"type": "json_schema", "json_schema": {"name": "obj", "schema": {"type": "object"}}}


def _chat(client, **body):
    resp = client.post("/v1/chat/completions", json={"model": "gpt-oss-test", "messages": USER,
                                                     **body})
    assert resp.status_code == 200, resp.text


def test_constraint_only_when_asked(make_client):
    client, engine = make_client(FINAL, FINAL, FINAL)
    _chat(client)
    _chat(client, response_format={"type": "text"})
    _chat(client, response_format=RF)
    plain, text, schema = (r.sampling_params.constraint for r in engine.admitted)
    assert plain is None and text is None
    assert schema is not None and schema.max_reasoning_tokens is None


def test_server_budget_is_the_default(make_client):
    client, engine = make_client(FINAL, FINAL, default_max_reasoning_tokens=7)
    _chat(client)
    _chat(client, max_reasoning_tokens=0, response_format=RF)
    default, own = (r.sampling_params.constraint for r in engine.admitted)
    assert default.max_reasoning_tokens == 7 and default.after_budget is not None
    assert own.max_reasoning_tokens == 0


def test_prompt_carries_the_response_format_section(make_client, tok):
    client, engine = make_client(FINAL)
    _chat(client, response_format=RF)
    want = render_chat(USER, RenderOptions(current_date="2025-06-28", response_format=RF))
    plain = render_chat(USER, RenderOptions(current_date="2025-06-28"))
    assert list(engine.admitted[0].prompt_token_ids) == want.token_ids != plain.token_ids
    assert "# Response Formats\n\n## obj\n\n{\"type\":\"object\"}" in tok.decode(want.token_ids)


def test_completions_constraint(make_client):
    client, engine = make_client("abc", "abc")
    for extra in ({"structured_outputs": {"regex": "[a-c]+"}}, {}):
        resp = client.post("/v1/completions", json={"model": "gpt-oss-test", "prompt": "x",
                                                    **extra})
        assert resp.status_code == 200, resp.text
    constrained, plain = (r.sampling_params.constraint for r in engine.admitted)
    assert constrained is not None and not constrained.harmony
    assert plain is None
