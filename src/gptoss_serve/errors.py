"""Typed errors of gptoss-serve, each with its HTTP status and OpenAI error type.

Owns the mapping from a failure to the OpenAI error shape; knows nothing of HTTP frameworks.
"""

from __future__ import annotations


class GptOssServeError(Exception):
    """Base class. `status` and `error_type` say how the API reports it."""

    status: int = 500
    error_type: str = "server_error"
    code: str | None = None
    retry_after: int | None = None  # seconds, sent as `Retry-After` (overload, engine down)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_openai(self) -> dict:
        """The OpenAI error body: {"error": {"message", "type", "param", "code"}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(GptOssServeError):
    """Bad input from a client (400)."""

    status = 400
    error_type = "invalid_request_error"


class ContextLengthError(InvalidRequestError):
    """A prompt (plus max_tokens) that cannot fit the model's context or the KV cache (400)."""

    code = "context_length_exceeded"

    def __init__(self, message: str, *, prompt_tokens: int, limit: int, param: str | None = None):
        super().__init__(message, param=param or "messages")
        self.prompt_tokens = prompt_tokens
        self.limit = limit


class PayloadTooLargeError(GptOssServeError):
    """A request body over the server's limit (413)."""

    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class AuthenticationError(GptOssServeError):
    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class ModelNotFoundError(GptOssServeError):
    status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class OverloadedError(GptOssServeError):
    """The server is saturated; the client may retry later (429)."""

    status = 429
    error_type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"
    retry_after = 1


class EngineDeadError(GptOssServeError):
    """The engine loop died; every pending request gets this (503)."""

    status = 503
    error_type = "server_error"
    code = "engine_dead"
    retry_after = 5


class CheckpointError(GptOssServeError):
    """A checkpoint that cannot be loaded: names the file and tensor."""


class StartupError(GptOssServeError):
    """A configuration or hardware problem found at start-up (missing capability, memory)."""
