"""Server-sent events framing for streamed OpenAI responses.

Owns the wire format (`data: {json}\\n\\n`, closing `data: [DONE]\\n\\n`) and the guarantee that
a stream which ends early (client gone, server error) closes its chunks' generator (whose own
cleanup aborts the engine request). Knows nothing of chat, harmony or the engine.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from starlette.responses import StreamingResponse

from gptoss_serve.errors import GptOssServeError

DONE = "data: [DONE]\n\n"


def frame(payload: dict[str, Any]) -> str:
    """One SSE event carrying a JSON object."""
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


def typed_frame(payload: dict[str, Any]) -> str:
    """One SSE event named by the payload's `type` (the Responses API's framing)."""
    return f"event: {payload['type']}\n{frame(payload)}"


async def _events(chunks: AsyncGenerator[dict[str, Any], None],
                  framing: Callable[[dict[str, Any]], str], done: str) -> AsyncIterator[str]:
    """Frame every chunk, then `done`; an error mid-stream becomes an error event, not a crash.
    `chunks` is closed however the stream ends (also when the client goes away)."""
    async with contextlib.aclosing(chunks):
        try:
            async for chunk in chunks:
                yield framing(chunk)
        except GptOssServeError as exc:
            yield frame(exc.to_openai())
    if done:
        yield done


def sse_response(chunks: AsyncGenerator[dict[str, Any], None],
                 framing: Callable[[dict[str, Any]], str] = frame,
                 done: str = DONE) -> StreamingResponse:
    """A text/event-stream response of `chunks`' events. Chat and completions use the defaults;
    the Responses API passes `typed_frame` and no closing `[DONE]`, as OpenAI sends it."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_events(chunks, framing, done), media_type="text/event-stream",
                             headers=headers)
