"""A fake OpenAI streaming server for the bench tests: known tokens, known delays, chosen faults.

Owns only test behaviour: it streams `max_tokens` words (or `tokens_per_chunk` words per chunk)
with a fixed sleep before each chunk, reports usage when asked, and fails requests whose prompt
contains FAIL_MARKER. The same logic serves httpx.MockTransport (in-process) and a real uvicorn
app (over TCP).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

FAIL_MARKER = "please-fail"
MODEL = "fake-model"


@dataclass
class FakeServer:
    delay_s: float = 0.002
    tokens_per_chunk: int = 1
    send_usage: bool = True
    in_flight: int = 0
    max_in_flight: int = 0
    bodies: list[dict] = field(default_factory=list)

    def _prompt_text(self, body: dict) -> str:
        if "messages" in body:
            return " ".join(m["content"] for m in body["messages"])
        prompt = body["prompt"]
        return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))

    def _chunk(self, body: dict, text: str) -> dict:
        if "messages" in body:
            choice = {"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}
        else:
            choice = {"index": 0, "text": text, "finish_reason": None}
        return {"id": "x", "object": "chunk", "model": MODEL, "choices": [choice]}

    async def stream(self, body: dict) -> AsyncIterator[bytes]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            n = body["max_tokens"]
            if "messages" in body:  # the role chunk carries no text and must not count
                role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
                yield f"data: {json.dumps(role)}\n\n".encode()
            sent = 0
            while sent < n:
                await asyncio.sleep(self.delay_s)
                k = min(self.tokens_per_chunk, n - sent)
                sent += k
                yield f"data: {json.dumps(self._chunk(body, ' w' * k))}\n\n".encode()
            if self.send_usage and body.get("stream_options", {}).get("include_usage"):
                usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
        finally:
            self.in_flight -= 1
        yield b"data: [DONE]\n\n"

    def respond(self, body: dict) -> tuple[int, AsyncIterator[bytes] | bytes]:
        self.bodies.append(body)
        if FAIL_MARKER in self._prompt_text(body):
            return 500, json.dumps({"error": {"message": "boom", "type": "server_error"}}).encode()
        return 200, self.stream(body)

    def transport(self) -> httpx.MockTransport:
        async def handler(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/v1/models":
                return httpx.Response(200, json={"data": [{"id": MODEL, "object": "model"}]})
            status, content = self.respond(json.loads(request.content))
            return httpx.Response(status, content=content,
                                  headers={"content-type": "text/event-stream"})

        return httpx.MockTransport(handler)

    def asgi_app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict:
            return {"data": [{"id": MODEL, "object": "model"}]}

        @app.post("/v1/completions")
        @app.post("/v1/chat/completions")
        async def complete(request: Request):
            status, content = self.respond(await request.json())
            if isinstance(content, bytes):
                return Response(content, status_code=status, media_type="application/json")
            return StreamingResponse(content, media_type="text/event-stream")

        return app
