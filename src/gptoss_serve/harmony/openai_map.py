"""Maps parser events to OpenAI chat fields: content, reasoning, tool calls, finish reason.

Owns the mapping rules (docs/model-facts.md §6.1, docs/guards.md 3-11):
- `analysis` -> reasoning; `final` and recipient-less `commentary` (preamble) -> content;
- recipient `functions.NAME` (or a bare NAME) whose sanitised NAME is a declared tool -> a tool call
  on any channel, also when closed by `<|return|>`; its arguments are the text as the model wrote
  it (an empty finished call gets `{}`); the first delta of a call carries index, id and name;
- any other recipient (unknown function, `browser.*`, `python`, ...) -> text: reasoning on the
  analysis channel, content elsewhere; a message the model wrote as another author -> content;
- several messages of one field are joined with "\\n", sent as part of the stream, so the
  concatenated deltas are the whole field (the mapper accumulates no text: its consumer, e.g.
  `api/choice.py: ChoiceState`, is the one owner of the output, built from these deltas).
- Length cut inside a tool call: the partial call stays in `tool_calls` (it was already streamed,
  and streaming must equal non-streaming), `open_call` is True and the finish reason is "length",
  never "tool_calls", so no client takes it for a finished call.
Must not know: HTTP, pydantic schemas, the engine.

Follows vLLM's harmony chat path (`serving_chat.py`, `harmony_utils.py`, the `openai` tool
parser).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gptoss_serve.harmony.parser import (
    ContentDelta,
    MessageEnd,
    MessageStart,
    ParserEvent,
    StreamParser,
)

_STRIP = " \t\n\"'`.,:;<>|()[]{}"


@dataclass
class ToolCallDelta:
    index: int
    id: str | None  # set only on the first delta of a call
    name: str | None  # set only on the first delta of a call
    arguments: str


@dataclass
class ChatDelta:
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def declared_tool_name(recipient: str | None, declared: set[str]) -> str | None:
    """The declared function a recipient addresses after sanitising, else None."""
    if not recipient:
        return None
    name = recipient.strip(_STRIP)
    if name.startswith("functions."):
        name = name[len("functions."):].strip(_STRIP)
    elif name not in declared:  # other namespaces (browser.*, python) are not functions
        return None
    if name in declared:
        return name
    for junk in ("json", "code"):  # a content type glued to the name: `shelljson`
        if name.endswith(junk) and name[: -len(junk)].strip(_STRIP) in declared:
            return name[: -len(junk)].strip(_STRIP)
    return None


class ChatMapper:
    """Token ids -> ChatDelta list. Keeps only what its rules need (which fields have text,
    how many tool calls, whether the last is open and has arguments), never the text."""

    def __init__(self, declared_tools: Iterable[str] = ()):
        self.parser = StreamParser()
        self._declared = set(declared_tools)
        self._has_text = {"content": False, "reasoning": False}
        self.num_tool_calls = 0
        self._call_has_arguments = False
        self.open_call = False  # the last tool call has not been closed by a stop token
        self._kind = "content"  # where the current message's text goes: content|reasoning|tool
        self._needs_separator = False
        self._flushed = False

    @property
    def anomalies(self):
        return self.parser.anomalies

    def feed(self, token_ids: Sequence[int]) -> list[ChatDelta]:
        return self._map(self.parser.feed(token_ids))

    def flush(self) -> list[ChatDelta]:
        """Deltas still held by the parser at the end of generation; call once, before finish."""
        if self._flushed:
            return []
        self._flushed = True
        return self._map(self.parser.finish())

    def finish(self, engine_reason: str | None) -> str:
        """The finish reason: "length" when cut, "tool_calls" when a call finished, else stop."""
        self.flush()  # no-op when the caller already streamed the tail
        if engine_reason == "length":
            return "length"
        if self.num_tool_calls and not self.open_call:
            return "tool_calls"
        return engine_reason or "stop"

    # --- mapping --------------------------------------------------------------------------
    def _map(self, events: list[ParserEvent]) -> list[ChatDelta]:
        deltas = []
        for event in events:
            delta = self._on_event(event)
            if delta is not None:
                self._apply(delta)
                deltas.append(delta)
        return deltas

    def _on_event(self, event: ParserEvent) -> ChatDelta | None:
        if isinstance(event, MessageStart):
            return self._start(event)
        if isinstance(event, ContentDelta):
            return self._text(event.text)
        return self._end(event)

    def _start(self, start: MessageStart) -> ChatDelta | None:
        name = declared_tool_name(start.recipient, self._declared)
        if start.role == "assistant" and name is not None:
            self._kind, self.open_call = "tool", True
            call = ToolCallDelta(self.num_tool_calls, new_call_id(), name, "")
            return ChatDelta(tool_calls=[call])
        self._kind = "reasoning" if start.channel == "analysis" else "content"
        self._needs_separator = self._has_text[self._kind]
        return None

    def _text(self, text: str) -> ChatDelta:
        if self._kind == "tool":
            return ChatDelta(tool_calls=[ToolCallDelta(self.num_tool_calls - 1, None, None, text)])
        if self._needs_separator:
            text, self._needs_separator = "\n" + text, False
        if self._kind == "reasoning":
            return ChatDelta(reasoning=text)
        return ChatDelta(content=text)

    def _end(self, end: MessageEnd) -> ChatDelta | None:
        if self._kind != "tool":
            return None
        self._kind = "content"
        if end.stop_token is None:
            return None  # cut or broken off: stays open
        self.open_call = False
        if not self._call_has_arguments:
            return ChatDelta(tool_calls=[ToolCallDelta(self.num_tool_calls - 1, None, None, "{}")])
        return None

    def _apply(self, delta: ChatDelta) -> None:
        """Note what the rules need of a delta sent (not its text)."""
        if delta.content:
            self._has_text["content"] = True
        if delta.reasoning:
            self._has_text["reasoning"] = True
        for call in delta.tool_calls:
            if call.id is not None:
                self.num_tool_calls += 1
                self._call_has_arguments = False
            self._call_has_arguments |= bool(call.arguments)
