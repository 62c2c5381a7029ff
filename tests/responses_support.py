"""Helpers of the Responses API tests: scripted models that answer by conversation state, fake
built-in tools with the real interface, and folding a stream of the client's event objects."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gptoss_serve.api.testing import script_ids
from gptoss_serve.engine.request import EngineRequest
from gptoss_serve.harmony.tokenizer import get_tokenizer
from gptoss_serve.tools.base import ToolOutput

REASON_AND_ANSWER = ("<|channel|>analysis<|message|>The user greets.<|end|>"
                     "<|start|>assistant<|channel|>final<|message|>Hello! How can I help?"
                     "<|return|>")
WEATHER_CALL = ("<|channel|>analysis<|message|>Need the weather.<|end|>"
                "<|start|>assistant<|channel|>commentary to=functions.get_weather "
                '<|constrain|>json<|message|>{"city":"Tokyo"}<|call|>')
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather of a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def by_prompt(rules: list[tuple[str | None, str]]) -> Callable[[EngineRequest, int], list[int]]:
    """A script replying by the prompt's last message (the text after the last `<|start|>`
    before the generation prompt): the first rule whose marker occurs in it wins; None matches
    anything."""
    tok = get_tokenizer()

    def script(request: EngineRequest, _index: int) -> list[int]:
        text = tok.decode(list(request.prompt_token_ids))
        last = text.rsplit("<|start|>", 2)[-2] if text.count("<|start|>") > 1 else text
        for marker, reply in rules:
            if marker is None or marker in last:
                return script_ids(tok, reply)
        raise AssertionError(f"no scripted reply for a prompt ending {last[-200:]!r}")

    return script


@dataclass
class FakePython:
    """The BuiltinTool interface; evaluates one arithmetic expression per call, keeps a count
    per session (to show the session id is the conversation's), can be made to hang."""

    namespace: str = "python"
    tool_type: str = "code_interpreter"
    hang: asyncio.Event | None = None
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    cancelled: int = 0
    closed: bool = False
    closed_sessions: list[str] = field(default_factory=list)

    def description(self) -> dict[str, Any]:
        return {"name": "python", "description": "Runs Python. Times out after 7 seconds.",
                "tools": []}

    async def run(self, session_id: str, recipient: str, body: str) -> ToolOutput:
        self.calls.append((session_id, recipient, body))
        if self.hang is not None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        value = str(eval(body, {"__builtins__": {}}))  # test input only: arithmetic
        item = {"type": "code_interpreter_call", "code": body, "container_id": session_id,
                "outputs": [{"type": "logs", "logs": value}], "status": "completed"}
        return ToolOutput("python", value, item)

    def annotations(self, session_id: str, text: str) -> list[dict[str, Any]]:
        return []

    def close_session(self, session_id: str) -> None:
        self.closed_sessions.append(session_id)

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeBrowser:
    """The BuiltinTool interface over a two-page corpus; cites `【0†L1】` as the first page."""

    namespace: str = "browser"
    tool_type: str = "web_search"
    calls: list[tuple[str, str, str]] = field(default_factory=list)

    def description(self) -> dict[str, Any]:
        from gptoss_serve.harmony.builtin_tools import BROWSER

        return BROWSER

    async def run(self, session_id: str, recipient: str, body: str) -> ToolOutput:
        self.calls.append((session_id, recipient, body))
        text = "[0] Tokyo weather (file:///corpus/tokyo.md)\nL1: Tokyo is sunny today."
        item = {"type": "web_search_call", "status": "completed",
                "action": {"type": "search", "query": "tokyo weather"}}
        return ToolOutput(recipient, text, item)

    def annotations(self, session_id: str, text: str) -> list[dict[str, Any]]:
        mark = "【0†L1】"
        at = text.find(mark)
        if at < 0:
            return []
        return [{"type": "url_citation", "start_index": at, "end_index": at + len(mark),
                 "url": "file:///corpus/tokyo.md", "title": "Tokyo weather"}]

    def close_session(self, session_id: str) -> None:
        pass

    def close(self) -> None:
        pass


def fold_events(events: list[Any]) -> dict[str, Any]:
    """Per output index, the text the deltas add up to, and the last response object."""
    texts: dict[int, str] = {}
    last = None
    for e in events:
        if e.type.endswith(".delta"):
            texts[e.output_index] = texts.get(e.output_index, "") + e.delta
        if e.type in ("response.completed", "response.incomplete", "response.failed"):
            last = e.response
    return {"texts": texts, "response": last}


def item_text(item: Any) -> str:
    """The streamed text of an output item (reasoning, message, call arguments or code)."""
    kind = item.type
    if kind in ("reasoning", "message"):
        return "".join(c.text for c in item.content or [])
    if kind == "function_call":
        return item.arguments
    if kind == "code_interpreter_call":
        return item.code or ""
    return ""


def event_models() -> dict[str, Any]:
    """The openai package's event model for each Responses event type."""
    import typing

    from openai.types.responses import ResponseStreamEvent

    union = typing.get_args(ResponseStreamEvent)[0]
    return {typing.get_args(m.model_fields["type"].annotation)[0]: m
            for m in typing.get_args(union)}
