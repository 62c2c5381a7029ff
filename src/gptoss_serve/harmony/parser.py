"""Streaming parser for gpt-oss output: generated token ids -> message events. Never raises.

Owns: the harmony message grammar as the model actually writes it (docs/model-facts.md §5.9) and the
recovery from each malformed shape of docs/guards.md 2-6 (role words in headers, recipient before or
after the channel, `<|constrain|>` with or without a space, a missing `<|start|>` or `<|end|>`,
text after `<|end|>`, output cut mid-header or mid-content). No control token's text, and no
special-token name spelled out with ordinary tokens, ever reaches a ContentDelta. Recovered
oddities are counted in `anomalies`. Must not know: OpenAI field names, declared tools, HTTP.

The parser starts inside a header because the prompt ends with `<|start|>assistant`.

Text where a header should be is content as soon as it cannot be a header: when it has no
`<|channel|>`/`<|constrain|>` token and its text neither begins like one (`to=`, `functions.`, a
role word) nor, after `BARE_HEADER_TOKENS` tokens, holds a `to=`. A header that looked like one
but reaches no `<|message|>` within `MAX_HEADER_TOKENS` tokens is content too. So a model that
writes no header (a random checkpoint, a base model) streams content from its first token.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from gptoss_serve.harmony.tokenizer import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    ENDOFTEXT,
    MESSAGE,
    RETURN,
    START,
    VOCAB_SIZE,
    get_tokenizer,
)

STOPS = frozenset({END, RETURN, CALL, ENDOFTEXT})  # ids that close a message
MAX_HEADER_TOKENS = 48  # a longer "header" is content whose <|message|> the model forgot
BARE_HEADER_TOKENS = 8  # a header without a channel must show `to=` within this many tokens
ROLE_WORDS = frozenset({"assistant", "user", "system", "developer"})
HEADER_OPENERS = ("to=", "functions.", *sorted(ROLE_WORDS))  # how a channel-less header begins
_FIXED_NAMES = ("start", "end", "message", "channel", "constrain", "return", "call",
                "endoftext", "startoftext", "endofprompt")
SPECIAL_NAME_RE = re.compile(r"<\|(?:" + "|".join(_FIXED_NAMES) + r"|reserved_\d+)\|>")
_CHANNEL_RE = re.compile(r"<\|channel\|>\s*([^\s<]*)")


@dataclass(frozen=True)
class MessageStart:
    role: str
    channel: str | None
    recipient: str | None
    content_type: str | None  # without `<|constrain|>`; see `constrained`
    constrained: bool = False  # the content type followed a `<|constrain|>` token


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class MessageEnd:
    stop_token: int | None  # None: closed by a recovery (missing <|end|>) or by finish()


ParserEvent = MessageStart | ContentDelta | MessageEnd


@dataclass
class Header:
    """A parsed header; `extra` holds words that fit no field (a sign it was really content)."""

    start: MessageStart
    text_after_channel: str
    extra: list[str] = field(default_factory=list)
    has_marker: bool = False  # a channel or `to=` was present

    @property
    def plausible(self) -> bool:
        return self.has_marker and not self.extra


def scrub(text: str) -> str:
    """Remove special-token names (repeatedly, since removal can join a new one)."""
    while (cleaned := SPECIAL_NAME_RE.sub("", text)) != text:
        text = cleaned
    return text


def _fields(parts: list[str]) -> tuple[str | None, str | None, bool, list[str], str | None]:
    """(recipient, content type, constrained, leftover words, author) from header words."""
    recipient = ctype = author = None
    constrained = False
    kept = []
    for part in parts:
        if part.startswith("to=") and recipient is None:
            recipient = part[3:] or None
        elif part.startswith("<|constrain|>"):
            word = scrub(part[len("<|constrain|>"):])
            if ctype is None:
                ctype, constrained = word or None, True
            elif word:  # a second marker: its word is ordinary header text
                kept.append(word)
        elif part not in ROLE_WORDS:
            kept.append(part)
    if recipient == "assistant":  # a message addressed to the assistant: a tool is its author
        recipient, author = None, (kept.pop(0) if kept else "tool")
    if recipient is None and kept:
        recipient = kept.pop(0)
    if ctype is None and kept:
        ctype = kept.pop()
    return recipient, ctype, constrained, kept, author


def parse_header(text: str) -> Header:
    """Header text (special tokens spelled as names) -> fields, per docs/model-facts.md §5.9."""
    channels = _CHANNEL_RE.findall(text)
    match = _CHANNEL_RE.search(text)
    after = text[match.end():] if match else text
    rest = _CHANNEL_RE.sub(" ", text).replace("<|constrain|>", " <|constrain|>")
    parts = [p for p in (scrub(w) if not w.startswith("<|constrain|>") else w
                         for w in rest.split()) if p]
    recipient, ctype, constrained, extra, author = _fields(parts)
    if recipient == "all":
        recipient = None
    start = MessageStart(
        role=author or "assistant", channel=(scrub(channels[0]) or None) if channels else None,
        recipient=recipient, content_type=scrub(ctype) if ctype else None, constrained=constrained,
    )
    has_marker = bool(channels) or "to=" in text
    return Header(start, scrub(after).lstrip(), extra, has_marker)


def _could_begin_name(tail: str) -> bool:
    """True when `tail` may still grow into a special-token name."""
    if tail in ("<", "<|"):
        return True
    if not tail.startswith("<|"):
        return False
    body = tail[2:]
    if any((name + "|>").startswith(body) for name in _FIXED_NAMES):
        return True
    return "reserved_".startswith(body) or re.fullmatch(r"reserved_\d+\|?", body) is not None


class _Scrubber:
    """Streaming version of `scrub`: holds back a tail that could still become a name."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> str:
        merged = scrub(self._pending + text)
        cut = next((i for i in range(max(0, len(merged) - 20), len(merged))
                    if merged[i] == "<" and _could_begin_name(merged[i:])), len(merged))
        self._pending = merged[cut:]
        return merged[:cut]

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text


