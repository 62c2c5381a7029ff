"""Server-sent events framing for streamed OpenAI responses.

Owns the wire format (`data: {json}\\n\\n`, closing `data: [DONE]\\n\\n`) and the guarantee that
a stream which ends early (client gone, server error) runs its cleanup. Knows nothing of chat,
harmony or the engine.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
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


async def _events(
    chunks: AsyncIterator[dict[str, Any]], on_close: Callable[[], None],
    framing: Callable[[dict[str, Any]], str], done: str,
) -> AsyncIterator[str]:
    """Frame every chunk, then `done`; an error mid-stream becomes an error event, not a crash."""
    try:
        async for chunk in chunks:
            yield framing(chunk)
    except GptOssServeError as exc:
        yield frame(exc.to_openai())
    finally:
        on_close()
    if done:
        yield done


def sse_response(
    chunks: AsyncIterator[dict[str, Any]], on_close: Callable[[], None],
    framing: Callable[[dict[str, Any]], str] = frame, done: str = DONE,
) -> StreamingResponse:
    """A text/event-stream response; `on_close` runs however the stream ends (also disconnects).
    Chat and completions use the defaults; the Responses API passes `typed_frame` and no done."""
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        _events(chunks, on_close, framing, done), media_type="text/event-stream", headers=headers
    )
