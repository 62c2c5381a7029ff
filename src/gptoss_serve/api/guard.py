"""What every HTTP request passes before any route sees it: the bearer key and the body limit.

Owns two rules, applied as one ASGI middleware so that every route gets them, also routes added
later: (1) with an API key, every path but `/health` (and `/metrics` when it is public) needs
`Authorization: Bearer KEY`, compared as bytes in constant time (a non-ASCII key is a 401, not a
crash); (2) a body over `max_body_bytes` is a 413, whether it declares its length or streams it.
Also owns `error_response`, the one way an error leaves as JSON (with `Retry-After` where the error
has one). Knows nothing of routes, handlers or the engine.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import JSONResponse

from gptoss_serve.errors import AuthenticationError, GptOssServeError, PayloadTooLargeError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_response(exc: GptOssServeError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse(exc.to_openai(), status_code=exc.status, headers=headers)


def open_paths(public_metrics: bool) -> frozenset[str]:
    """The paths that need no key."""
    return frozenset({"/health", "/metrics"} if public_metrics else {"/health"})


class Guard:
    """ASGI middleware: key check on every path outside `open_paths`, then the body limit."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int,
                 public_paths: frozenset[str] = frozenset({"/health"})):
        self.app = app
        self._key = api_key.encode() if api_key is not None else None
        self._max = max_body_bytes
        self._public = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        problem = self._refusal(scope["path"], headers)
        if problem is not None:
            await error_response(problem)(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def _refusal(self, path: str, headers: dict[bytes, bytes]) -> GptOssServeError | None:
        if self._key is not None and path not in self._public and not self._authorized(headers):
            return AuthenticationError(
                "Incorrect or missing API key: send `Authorization: Bearer <key>`.")
        length = headers.get(b"content-length", b"")
        if length.isdigit() and len(length) < 20 and int(length) > self._max:
            return self._too_large()
        return None

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        assert self._key is not None
        return scheme.lower() == b"bearer" and secrets.compare_digest(token.strip(), self._key)

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The request body is larger than this server's limit of {self._max} bytes "
            "(--max-body-mib).")

    def _limited(self, receive: Receive) -> Receive:
        """`receive` that raises PayloadTooLargeError once the body passes the limit."""
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self._max:
                    raise self._too_large()
            return message

        return limited