class StreamParser:
    """Feeds generated token ids; returns events. Same events for any chunking of the input."""

    def __init__(self) -> None:
        self._tok = get_tokenizer()
        self.anomalies: Counter[str] = Counter()
        self._state = "header"  # "expect_start" | "header" | "content"
        self._header: list[int] = []
        self._decoder = self._tok.incremental_decoder()
        self._scrubber = _Scrubber()

    def feed(self, token_ids: Sequence[int]) -> list[ParserEvent]:
        events: list[ParserEvent] = []
        for token_id in token_ids:
            if not (isinstance(token_id, int) and 0 <= token_id < VOCAB_SIZE):
                self.anomalies["bad_token_id"] += 1
                continue
            handler = {"expect_start": self._on_expect_start, "header": self._on_header,
                       "content": self._on_content}[self._state]
            handler(token_id, events)
        return events

    def finish(self) -> list[ParserEvent]:
        """Generation ended: close an open message and surface whatever it had."""
        events: list[ParserEvent] = []
        if self._state == "content":
            self._close_content(None, events)
        elif self._state == "header" and self._tok.decode(self._header).strip():
            self.anomalies["cut_in_header"] += 1
            self._salvage_header(None, events)
        self._state, self._header = "expect_start", []
        return events

    # --- states ---------------------------------------------------------------------------
    def _on_expect_start(self, token_id: int, events: list[ParserEvent]) -> None:
        if token_id == START:
            self._state, self._header = "header", []
        elif token_id in STOPS:
            self.anomalies["stray_stop"] += 1
        elif self._tok.is_special(token_id) and token_id not in (CHANNEL, MESSAGE, CONSTRAIN):
            self.anomalies["stray_special"] += 1
        else:  # `<|channel|>` or text without `<|start|>`: a header begins anyway
            self.anomalies["missing_start"] += 1
            self._state, self._header = "header", []
            self._on_header(token_id, events)

    def _on_header(self, token_id: int, events: list[ParserEvent]) -> None:
        if token_id == MESSAGE:
            self._open_message(events)
        elif token_id == START:
            if self._tok.decode(self._header).strip():
                self.anomalies["start_in_header"] += 1
            self._header = []
        elif token_id in STOPS:
            self.anomalies["stop_in_header"] += 1
            self._salvage_header(token_id, events)
            self._state, self._header = "expect_start", []
        elif self._tok.is_special(token_id) and token_id not in (CHANNEL, CONSTRAIN):
            self.anomalies["stray_special"] += 1
        else:
            self._header.append(token_id)
            if len(self._header) > MAX_HEADER_TOKENS:
                self.anomalies["header_too_long"] += 1
                self._salvage_header(None, events, keep_open=True)
            elif not self._may_be_header():
                self.anomalies["no_header"] += 1
                self._salvage_header(None, events, keep_open=True)

    def _on_content(self, token_id: int, events: list[ParserEvent]) -> None:
        if token_id in STOPS:
            self._close_content(token_id, events)
            self._state = "expect_start"
        elif token_id in (START, CHANNEL):  # the model skipped `<|end|>`
            self.anomalies["missing_end"] += 1
            self._close_content(None, events)
            self._state, self._header = "header", [token_id] if token_id == CHANNEL else []
        elif self._tok.is_special(token_id):
            self.anomalies["stray_special"] += 1
        else:
            self._emit(self._scrubber.feed(self._decoder.feed(token_id)), events)

    # --- helpers --------------------------------------------------------------------------
    def _may_be_header(self) -> bool:
        """Whether the header tokens so far can still be a header (see the module docstring)."""
        if CHANNEL in self._header or CONSTRAIN in self._header:
            return True
        text = self._tok.decode(self._header).lstrip()
        if text.endswith("\ufffd"):  # half a character: wait for the rest
            return len(self._header) <= BARE_HEADER_TOKENS
        if len(self._header) > BARE_HEADER_TOKENS and "to=" not in text:
            return False
        return any(text.startswith(w) or w.startswith(text) for w in HEADER_OPENERS)

    def _open_message(self, events: list[ParserEvent]) -> None:
        header = parse_header(self._tok.decode(self._header))
        if header.extra:
            self.anomalies["header_extra_words"] += 1
        events.append(header.start)
        self._state, self._header = "content", []

    def _salvage_header(self, stop: int | None, events: list[ParserEvent],
                        keep_open: bool = False) -> None:
        """A header that never reached `<|message|>`: keep its fields, or treat it as content."""
        header = parse_header(self._tok.decode(self._header))
        if header.plausible and not keep_open:
            events.append(header.start)
        else:
            start = header.start
            events.append(MessageStart("assistant", start.channel, None, None))
            self._emit(self._scrubber.feed(header.text_after_channel), events)
        if keep_open:
            self._state, self._header = "content", []
        else:
            self._close_content(stop, events)

    def _close_content(self, stop: int | None, events: list[ParserEvent]) -> None:
        self._emit(self._scrubber.feed(self._decoder.flush()) + self._scrubber.flush(), events)
        events.append(MessageEnd(stop))

    @staticmethod
    def _emit(text: str, events: list[ParserEvent]) -> None:
        if text:
            events.append(ContentDelta(text))
