"""StopStringMatcher: however the text is split into pieces, the emitted text is the text up to
the first stop string (exclusive), and nothing that could start a stop string is shown early."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gptoss_serve.api.stop_strings import StopStringMatcher

ALPHABET = "abc "


def _expected(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


@given(text=st.text(ALPHABET, max_size=40),
       stops=st.lists(st.text(ALPHABET, min_size=1, max_size=4), max_size=4),
       cuts=st.lists(st.integers(0, 40), max_size=10))
def test_any_split_gives_the_text_before_the_first_stop(text, stops, cuts):
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    want, hit = _expected(text, stops)
    m = StopStringMatcher(stops)
    shown = ""
    for piece in pieces:
        shown += m.feed(piece)
        assert want.startswith(shown)  # nothing at or past a stop string is ever shown
    shown += m.flush()
    assert shown == want
    assert (m.matched is not None) == hit


def test_held_back_until_settled():
    m = StopStringMatcher(["STOP"])
    assert m.feed("Hello ST") == "Hello "
    assert m.feed("ill") == "STill"
    assert m.feed(" more ST") == " more "
    assert m.feed("OP and after") == ""
    assert m.matched == "STOP" and m.flush() == ""


def test_no_stops_passes_through():
    m = StopStringMatcher([])
    assert m.feed("abc") == "abc" and m.flush() == ""


def test_earliest_stop_wins():
    m = StopStringMatcher(["cd", "b"])
    assert m.feed("abcd") == "a" and m.matched == "b"
