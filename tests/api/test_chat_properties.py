"""Property tests through the API (docs/guards.md 1, 5, 7, 9): any token stream the model may emit,
mixing text and every control token, gives a 200, no `<|...|>` text in any field, and the same
fields streamed (in any step size) as not streamed. Also: the system message's date."""

from __future__ import annotations

import datetime as dt
import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptoss_serve.api.testing import fold_stream, message_fields, without_ids

MODEL = "gpt-oss-test"
USER = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather"}}]
SPECIAL = [200002, 200003, 200005, 200006, 200007, 200008, 200012, 199999, 200020]
WORDS = ["analysis", "final", "commentary", " to=functions.get_weather", "json", " hello",
         "<|", "|>", "end", "assistant", " {\"a\": 1}", "functions", ".get_weather", "é", "\n"]
# a control token's name, also when the model spells it with ordinary tokens ("<|" "end" "|>")
CONTROL = re.compile(r"<\|(start|end|message|channel|constrain|return|call|endoftext|"
                     r"startoftext|reserved_\d+)\|>")


@st.composite
def model_output(draw, tok, words=tuple(WORDS)) -> list[int]:
    pieces = draw(st.lists(st.one_of(st.sampled_from(SPECIAL), st.sampled_from(words)),
                           min_size=1, max_size=30))
    ids: list[int] = []
    for p in pieces:
        ids.extend([p] if isinstance(p, int) else tok.encode(p))
    return ids


def test_any_output_maps_cleanly(oai, tok):
    client, engine = oai([1])

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(ids=model_output(tok), step=st.integers(1, 5))
    def check(ids, step):
        engine.script = lambda _r, _i: ids
        engine.tokens_per_step = step
        args = {"model": MODEL, "messages": USER, "tools": TOOLS, "extra_body": {
            "ignore_eos": True}}
        full = client.chat.completions.create(**args)
        chunks = list(client.chat.completions.create(**args, stream=True))
        fields = message_fields(full.choices[0])
        assert not CONTROL.search(json.dumps(fields)), fields
        assert without_ids(fold_stream(chunks)["choices"][0]) == without_ids(fields)
        assert full.usage.completion_tokens == len(ids)

    check()


def _prompt_text(make_client, tok, date) -> str:
    client, _ = make_client(current_date=date)
    ids = client.post("/tokenize", json={"messages": USER}).json()["tokens"]
    return tok.decode(ids)


def test_system_date(make_client, tok):
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert "Current date: 2024-02-29" in _prompt_text(make_client, tok, "2024-02-29")
    assert "Current date:" not in _prompt_text(make_client, tok, None)
    assert f"Current date: {today}" in _prompt_text(make_client, tok, "today")
