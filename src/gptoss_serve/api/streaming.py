"""Async plumbing shared by the handlers: priming a generation, watching for a client that left,
and the response every generating handler ends with.

Owns three small rules: (1) a generation is started before the HTTP response begins, so admission
errors (context too long for the KV cache, engine dead) are proper status codes, not errors inside
a 200 stream; (2) a non-streamed request whose client disconnects is cancelled, which aborts its
engine request; (3) a client that left before admission or before the body gets a 499. Knows
nothing of chat, harmony or response shapes (a `Run` makes the chunks and the body).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, Protocol, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gptoss_serve.api.sse import sse_response

T = TypeVar("T")


async def prime(agen: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """Wait for the first item of `agen` (raising its errors here); return an equivalent stream."""
    try:
        first = await agen.__anext__()
    except StopAsyncIteration:
        return _empty()
    except BaseException:
        await agen.aclose()
        raise
    return _chain(first, agen)


async def _empty() -> AsyncGenerator[T, None]:
    return
    yield  # pragma: no cover


async def _chain(first: T, rest: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work`; if the client disconnects first, cancel it and return None."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()


async def merge(gens: list[AsyncGenerator[T, None]]) -> AsyncGenerator[T, None]:
    """Items of several generators as they come; closing the merge closes them all."""
    if len(gens) == 1:
        async with contextlib.aclosing(gens[0]) as only:
            async for item in only:
                yield item
        return
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()

    async def pump(gen: AsyncGenerator[T, None]) -> None:
        try:
            async for item in gen:
                await queue.put((True, item))
            await queue.put((False, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            await queue.put((False, exc))
        finally:
            await gen.aclose()

    tasks = [asyncio.ensure_future(pump(g)) for g in gens]
    try:
        for _ in range(len(tasks)):
            while (got := await queue.get())[0]:
                yield got[1]
            if isinstance(got[1], BaseException):
                raise got[1]
    finally:
        for t in tasks:
            t.cancel()


class Run(Protocol):
    """One request in flight, as the handlers build it (api/chat.py, api/completions.py)."""

    def chunks(self, outputs: Any) -> AsyncGenerator[dict[str, Any], None]: ...

    async def collect(self, outputs: Any) -> dict[str, Any]: ...


async def respond(request: Request, started: Awaitable[Any], run: Run, stream: bool) -> Response:
    """Wait for admission (`started`: the primed outputs) unless the client leaves, then stream
    the run's chunks as server-sent events or send its body. Either way the outputs are closed
however the response ends, which aborts an unfinished engine request (`AsyncEngine.generate`)."""
    outputs = await unless_disconnected(request, started)
    if outputs is None:  # the client left while the request was queued
        return Response(status_code=499)
    if stream:
        return sse_response(run.chunks(outputs))
    body = await unless_disconnected(request, run.collect(outputs))
    return JSONResponse(body) if body is not None else Response(status_code=499)
