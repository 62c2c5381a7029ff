"""Stop strings over streamed text: cut at the first match, hold back a possible partial match.

Owns only string logic, so that a stop string split across tokens (or deltas) is still found and
never shown. Knows nothing of tokens, harmony or HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    """Feed text pieces; get back the text that is safe to emit now.

    Text that could be the beginning of a stop string is held back until the next piece settles
    it. After a match, `matched` is True and nothing more is emitted; the stop string itself is
    never part of the output.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.matched: str | None = None
        self._held = ""

    def feed(self, text: str) -> str:
        """Append `text`; return what can be emitted without risking a stop string."""
        if self.matched is not None or not text:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        cut = self._first_match(buf)
        if cut is not None:
            self._held = ""
            return buf[:cut]
        keep = self._partial_suffix_len(buf)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """The generation ended: release held-back text (it cannot become a stop string now)."""
        out, self._held = self._held, ""
        return "" if self.matched is not None else out

    def _first_match(self, buf: str) -> int | None:
        hits = [(buf.find(s), s) for s in self.stops if s in buf]
        if not hits:
            return None
        pos, stop = min(hits)
        self.matched = stop
        return pos

    def _partial_suffix_len(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:k]):
                    best = k
                    break
        return best
