"""One model call of a Responses run: generated token ids -> output items and streaming events.

Owns the mapping of harmony messages onto Responses output items (the Responses counterpart of
`harmony/openai_map.py`, on the same `StreamParser`): `analysis` -> a `reasoning` item with
`reasoning_text`; `final` and recipient-less `commentary` -> a `message` item with `output_text`;
a recipient that is a declared function -> a `function_call` item; a recipient in an enabled
built-in namespace (`python`, `browser.*`) -> a pending built-in call that the tool loop runs;
any other recipient -> text (reasoning on `analysis`, else a message). Each item's events
(`output_item.added`, `content_part.added`, `*.delta`, `*.done`, `output_item.done`) go to the
run's `emit`, in order, so the concatenated deltas equal the stored items. Each finished message
is also kept as a harmony message dict for the conversation (the next model call's prompt).
Knows nothing of HTTP, SQLite or the tools' insides.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gptoss_serve.harmony.openai_map import declared_tool_name, new_call_id
from gptoss_serve.harmony.parser import ContentDelta, MessageEnd, MessageStart, StreamParser

Emit = Callable[..., dict[str, Any]]  # emit(type, **fields) -> the event (with sequence_number)
BUILTIN_NAMESPACES = {"python": "code_interpreter", "browser": "web_search"}


def item_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class PendingCall:
    """A built-in tool call the model finished writing (the loop runs it)."""

    tool_type: str  # "code_interpreter" | "web_search"
    recipient: str  # "python", "browser.search", ...
    channel: str | None
    body: str
    item: dict[str, Any]
    output_index: int


@dataclass
class _Open:
    kind: str  # "reasoning" | "message" | "function_call" | "builtin"
    start: MessageStart
    item: dict[str, Any]
    output_index: int
    text: list[str] = field(default_factory=list)
    recipient: str | None = None
    tool_type: str | None = None


class OutputMapper:
    """Feeds one generation's token ids; appends items to `output` and emits their events."""

    def __init__(self, emit: Emit, output: list[dict[str, Any]], declared: Iterable[str],
                 builtins: Iterable[str], is_special: Callable[[int], bool],
                 annotate: Callable[[str], list[dict[str, Any]]] = lambda _text: []):
        self._emit = emit
        self._annotate = annotate
        self.output = output
        self._declared = set(declared)
        self._builtins = set(builtins)  # enabled tool types
        self._is_special = is_special
        self._parser = StreamParser()
        self._open: _Open | None = None
        self.messages: list[dict[str, Any]] = []  # harmony messages of this call, in order
        self.pending: PendingCall | None = None
        self.token_ids: list[int] = []
        self.reasoning_tokens = 0

    # ---- feeding -------------------------------------------------------------------------
    def feed(self, token_ids: Iterable[int]) -> None:
        for token_id in token_ids:
            self.token_ids.append(token_id)
            for event in self._parser.feed([token_id]):
                self._on_event(event)
            if self._open is not None and self._open.kind == "reasoning" \
                    and not self._is_special(token_id):
                self.reasoning_tokens += 1

    def finish(self, complete: bool) -> None:
        """Generation ended; `complete` is False when it was cut (length, cancel)."""
        for event in self._parser.finish():
            self._on_event(event, complete=complete)

    def _on_event(self, event: Any, complete: bool = True) -> None:
        if isinstance(event, MessageStart):
            self._begin(event)
        elif isinstance(event, ContentDelta):
            self._delta(event.text)
        elif isinstance(event, MessageEnd):
            self._end(complete and event.stop_token is not None)

    # ---- items ---------------------------------------------------------------------------
    def _classify(self, start: MessageStart) -> tuple[str, str | None, str | None]:
        """(kind, normalised recipient, built-in tool type) of a message header."""
        if start.role == "assistant":
            name = declared_tool_name(start.recipient, self._declared)
            if name is not None:
                return "function_call", f"functions.{name}", None
            space = (start.recipient or "").split(".", 1)[0]
            tool_type = BUILTIN_NAMESPACES.get(space)
            if tool_type in self._builtins:
                return "builtin", start.recipient, tool_type
        return ("reasoning" if start.channel == "analysis" else "message"), None, None

    def _begin(self, start: MessageStart) -> None:
        kind, recipient, tool_type = self._classify(start)
        index = len(self.output)
        item = _new_item(kind, tool_type, recipient)
        self.output.append(item)
        self._open = _Open(kind, start, item, index, recipient=recipient, tool_type=tool_type)
        self._emit("response.output_item.added", output_index=index, item=_copy(item))
        if kind in ("reasoning", "message"):
            self._emit("response.content_part.added", item_id=item["id"], output_index=index,
                       content_index=0, part=_part(kind, ""))
        elif tool_type == "code_interpreter":
            self._emit("response.code_interpreter_call.in_progress", item_id=item["id"],
                       output_index=index)
        elif tool_type == "web_search":
            self._emit("response.web_search_call.in_progress", item_id=item["id"],
                       output_index=index)

    def _delta(self, text: str) -> None:
        cur = self._open
        if cur is None:
            return
        cur.text.append(text)
        base = {"item_id": cur.item["id"], "output_index": cur.output_index}
        if cur.kind == "reasoning":
            self._emit("response.reasoning_text.delta", **base, content_index=0, delta=text)
        elif cur.kind == "message":
            self._emit("response.output_text.delta", **base, content_index=0, delta=text,
                       logprobs=[])
        elif cur.kind == "function_call":
            self._emit("response.function_call_arguments.delta", **base, delta=text)
        elif cur.tool_type == "code_interpreter":
            self._emit("response.code_interpreter_call_code.delta", **base, delta=text)

    def _end(self, complete: bool) -> None:
        cur, self._open = self._open, None
        if cur is None:
            return
        text = "".join(cur.text)
        self.messages.append(_harmony_message(cur, text))
        status = "completed" if complete else "incomplete"
        base = {"item_id": cur.item["id"], "output_index": cur.output_index}
        if cur.kind in ("reasoning", "message"):
            self._close_text(cur, text, status, base)
        elif cur.kind == "function_call":
            if not text and complete:  # an empty finished call gets `{}`, streamed like the rest
                text = "{}"
                self._emit("response.function_call_arguments.delta", **base, delta=text)
                self.messages[-1]["content"] = text
            cur.item.update(arguments=text, status=status)
            self._emit("response.function_call_arguments.done", **base,
                       arguments=cur.item["arguments"], name=cur.item["name"])
            self._emit("response.output_item.done", output_index=cur.output_index,
                       item=_copy(cur.item))
        else:
            self._close_builtin(cur, text, complete, base)

    def _close_text(self, cur: _Open, text: str, status: str, base: dict[str, Any]) -> None:
        part = _part(cur.kind, text)
        if cur.kind == "reasoning":
            self._emit("response.reasoning_text.done", **base, content_index=0, text=text)
        else:
            self._emit("response.output_text.done", **base, content_index=0, text=text,
                       logprobs=[])
            for i, note in enumerate(self._annotate(text)):  # url_citation (browser)
                part["annotations"].append(note)
                self._emit("response.output_text.annotation.added", **base, content_index=0,
                           annotation_index=i, annotation=note)
        cur.item["content"] = [part]
        cur.item["status"] = status
        self._emit("response.content_part.done", **base, content_index=0, part=_copy(part))
        self._emit("response.output_item.done", output_index=cur.output_index,
                   item=_copy(cur.item))

    def _close_builtin(self, cur: _Open, text: str, complete: bool, base: dict[str, Any]) -> None:
        if cur.tool_type == "code_interpreter":
            cur.item["code"] = text
            self._emit("response.code_interpreter_call_code.done", **base, code=text)
        if not complete:  # cut mid-call: never run half a call
            cur.item["status"] = "incomplete"
            self._emit("response.output_item.done", output_index=cur.output_index,
                       item=_copy(cur.item))
            return
        self.pending = PendingCall(cur.tool_type or "", cur.recipient or "",
                                   cur.start.channel, text, cur.item, cur.output_index)


