"""One Responses run in memory: its response object, its numbered event log, its listeners.

Owns the response object's shape (`snapshot`), the event numbering (`sequence_number` from 0,
without gaps, so `starting_after=N` is an index), the wake-up of streams that follow the log, and
the record written to the store. The loop that fills it is `api/tool_loop.py`; the routes are
`api/responses.py`. Knows nothing of HTTP, harmony or the engine.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from gptoss_serve.api.response_store import StoredResponse
from gptoss_serve.api.responses_schemas import ResponsesRequest

TERMINAL = ("completed", "incomplete", "failed", "cancelled")
DEFAULT_TEMPERATURE = 1.0  # OpenAI's default for the Responses API


@dataclass
class Usage:
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens,
                                     "cache_write_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.input_tokens + self.output_tokens,
        }


@dataclass
class ResponseRun:
    id: str
    req: ResponsesRequest
    conversation_id: str
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]  # harmony messages before this request
    created_at: float = field(default_factory=time.time)
    status: str = "queued"
    output: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)  # this run's harmony messages
    token_ids: list[list[int]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    error: dict[str, Any] | None = None
    incomplete_reason: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    task: asyncio.Task | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    # ---- events --------------------------------------------------------------------------
    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type_, "sequence_number": len(self.events), **fields}
        self.events.append(event)
        self.wake()
        return event

    def wake(self) -> None:
        """Let every follower look again (a new event, or the run ended)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    async def follow(self, after: int = -1) -> AsyncIterator[dict[str, Any]]:
        """The events numbered above `after`, then each new one, until the run is done."""
        i = max(after + 1, 0)
        while True:
            while i < len(self.events):
                yield self.events[i]
                i += 1
            if self.done:
                return
            await self._changed.wait()

    # ---- the response object -------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        req = self.req
        fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text else {
            "type": "text"}
        tool_choice = req.tool_choice if isinstance(req.tool_choice, str) else \
            req.tool_choice.model_dump(exclude_none=True)
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "background": req.background,
            "error": self.error,
            "incomplete_details": (
                {"reason": self.incomplete_reason} if self.incomplete_reason else None),
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": req.max_tool_calls,
            "metadata": req.metadata or {},
            "model": req.model,
            "output": copy.deepcopy(self.output),
            "parallel_tool_calls": req.parallel_tool_calls,
            "previous_response_id": req.previous_response_id,
            "reasoning": {"effort": req.effort(), "summary": None},
            "store": req.store,
            "temperature": req.temperature if req.temperature is not None else DEFAULT_TEMPERATURE,
            "text": {"format": fmt},
            "tool_choice": tool_choice,
            "tools": [t.echo() for t in req.tools],
            "top_p": req.top_p if req.top_p is not None else 1.0,
            "truncation": "disabled",
            "usage": self.usage.to_dict() if self.status in TERMINAL else None,
            "user": req.user,
        }

    def record(self) -> StoredResponse:
        return StoredResponse(self.id, self.snapshot(), self.input_items,
                              self.history + self.messages, self.token_ids, self.conversation_id)
