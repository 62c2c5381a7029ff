"""Request models of the OpenAI-compatible API, with the seed's defaults and bounds.

Owns parsing and validation of request bodies: `parse_body(Model, raw_bytes)` turns malformed JSON,
wrong types, missing fields and out-of-range values into `errors.InvalidRequestError` naming the
parameter (never a 422 or a 500). Knows nothing of harmony, the engine or HTTP frameworks.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gptoss_serve.engine.request import CHAT_TEMPERATURE, DEFAULT_TEMPERATURE
from gptoss_serve.errors import InvalidRequestError

MAX_STOP_STRINGS = 4
MAX_TOP_LOGPROBS = 20
MAX_N = 128
INT64 = 2**63
MAX_COUNT = 2**31 - 1  # the bound of every token count the API accepts (top_k, max_tokens, ...)
MAX_TOKEN_ID_DIGITS = 10  # a logit_bias key longer than this is no token id

Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Seed = Annotated[int, Field(ge=-INT64, lt=INT64)]
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
_TOKEN_ID_KEY = re.compile(f"[0-9]{{1,{MAX_TOKEN_ID_DIGITS}}}")


class _Strict(BaseModel):
    """Base: JSON types are checked strictly ("0.5" is not a number); unknown fields are ignored.

    Cross-field checks raise `InvalidRequestError` directly (pydantic lets it through) so that
    they can name their parameter.
    """

    model_config = ConfigDict(strict=True, extra="ignore")


# ---- chat messages ---------------------------------------------------------------------------
class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str = Field(min_length=1)
    arguments: str = ""


class ToolCall(_Strict):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> ChatMessage:
        if self.role != "assistant" and self.content is None:
            raise ValueError(f"a {self.role} message needs `content`")
        return self


# ---- tools and formats -----------------------------------------------------------------------
class FunctionDef(_Strict):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Strict):
    """A function tool, or (extension) a built-in tool type run by the server (api/chat_tools)."""

    type: Literal["function", "code_interpreter", "web_search", "web_search_preview"]
    function: FunctionDef | None = None

    @model_validator(mode="after")
    def _function_given(self) -> ToolDef:
        if self.type == "function" and self.function is None:
            raise ValueError("a function tool needs `function`")
        return self


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: dict[str, Any]


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class _StructuredFields(_Strict):
    """Structured outputs: OpenAI's `response_format` and vLLM's `structured_outputs` extension
    ({"json" | "regex" | "choice" | "grammar" | "json_object": ...}, checked by
    `constrain.builder`)."""

    response_format: ResponseFormat | None = None
    structured_outputs: dict[str, Any] | None = None

    def response_format_dict(self) -> dict[str, Any] | None:
        rf = self.response_format
        return None if rf is None else rf.model_dump(exclude_none=True)


class StreamOptions(_Strict):
    include_usage: bool = False


# ---- shared sampling fields ------------------------------------------------------------------
class _SamplingFields(_Strict):
    """Fields that chat and completions share (OpenAI's plus vLLM's extensions)."""

    model: str
    top_p: float = Field(default=1.0, ge=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    frequency_penalty: Penalty = 0.0
    presence_penalty: Penalty = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    seed: Seed | None = None
    user: str | None = None
    top_k: int = Field(default=0, ge=-1, le=MAX_COUNT)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0, le=MAX_COUNT)

    @field_validator("stop")
    @classmethod
    def _stop_limit(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(v)}")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key in v or {}:
            if not _TOKEN_ID_KEY.fullmatch(key.strip()):
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
        return v

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise InvalidRequestError(
                "stream_options is only allowed when stream is true", param="stream_options"
            )
        return self

    def stop_strings(self) -> tuple[str, ...]:
        """The stop strings as a tuple, empty strings dropped."""
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in stops if s)

    def bias_pairs(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(k), b) for k, b in (self.logit_bias or {}).items())

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# ---- chat completions ------------------------------------------------------------------------
class ChatCompletionRequest(_SamplingFields, _StructuredFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    temperature: float = Field(default=CHAT_TEMPERATURE, ge=0.0, le=2.0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    reasoning_effort: Literal["low", "medium", "high"] = "medium"
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_reasoning_tokens: int | None = Field(default=None, ge=0)  # extension: reasoning budget

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequestError(
                "top_logprobs requires logprobs to be true", param="top_logprobs"
            )
        return self

    def requested_max_tokens(self) -> int | None:
        """max_completion_tokens wins over the older max_tokens; None when neither is given."""
        return self.max_completion_tokens or self.max_tokens

    def engine_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


# ---- completions -----------------------------------------------------------------------------
TokenIds = list[Annotated[int, Field(ge=0, le=MAX_COUNT)]]


class CompletionRequest(_SamplingFields, _StructuredFields):
    prompt: str | list[str] | TokenIds | list[TokenIds]
    max_tokens: Count = 16
    temperature: float = Field(default=DEFAULT_TEMPERATURE, ge=0.0, le=2.0)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and (not v or any(isinstance(p, list) and not p for p in v)):
            raise ValueError("prompt must not be empty")
        return v


# ---- tokenizer endpoints (vLLM's shapes) -----------------------------------------------------
class TokenizeRequest(_Strict):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    reasoning_effort: Literal["low", "medium", "high"] = "medium"
    tools: list[ToolDef] | None = None
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidRequestError("give exactly one of `prompt` or `messages`", param="prompt")
        return self


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: TokenIds


# ---- parsing ---------------------------------------------------------------------------------
M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], raw: bytes) -> M:
    """Validate a raw JSON body; any problem becomes a 400 naming the first bad parameter."""
    try:
        return model.model_validate_json(raw or b"")
    except ValidationError as exc:
        raise validation_to_error(exc.errors(include_url=False)) from None


def validation_to_error(errs: list[Any]) -> InvalidRequestError:
    """The first pydantic error as an OpenAI-style 400 with a dotted `param`."""
    if not errs:
        return InvalidRequestError("invalid request body")
    err = max(errs, key=lambda e: len(e.get("loc", ())))  # the deepest is the most specific
    if err.get("type") == "json_invalid":
        return InvalidRequestError(f"malformed JSON body: {err.get('msg')}", code="invalid_json")
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body",)]
    param = _param_from_loc(loc)
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "missing":
        msg = "field required"
    where = f"`{param}`: " if param else ""
    return InvalidRequestError(f"{where}{msg}", param=param)


def _param_from_loc(loc: list[str]) -> str | None:
    """Drop pydantic's union-branch labels (`str`, `list[...]`, `function-after[...]`)."""
    parts = [p for p in loc if not _is_branch_label(p)]
    return ".".join(parts) or None


def _is_branch_label(part: str) -> bool:
    return (
        part in {"str", "int", "float", "bool", "list", "dict", "none"}
        or "[" in part
        or part[:1].isupper()
        or part.startswith("function-")
    )
