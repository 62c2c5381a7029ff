"""The `/v1/responses` routes: create, retrieve (also as a resumed stream), delete, input items,
cancel; and the service that holds the store, the live runs and the built-in tools.

Owns the request's way in: validate -> load the `previous_response_id` chain (404 when unknown)
-> harmony messages of the new input -> a `ResponseRun` driven by `ToolLoop` as an asyncio task.
A foreground run answers with its body or follows its event log as SSE (`event: TYPE` lines, as
OpenAI sends them, no `[DONE]`); a client that leaves cancels it. A background run is answered at
once (`queued`) and keeps running; `GET ?stream=true&starting_after=N` follows or replays its
events and `POST .../cancel` stops it. Finished runs with `store` are written to the store in one
transaction (body, input items, conversation messages, generated token ids, events).
Knows nothing of the engine's insides or how the tools work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from gptoss_serve.api.context import ApiContext, off_loop
from gptoss_serve.api.openapi import request_body, responses_of
from gptoss_serve.api.response_bodies import (
    DeletedResponse,
    InputItemList,
    ResponseObject,
    ResponseStreamEvent,
)
from gptoss_serve.api.response_constraint import run_constraint
from gptoss_serve.api.response_input import turn_input
from gptoss_serve.api.response_output import item_id
from gptoss_serve.api.response_run import ResponseRun
from gptoss_serve.api.response_store import ResponseStore, StoredResponse
from gptoss_serve.api.responses_schemas import MessageItem, ResponsesRequest, check_enabled
from gptoss_serve.api.schemas import parse_body
from gptoss_serve.api.sse import sse_response, typed_frame
from gptoss_serve.api.streaming import unless_disconnected
from gptoss_serve.api.tool_loop import LoopPlan, ToolLoop, error_code
from gptoss_serve.errors import GptOssServeError, InvalidRequestError
from gptoss_serve.harmony.render import RenderOptions
from gptoss_serve.tools.base import BuiltinTool

MAX_LIST_LIMIT = 100


class NotFoundError(GptOssServeError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ResponsesService:
    """The store (None with --no-store), the runs in flight and the built-in tools."""

    def __init__(self, ctx: ApiContext, store: ResponseStore | None,
                 tools: dict[str, BuiltinTool], max_tool_turns: int):
        self.ctx, self.store, self.tools = ctx, store, tools
        self.max_tool_turns = max_tool_turns
        self.live: dict[str, ResponseRun] = {}

    # ---- create --------------------------------------------------------------------------
    async def create(self, request: Request) -> Response:
        req = await off_loop(parse_body, ResponsesRequest, await request.body())
        self.ctx.check_model(req.model)
        constraint = await off_loop(  # schema checks and grammar compilation take a while
            run_constraint, req, self.ctx.config.default_max_reasoning_tokens)
        if self.store is None:
            if req.background:
                raise InvalidRequestError("background responses need the response store, "
                                          "which this server runs without (--no-store)",
                                          param="background")
            req = req.model_copy(update={"store": False})
        run, loop = self._new_run(req, constraint)
        if req.background:
            loop.engine_request()  # a prompt that cannot fit is a 400 now, not a failed run
            return self._start_background(run, loop)
        outputs = await unless_disconnected(request, loop.start_call())
        if outputs is None:
            return Response(status_code=499)
        run.task = asyncio.ensure_future(self._finish(run, loop, loop.execute(outputs)))
        self.live[run.id] = run
        if req.stream:
            return event_stream(run.follow(), on_close=lambda: _cancel(run))
        done = await unless_disconnected(request, asyncio.shield(run.task))
        if done is None and not run.done:
            _cancel(run)
            return Response(status_code=499)
        return JSONResponse(run.snapshot())

    def _new_run(self, req: ResponsesRequest, constraint: Any) -> tuple[ResponseRun, ToolLoop]:
        parent = self._parent(req.previous_response_id)
        history = parent.messages if parent else []
        turn = turn_input(req, history)
        rid = item_id("resp")
        run = ResponseRun(rid, req, parent.conversation_id if parent else rid,
                          _input_items(req), history + turn.messages)
        tools = self._offered_tools(req)
        options = RenderOptions(
            reasoning_effort=req.effort(), current_date=self.ctx.current_date(),
            tools=(req.function_tools() or None) if req.tool_choice != "none" else None,
            builtin_tools=tuple(t.description() for t in tools.values()),
            response_format=req.format_dict())
        turns = min(self.max_tool_turns, req.max_tool_calls or self.max_tool_turns)
        plan = LoopPlan(turn.instructions, options, tools, turns, constraint)
        return run, ToolLoop(self.ctx, run, plan)

    def _parent(self, previous_id: str | None) -> StoredResponse | None:
        if previous_id is None:
            return None
        parent = self.store.get(previous_id) if self.store else None
        if parent is None:
            raise NotFoundError(f"Previous response with id '{previous_id}' not found.",
                                param="previous_response_id")
        if parent.body.get("status") in ("queued", "in_progress"):
            raise InvalidRequestError(
                f"Previous response '{previous_id}' has not finished yet.",
                param="previous_response_id")
        return parent

    def _offered_tools(self, req: ResponsesRequest) -> dict[str, BuiltinTool]:
        """The enabled built-in tools this request asks for (400 when one is off here)."""
        if req.tool_choice == "none":
            return {}
        check_enabled(req.tools, self.tools)
        return {t: self.tools[t] for t in req.builtin_types()}

    def _start_background(self, run: ResponseRun, loop: ToolLoop) -> Response:
        async def work() -> None:
            try:
                outputs = await loop.start_call()
            except GptOssServeError as exc:
                run.status, run.error = "failed", {"code": error_code(exc),
                                                   "message": exc.message}
                run.emit("response.failed", response=run.snapshot())
                return
            await loop.execute(outputs)

        loop.announce()  # created + queued: a stream can follow from here
        self._save(run)  # queued: retrievable at once
        run.task = asyncio.ensure_future(self._finish(run, loop, work()))
        self.live[run.id] = run
        if run.req.stream:
            return event_stream(run.follow())
        return JSONResponse(run.snapshot())

    async def _finish(self, run: ResponseRun, loop: ToolLoop, work: Any) -> None:
        """Run `work`; whatever happens, store the result and forget the live run (and the
        tools' state of a conversation that began here and is not stored: no chain can
        continue it)."""
        try:
            await work
        except asyncio.CancelledError:
            if not run.done:  # cancelled before the loop began (waiting for admission)
                run.status = "cancelled"
                run.wake()
            raise
        finally:
            try:
                self._save(run, events=True)
            finally:
                self.live.pop(run.id, None)
                if run.conversation_id == run.id and not (self.store and run.req.store):
                    loop.close_sessions()

    def _save(self, run: ResponseRun, events: bool = False) -> None:
        if self.store is not None and run.req.store:
            keep = events and (run.req.stream or run.req.background)
            self.store.save(run.record(), run.events if keep else None)

    # ---- reading ---------------------------------------------------------------------------
    def _body(self, rid: str) -> dict[str, Any]:
        run = self.live.get(rid)
        if run is not None:
            return run.snapshot()
        return self._stored(rid).body

    def _stored(self, rid: str) -> StoredResponse:
        found = self.store.get(rid) if self.store else None
        if found is None:
            raise NotFoundError(f"Response with id '{rid}' not found.", param="response_id")
        return found

    def retrieve(self, rid: str, stream: bool, starting_after: int | None) -> Response:
        if not stream:
            return JSONResponse(self._body(rid))
        after = -1 if starting_after is None else starting_after
        run = self.live.get(rid)
        if run is not None:
            return event_stream(run.follow(after))
        self._stored(rid)
        events = self.store.events(rid) if self.store else []
        if not events:
            raise InvalidRequestError(
                f"Response '{rid}' was created without stream or background, so it has no "
                "events to stream.", param="stream")
        # sequence_number is the index (response_run.py): one read serves check and replay
        return event_stream(_replay(events[max(after + 1, 0):]))

    async def delete(self, rid: str) -> dict[str, Any]:
        run = self.live.get(rid)
        if run is not None:  # stop it and let it finish writing before the row goes
            await _stopped(run)
        if not (self.store and self.store.delete(rid)) and run is None:
            raise NotFoundError(f"Response with id '{rid}' not found.", param="response_id")
        return {"id": rid, "object": "response", "deleted": True}

    def input_items(self, rid: str, order: str, after: str | None, limit: int) -> dict:
        run = self.live.get(rid)
        items = list(run.input_items) if run else list(self._stored(rid).input_items)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [i.get("id") for i in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        page = items[:limit]
        return {"object": "list", "data": page, "has_more": len(items) > limit,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None}

    async def cancel(self, rid: str) -> dict[str, Any]:
        run = self.live.get(rid)
        if run is None:
            body = self._stored(rid).body
            if not body.get("background"):
                raise InvalidRequestError("Only background responses can be cancelled.",
                                          param="response_id")
            return body
        if not run.req.background:
            raise InvalidRequestError("Only background responses can be cancelled.",
                                      param="response_id")
        await _stopped(run)
        if not run.done:  # cancelled before its task ever ran: nothing stored it yet
            run.status = "cancelled"
            run.wake()
            self._save(run, events=True)
            self.live.pop(run.id, None)
        return run.snapshot()

    async def stop_runs(self) -> None:
        """Stop every run in flight (each stores what it has); the service stays usable."""
        for run in list(self.live.values()):
            await _stopped(run)

    def close(self) -> None:
        """Close the tools and the store for good (the server's last step)."""
        for tool in self.tools.values():
            tool.close()
        if self.store is not None:
            self.store.close()


def responses_service(ctx: ApiContext, tools: dict[str, BuiltinTool]) -> ResponsesService:
    """The service of one app: its store from `ServerConfig.responses_db` (None: no store)."""
    path = ctx.config.responses_db
    store = ResponseStore(path) if path is not None else None
    return ResponsesService(ctx, store, tools, ctx.config.max_tool_turns)


def closing(service: ResponsesService) -> Any:
    """The app's lifespan: at shut-down the runs in flight stop and store what they have (the
    app may start again: test clients run one lifespan per client; server.py closes the tools
    and the store when it exits)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        await service.stop_runs()

    return lifespan


async def _stopped(run: ResponseRun) -> None:
    """Cancel a run's task and wait until it has finished (and stored what it had)."""
    task = _cancel(run)
    if task is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _cancel(run: ResponseRun) -> asyncio.Task | None:
    if run.task is not None and not run.task.done():
        run.task.cancel()
    return run.task


def _input_items(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's input items as input_items lists them (ids assigned where missing)."""
    if isinstance(req.input, str):
        items = [MessageItem(role="user", content=[{"type": "input_text", "text": req.input}])]
    else:
        items = list(req.input)
    out = []
    for item in items:
        d = item.model_dump(exclude_none=True, by_alias=True)
        d.setdefault("id", item_id("msg" if d.get("type") == "message" else "item"))
        if d.get("type") in ("message", "function_call", "function_call_output"):
            d.setdefault("status", "completed")
        if d.get("type") == "message" and isinstance(d.get("content"), str):
            kind = "output_text" if d.get("role") == "assistant" else "input_text"
            d["content"] = [{"type": kind, "text": d["content"]}]
        out.append(d)
    return out


async def _replay(events: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for event in events:
        yield event


def event_stream(events: AsyncIterator[dict[str, Any]],
                 on_close: Callable[[], Any] | None = None) -> StreamingResponse:
    """Responses SSE: `event: TYPE` + `data: JSON` per event, no [DONE]; `on_close` runs however
    the stream ends (a foreground run is cancelled when its client leaves)."""

    async def closing_events() -> AsyncGenerator[dict[str, Any], None]:
        try:
            async for event in events:
                yield event
        finally:
            if on_close is not None:
                on_close()

    return sse_response(closing_events(), framing=typed_frame, done="")


# ---- routes ----------------------------------------------------------------------------------
def responses_router(service: ResponsesService) -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.post("/responses", openapi_extra=request_body(ResponsesRequest),
            responses=responses_of(ResponseObject, stream=ResponseStreamEvent))
    async def create(request: Request) -> Response:
        return await service.create(request)

    @r.get("/responses/{response_id}",
           responses=responses_of(ResponseObject, stream=ResponseStreamEvent))
    async def retrieve(response_id: str, stream: bool = False,
                       starting_after: int | None = None) -> Response:
        return service.retrieve(response_id, stream, starting_after)

    @r.delete("/responses/{response_id}", responses=responses_of(DeletedResponse))
    async def delete(response_id: str) -> dict[str, Any]:
        return await service.delete(response_id)

    @r.get("/responses/{response_id}/input_items", responses=responses_of(InputItemList))
    async def input_items(response_id: str, order: str = "desc", after: str | None = None,
                          limit: int = 20) -> dict[str, Any]:
        if order not in ("asc", "desc"):
            raise InvalidRequestError("order must be 'asc' or 'desc'", param="order")
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequestError(f"limit must be in [1, {MAX_LIST_LIMIT}]", param="limit")
        return service.input_items(response_id, order, after, limit)

    @r.post("/responses/{response_id}/cancel", responses=responses_of(ResponseObject))
    async def cancel(response_id: str) -> dict[str, Any]:
        return await service.cancel(response_id)

    return r
