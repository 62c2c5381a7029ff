"""The shapes of every JSON body the server sends, as pydantic models (as vLLM's
`ChatCompletionResponse`, `ChatCompletionStreamResponse`, `CompletionResponse`, ...), so the
handlers build typed values and /openapi.json describes what they send (`openapi.py` declares
them per route).

A body is what its model holds minus the fields never given (`Body.body()`: exclude-unset): an
optional field the handler does not pass is absent, one it passes as None is `null`, exactly as
the OpenAI API sends them (a chunk's `usage` is `null` until the last chunk only when usage is
asked for; a delta carries only the keys it changes). `extra="forbid"`: the document's schemas
have `additionalProperties: false`, so a test can check every body sent against them.

Follows the OpenAI API reference (chat completion object, chunk object, completion object) and
vLLM's `entrypoints/openai/protocol.py`. Knows nothing of how the values are computed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Body(BaseModel):
    """A response shape; `body()` is the JSON object sent."""

    model_config = ConfigDict(extra="forbid")

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


# ---- shared ----------------------------------------------------------------------------------
class PromptTokensDetails(Body):
    cached_tokens: int


class CompletionTokensDetails(Body):
    reasoning_tokens: int


class Usage(Body):
    """Token counts; chat also sends the two details objects."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class ErrorInfo(Body):
    message: str
    type: str
    param: str | None
    code: str | int | None


class ErrorResponse(Body):
    """Every 4xx/5xx body (`errors.GptOssServeError.to_openai`)."""

    error: ErrorInfo


# ---- chat completions ------------------------------------------------------------------------
class TopLogprob(Body):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprobEntry(Body):
    """One content token's `{token, logprob, bytes, top_logprobs}`."""

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(Body):
    content: list[TokenLogprobEntry]


class FunctionCall(Body):
    name: str
    arguments: str


class ToolCall(Body):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(Body):
    """The non-streamed message; `reasoning_content` only with the alias on."""

    role: Literal["assistant"]
    content: str | None
    reasoning: str | None
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None


class ChatCompletionChoice(Body):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: str | None


class ChatCompletionResponse(Body):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage


class DeltaFunctionCall(Body):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(Body):
    """A tool call's first delta has id, type and the name; later ones only arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall


class DeltaMessage(Body):
    """What one chunk adds to a choice: only the keys it changes (`{}` with the finish)."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatCompletionChunkChoice(Body):
    index: int
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: str | None


class ChatCompletionChunk(Body):
    """One server-sent event of a streamed chat completion; `usage` only with
    `stream_options.include_usage` (null but on the last, which has no choices)."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: Usage | None = None


# ---- completions -----------------------------------------------------------------------------
class CompletionLogprobs(Body):
    """The legacy logprobs: parallel lists, `top_logprobs` maps token text to logprob."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(Body):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class CompletionResponse(Body):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(Body):
    """One server-sent event of a streamed completion (`usage` as in `ChatCompletionChunk`)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# ---- models, tokenizer, health ---------------------------------------------------------------
class ModelCard(Body):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str
    parent: str | None
    max_model_len: int


class ModelList(Body):
    object: Literal["list"]
    data: list[ModelCard]


class TokenizeResponse(Body):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None


class DetokenizeResponse(Body):
    prompt: str


class HealthResponse(Body):
    status: Literal["ok", "engine dead"]