def _new_item(kind: str, tool_type: str | None, recipient: str | None) -> dict[str, Any]:
    if kind == "reasoning":
        return {"id": item_id("rs"), "type": "reasoning", "summary": [], "content": [],
                "status": "in_progress"}
    if kind == "message":
        return {"id": item_id("msg"), "type": "message", "role": "assistant", "content": [],
                "status": "in_progress"}
    if kind == "function_call":
        return {"id": item_id("fc"), "type": "function_call", "call_id": new_call_id(),
                "name": (recipient or "").removeprefix("functions."), "arguments": "",
                "status": "in_progress"}
    if tool_type == "code_interpreter":
        return {"id": item_id("ci"), "type": "code_interpreter_call", "code": "",
                "outputs": None, "container_id": "", "status": "in_progress"}
    return {"id": item_id("ws"), "type": "web_search_call", "status": "in_progress",
            "action": {"type": "search", "query": None}}


def _part(kind: str, text: str) -> dict[str, Any]:
    if kind == "reasoning":
        return {"type": "reasoning_text", "text": text}
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _harmony_message(cur: _Open, text: str) -> dict[str, Any]:
    """The finished message as the conversation keeps it (harmony.conversation.HarmonyMessage)."""
    start = cur.start
    content_type = start.content_type
    if content_type is not None and start.constrained:
        content_type = "<|constrain|>" + content_type
    msg = {"role": "assistant", "content": text, "channel": start.channel,
           "recipient": cur.recipient or start.recipient, "content_type": content_type}
    if cur.kind == "function_call":
        msg["call_id"] = cur.item["call_id"]
    return msg


def _copy(value: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(value)
