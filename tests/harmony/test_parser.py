"""Streaming parser: well-formed output vs openai-harmony, every malformed shape, properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss_serve.harmony.parser import (
    SPECIAL_NAME_RE,
    ContentDelta,
    MessageEnd,
    MessageStart,
    StreamParser,
    parse_header,
)
from gptoss_serve.harmony.tokenizer import CALL, END, RETURN, get_tokenizer


def run(token_ids, chunk: int = 1):
    parser = StreamParser()
    events = []
    for i in range(0, len(token_ids), chunk):
        events += parser.feed(token_ids[i:i + chunk])
    return events + parser.finish(), parser.anomalies


def messages(events):
    """[(start, text, stop)] from an event list; checks the start/delta/end order."""
    out = []
    for event in events:
        if isinstance(event, MessageStart):
            out.append([event, "", "open"])
        elif isinstance(event, ContentDelta):
            out[-1][1] += event.text
        else:
            assert isinstance(event, MessageEnd) and out[-1][2] == "open"
            out[-1][2] = event.stop_token
    return [tuple(m) for m in out]


WELL_FORMED = [
    "<|channel|>analysis<|message|>User asks 2+2. Simple.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>",
    "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
    '{"location":"San Francisco"}<|call|>',
    " to=functions.lookup<|channel|>commentary json<|message|>{}<|call|>",
    "<|channel|>commentary<|message|>Checking the weather first.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.f <|constrain|>json<|message|>"
    '{"x": [1, 2, "é中"]}<|call|>',
    "<|channel|>analysis to=browser.search code<|message|>"
    '{"query": "gpt-oss"}<|call|>',
    "<|channel|>final<|message|>Ünïcödé 🎉 and ``` code ```\n\n  spaces<|return|>",
]


@pytest.mark.parametrize("text", WELL_FORMED)
def test_well_formed_matches_openai_harmony(text, ids, oracle):
    from openai_harmony import Role

    token_ids = ids(text)
    ours = messages(run(token_ids)[0])
    theirs = oracle.parse_messages_from_completion_tokens(token_ids, Role.ASSISTANT)
    assert len(ours) == len(theirs)
    for (start, body, stop), msg in zip(ours, theirs, strict=True):
        ctype = ("<|constrain|>" if start.constrained else "") + (start.content_type or "")
        assert (start.channel, start.recipient, ctype or None) == (
            msg.channel, msg.recipient, msg.content_type)
        assert body == msg.content[0].text
        assert stop in (END, RETURN, CALL)


def _single(text, ids):
    events, anomalies = run(ids(text))
    found = messages(events)
    assert len(found) == 1, found
    return found[0], anomalies


def test_role_word_repeated_in_first_header(ids):
    (start, body, stop), _ = _single("assistant<|channel|>final<|message|>ok<|return|>", ids)
    assert (start.role, start.channel, start.recipient, body, stop) == (
        "assistant", "final", None, "ok", RETURN)


@pytest.mark.parametrize("header", [
    "<|channel|>commentary to=functions.get_weather <|constrain|>json",  # after, with space
    "<|channel|>commentary to=functions.get_weather<|constrain|>json",  # after, no space
    " to=functions.get_weather<|channel|>commentary <|constrain|>json",  # before the channel
    "assistant to=functions.get_weather<|channel|>commentary<|constrain|>json",
    "<|channel|>commentary to=functions.get_weather json",  # plain content type
])
def test_recipient_positions_and_constrain_forms(header, ids):
    (start, body, stop), _ = _single(header + '<|message|>{"a": 1}<|call|>', ids)
    assert (start.channel, start.recipient, start.content_type) == (
        "commentary", "functions.get_weather", "json")
    assert body == '{"a": 1}' and stop == CALL


def test_missing_start_between_messages(ids):
    for sep in ("<|end|><|channel|>final", "<|end|>assistant<|channel|>final"):
        events, anomalies = run(ids(f"<|channel|>analysis<|message|>think{sep}<|message|>done"))
        found = messages(events)
        assert [(m[0].channel, m[1]) for m in found] == [("analysis", "think"), ("final", "done")]
        assert anomalies["missing_start"] == 1


def test_missing_end_before_next_message(ids):
    events, anomalies = run(ids("<|channel|>analysis<|message|>a<|start|>assistant"
                                "<|channel|>final<|message|>b<|channel|>final<|message|>c"))
    assert [(m[0].channel, m[1], m[2]) for m in messages(events)] == [
        ("analysis", "a", None), ("final", "b", None), ("final", "c", None)]
    assert anomalies["missing_end"] == 2


def test_text_after_end_is_surfaced(ids):
    events, anomalies = run(ids("<|channel|>final<|message|>hi<|end|> and more words"))
    assert [m[1] for m in messages(events)] == ["hi", "and more words"]
    assert anomalies["missing_start"] == 1


def test_call_closed_by_return(ids):
    (start, body, stop), _ = _single(
        "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}<|return|>", ids)
    assert start.recipient == "functions.f" and stop == RETURN


def test_cut_mid_content_and_mid_character(tok):
    token_ids = [200005] + tok.encode("final") + [200008] + tok.encode("abc")
    emoji = [tok._enc.encode_single_token(bytes([b])) for b in "🎉".encode()]
    events, _ = run(token_ids + emoji[:2])
    ((start, body, stop),) = messages(events)
    assert body == "abc\ufffd" and stop is None  # the incomplete character is not lost


def test_cut_mid_header_keeps_fields(ids):
    events, anomalies = run(ids("<|channel|>commentary to=functions.f"))
    ((start, body, stop),) = messages(events)
    assert (start.recipient, body, stop) == ("functions.f", "", None)
    assert anomalies["cut_in_header"] == 1


def test_stop_in_header_with_text_becomes_content(ids):
    (start, body, stop), anomalies = _single("<|channel|>final The answer is 4<|return|>", ids)
    assert (start.channel, body, stop) == ("final", "The answer is 4", RETURN)
    assert anomalies["stop_in_header"] == 1


def test_runaway_header_becomes_content(ids):
    text = "<|channel|>final " + "word " * 80 + "<|return|>"
    (start, body, stop), anomalies = _single(text, ids)
    assert body.split() == ["word"] * 80 and stop == RETURN
    assert anomalies["header_too_long"] == 1


def test_stray_specials_in_content_are_dropped(ids):
    (start, body, _), anomalies = _single(
        "<|channel|>final<|message|>a<|constrain|>b<|message|>c<|reserved_200100|>d"
        "<|startoftext|>e<|return|>", ids)
    assert body == "abcde" and anomalies["stray_special"] == 4


def test_special_names_spelled_with_text_tokens_are_removed(tok):
    text_ids = tok.encode("x <|") + tok.encode("end|> y <|reserved_2") + tok.encode("00100|> z <b")
    (_, body, _), = messages(run([200005] + tok.encode("final") + [200008] + text_ids)[0])
    assert body == "x  y  z <b"


def test_parse_header_fields():
    header = parse_header("functions.get_weather to=assistant<|channel|>commentary")
    assert (header.start.role, header.start.recipient) == ("functions.get_weather", None)
    assert parse_header("<|channel|>commentary to=all").start.recipient is None



def test_second_constrain_marker_never_becomes_a_recipient():
    # found by the property test below: [<|constrain|>, "!", <|constrain|>, <|channel|>]
    start = parse_header("<|constrain|>!<|constrain|><|channel|>").start
    assert start.content_type == "!"
    assert start.recipient is None
    start = parse_header("<|channel|>commentary <|constrain|>json <|constrain|>functions.f").start
    assert (start.content_type, start.recipient) == ("json", "functions.f")

# --- properties -----------------------------------------------------------------------------
_TEXT_IDS = st.one_of(st.integers(0, 199997), st.sampled_from([27, 91, 29, 5236, 200, 1000]))
_SPECIAL_IDS = st.sampled_from(list(range(199998, 200020)) + [200500, 201087])
_STREAM = st.lists(st.one_of(_TEXT_IDS, _SPECIAL_IDS, _SPECIAL_IDS), max_size=60)


@settings(max_examples=300, deadline=None)
@given(_STREAM, st.integers(2, 7))
def test_random_streams_never_raise_leak_or_depend_on_chunking(token_ids, chunk):
    single, _ = run(token_ids, 1)
    assert run(token_ids, chunk)[0] == single
    assert run(token_ids, len(token_ids) or 1)[0] == single
    for event in single:
        fields = [getattr(event, name, None) for name in
                  ("text", "channel", "recipient", "content_type", "role")]
        for value in fields:
            assert value is None or not SPECIAL_NAME_RE.search(value), event
    messages(single)  # start/delta/end order is always well formed


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["<|", "end", "|>", "<", "|", "start", "x", ">"]), max_size=30))
def test_spelled_names_never_survive(pieces):
    tok = get_tokenizer()
    body = [i for piece in pieces for i in tok.encode(piece)]
    events, _ = run([200005] + tok.encode("final") + [200008] + body + [200007])
    text = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert not SPECIAL_NAME_RE.search(text)
