"""Chat completions with the built-in tools (our extension): a chat request whose `tools` include
`code_interpreter` or `web_search` (`web_search_preview`) runs the server's tool loop, the same
`ToolLoop` as `/v1/responses`, and answers in the chat shape.

Owns the mapping of a finished (or streaming) Responses run onto chat fields: reasoning items ->
`reasoning` (+ `reasoning_content`), message items -> `content` (several joined with "\\n", as
the plain chat mapping does), function calls -> `tool_calls`, the built-in calls the server ran ->
the extension field `builtin_tool_calls` (the Responses items), browser citations ->
`annotations` in OpenAI's chat shape (`{"type": "url_citation", "url_citation": {...}}`).
Refused with a 400: `n` > 1, `logprobs`, `stop`, and the constrained-decoding options
(`tool_choice` required/named, `response_format`, `structured_outputs`, `max_reasoning_tokens`:
their grammar does not cover the built-in calls).
Knows nothing of the store (runs are never stored) or the tools' insides.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gptoss_serve.api.context import ApiContext, new_id
from gptoss_serve.api.response_run import ResponseRun
from gptoss_serve.api.responses_schemas import ResponsesRequest, builtin_types_of, check_enabled
from gptoss_serve.api.schemas import ChatCompletionRequest
from gptoss_serve.api.sse import sse_response
from gptoss_serve.api.streaming import unless_disconnected
from gptoss_serve.api.tool_loop import LoopPlan, ToolLoop
from gptoss_serve.errors import InvalidRequestError
from gptoss_serve.harmony.conversation import conversation_from_openai
from gptoss_serve.harmony.render import RenderOptions


def builtin_types(req: ChatCompletionRequest) -> list[str]:
    """The built-in tool types a chat request asks for (canonical names, in order)."""
    if req.tool_choice == "none":
        return []
    return builtin_types_of(req.tools or [])


def _check(req: ChatCompletionRequest, enabled: dict[str, Any]) -> None:
    constrained = req.tool_choice not in (None, "auto", "none")
    formatted = req.response_format is not None and req.response_format.type != "text"
    for field, bad in (("n", req.n > 1), ("logprobs", req.logprobs), ("stop", req.stop_strings()),
                       ("tool_choice", constrained), ("response_format", formatted),
                       ("max_reasoning_tokens", req.max_reasoning_tokens is not None),
                       ("structured_outputs", req.structured_outputs is not None)):
        if bad:
            raise InvalidRequestError(f"{field} is not supported together with built-in tools",
                                      param=field)
    check_enabled(req.tools or [], enabled)


def _loop(ctx: ApiContext, req: ChatCompletionRequest, enabled: dict[str, Any],
          max_turns: int) -> tuple[ResponseRun, ToolLoop]:
    conv = conversation_from_openai([m.model_dump(exclude_none=True) for m in req.messages])
    history = [dataclasses.asdict(m) for m in conv.messages]
    rreq = ResponsesRequest.model_construct(
        model=req.model, max_output_tokens=req.requested_max_tokens(),
        temperature=req.temperature, top_p=req.top_p, seed=req.seed, store=False,
        stream=req.stream, background=False)
    run = ResponseRun(new_id("chatcmpl"), rreq, "", [], history)
    run.conversation_id = run.id  # one tool session per request: chat has no chains
    functions = [t.model_dump(exclude_none=True) for t in req.tools or [] if t.type == "function"]
    tools = {t: enabled[t] for t in builtin_types(req)}
    options = RenderOptions(reasoning_effort=req.reasoning_effort,
                            current_date=ctx.current_date(), tools=functions or None,
                            builtin_tools=tuple(t.description() for t in tools.values()))
    return run, ToolLoop(ctx, run, LoopPlan(conv.instructions, options, tools, max_turns))


async def create_chat_with_tools(ctx: ApiContext, request: Request, req: ChatCompletionRequest,
                                 enabled: dict[str, Any], max_turns: int) -> Response:
    ctx.check_model(req.model)
    _check(req, enabled)
    run, loop = _loop(ctx, req, enabled, max_turns)
    outputs = await unless_disconnected(request, loop.start_call())
    if outputs is None:
        return Response(status_code=499)
    run.task = asyncio.ensure_future(_execute(loop, outputs))
    view = ChatView(run, req, ctx.config.reasoning_content_alias)
    if req.stream:
        return sse_response(view.chunks())  # closing it (client gone) cancels the run
    if await unless_disconnected(request, asyncio.shield(run.task)) is None and not run.done:
        run.task.cancel()
        return Response(status_code=499)
    return JSONResponse(view.completion())


async def _execute(loop: ToolLoop, outputs: Any) -> None:
    try:
        await loop.execute(outputs)
    finally:
        loop.close_sessions()  # a chat request is its own conversation


class ChatView:
    """A Responses run seen as a chat completion (body or chunks)."""

    def __init__(self, run: ResponseRun, req: ChatCompletionRequest, alias: bool):
        self.run, self.req, self.alias = run, req, alias
        self.created = int(time.time())

    def _texts(self, kind: str) -> str | None:
        parts = ["".join(c["text"] for c in item.get("content", []))
                 for item in self.run.output if item["type"] == kind]
        return "\n".join(parts) or None

    def _calls(self) -> list[dict[str, Any]]:
        return [{"id": i["call_id"], "type": "function",
                 "function": {"name": i["name"], "arguments": i["arguments"]}}
                for i in self.run.output if i["type"] == "function_call"]

    def _builtins(self) -> list[dict[str, Any]]:
        return [i for i in self.run.output
                if i["type"] in ("code_interpreter_call", "web_search_call")]

    def _annotations(self) -> list[dict[str, Any]]:
        """url_citation annotations, re-based onto the joined content string."""
        out, offset = [], 0
        for item in (i for i in self.run.output if i["type"] == "message"):
            for part in item.get("content", []):
                for a in part.get("annotations", []):
                    cite = {k: a[k] for k in ("url", "title") if k in a}
                    cite.update(start_index=a["start_index"] + offset,
                                end_index=a["end_index"] + offset)
                    out.append({"type": "url_citation", "url_citation": cite})
                offset += len(part.get("text", ""))
            offset += 1  # the "\n" that joins messages
        return out

    def finish_reason(self) -> str:
        if self.run.incomplete_reason == "max_output_tokens":
            return "length"
        return "tool_calls" if self._calls() else "stop"

    def usage(self) -> dict[str, Any]:
        u = self.run.usage
        return {"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
                "total_tokens": u.input_tokens + u.output_tokens,
                "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
                "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens}}

    def completion(self) -> dict[str, Any]:
        if self.run.status == "failed":
            err = self.run.error or {}
            raise InvalidRequestError(err.get("message", "the tool loop failed"))
        reasoning = self._texts("reasoning")
        msg: dict[str, Any] = {"role": "assistant", "content": self._texts("message"),
                               "reasoning": reasoning, "tool_calls": self._calls() or None,
                               "annotations": self._annotations(),
                               "builtin_tool_calls": self._builtins()}
        if self.alias:
            msg["reasoning_content"] = reasoning
        choice = {"index": 0, "message": msg, "logprobs": None,
                  "finish_reason": self.finish_reason()}
        return {"id": self.run.id, "object": "chat.completion", "created": self.created,
                "model": self.req.model, "choices": [choice], "usage": self.usage()}

    # ---- streaming -----------------------------------------------------------------------
    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk = {"id": self.run.id, "object": "chat.completion.chunk", "created": self.created,
                 "model": self.req.model,
                 "choices": [{"index": 0, "delta": delta, "logprobs": None,
                              "finish_reason": finish}]}
        if self.req.include_usage():
            chunk["usage"] = None
        return chunk

    async def chunks(self) -> AsyncGenerator[dict[str, Any], None]:
        try:
            async for chunk in self._chunks():
                yield chunk
        finally:
            if self.run.task is not None:
                self.run.task.cancel()  # a no-op once the run is done

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        yield self._chunk({"role": "assistant", "content": ""})
        seen: set[str] = set()  # kinds of text already sent (the next item starts with "\n")
        calls: dict[int, int] = {}  # output index -> tool_calls index
        async for event in self.run.follow():
            delta = self._delta(event, seen, calls)
            if delta:
                yield self._chunk(delta)
        if self.run.status == "failed":
            raise InvalidRequestError((self.run.error or {}).get("message", "failed"))
        notes = self._annotations()
        yield self._chunk({"annotations": notes} if notes else {}, self.finish_reason())
        if self.req.include_usage():
            yield {**self._chunk({}), "choices": [], "usage": self.usage()}

    def _delta(self, event: dict[str, Any], seen: set[str],
               calls: dict[int, int]) -> dict[str, Any] | None:
        kind = event["type"]
        if kind in ("response.reasoning_text.delta", "response.output_text.delta"):
            field = "reasoning" if "reasoning" in kind else "content"
            return self._text(field, event, seen)
        if kind == "response.output_item.added" and event["item"]["type"] == "function_call":
            item, index = event["item"], len(calls)
            calls[event["output_index"]] = index
            return {"tool_calls": [{"index": index, "id": item["call_id"], "type": "function",
                                    "function": {"name": item["name"], "arguments": ""}}]}
        if kind == "response.function_call_arguments.delta":
            return {"tool_calls": [{"index": calls[event["output_index"]],
                                    "function": {"arguments": event["delta"]}}]}
        if kind == "response.output_item.done" and event["item"]["type"] in (
                "code_interpreter_call", "web_search_call") and \
                event["item"].get("status") != "in_progress":
            return {"builtin_tool_calls": [event["item"]]}
        return None

    def _text(self, field: str, event: dict[str, Any], seen: set[str]) -> dict[str, Any]:
        key = f"{field}:{event['output_index']}"
        text = event["delta"]
        if key not in seen:
            if any(k.startswith(field + ":") for k in seen):
                text = "\n" + text
            seen.add(key)
        if field == "reasoning" and self.alias:
            return {"reasoning": text, "reasoning_content": text}
        return {field: text}
