"""Request models of `POST /v1/responses` (OpenAI's documented shapes), validated strictly.

Owns the accepted input items (messages with text parts, `function_call`, `function_call_output`,
`reasoning`, `code_interpreter_call`, `web_search_call`), the tool declarations (function tools
and the built-in `code_interpreter` / `web_search` / `web_search_preview` types), `text.format`,
`tool_choice` and the sampling fields with their bounds. A bad item is a 400 naming the field
(`input.2.call_id`) through `schemas.parse_body`. Knows nothing of harmony, the store or HTTP.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from gptoss_serve.api.schemas import _Strict
from gptoss_serve.errors import InvalidRequestError

BUILTIN_TYPES = {"code_interpreter": "code_interpreter", "web_search": "web_search",
                 "web_search_2025_08_26": "web_search", "web_search_preview": "web_search",
                 "web_search_preview_2025_03_11": "web_search"}  # type -> canonical tool type


def builtin_types_of(tools: Any) -> list[str]:
    """Canonical built-in tool types among `tools` (declarations with a `type`), in order, once
    each: the same rule for /v1/responses and the chat extension (api/chat_tools.py)."""
    return list(dict.fromkeys(BUILTIN_TYPES[t.type] for t in tools if t.type in BUILTIN_TYPES))


def check_enabled(tools: Any, enabled: Any) -> None:
    """400 naming `tools.N.type` when a declared built-in tool is off on this server."""
    for i, decl in enumerate(tools):
        kind = BUILTIN_TYPES.get(decl.type)
        if kind is not None and kind not in enabled:
            raise InvalidRequestError(
                f"the {decl.type} tool is not enabled on this server (see the start-up log "
                "and the --python-tool / --browser-* options)", param=f"tools.{i}.type")


# ---- input items -----------------------------------------------------------------------------
class TextPart(_Strict):
    type: Literal["input_text", "output_text", "text", "reasoning_text", "summary_text"]
    text: str
    annotations: list[dict[str, Any]] | None = None
    logprobs: list[dict[str, Any]] | None = None


class MessageItem(_Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[TextPart]
    id: str | None = None
    status: str | None = None
    phase: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class FunctionCallItem(_Strict):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Strict):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[TextPart]
    id: str | None = None
    status: str | None = None

    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(
            p.text for p in self.output)


class ReasoningItem(_Strict):
    type: Literal["reasoning"]
    id: str | None = None
    summary: list[TextPart] = Field(default_factory=list)
    content: list[TextPart] | None = None
    encrypted_content: str | None = None
    status: str | None = None

    def text(self) -> str:
        parts = self.content if self.content else self.summary
        return "".join(p.text for p in parts)


class CodeInterpreterCallItem(_Strict):
    type: Literal["code_interpreter_call"]
    id: str | None = None
    code: str | None = None
    outputs: list[dict[str, Any]] | None = None
    container_id: str | None = None
    status: str | None = None

    def output_text(self) -> str:
        return "".join(o.get("logs", "") for o in self.outputs or [] if o.get("type") == "logs")


class WebSearchCallItem(_Strict):
    type: Literal["web_search_call"]
    id: str | None = None
    action: dict[str, Any] | None = None
    status: str | None = None


def _item_tag(value: Any) -> str | None:
    """The union branch of an input item; a message may leave out `type` (EasyInputMessage)."""
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return _TAGS.get(kind) if isinstance(kind, str) else None


_TAGS = {"message": "Message", "function_call": "FunctionCall",
         "function_call_output": "FunctionCallOutput", "reasoning": "Reasoning",
         "code_interpreter_call": "CodeInterpreterCall", "web_search_call": "WebSearchCall"}

InputItem = Annotated[
    Annotated[MessageItem, Tag("Message")]
    | Annotated[FunctionCallItem, Tag("FunctionCall")]
    | Annotated[FunctionCallOutputItem, Tag("FunctionCallOutput")]
    | Annotated[ReasoningItem, Tag("Reasoning")]
    | Annotated[CodeInterpreterCallItem, Tag("CodeInterpreterCall")]
    | Annotated[WebSearchCallItem, Tag("WebSearchCall")],
    Discriminator(_item_tag, custom_error_type="invalid_item",
                  custom_error_message="unsupported input item type (expected one of: "
                  + ", ".join(_TAGS) + ")"),
]


# ---- tools, formats, options -----------------------------------------------------------------
class ToolDecl(_Strict):
    """A function tool (flat, as the Responses API writes it) or a built-in tool type."""

    type: str
    name: str | None = Field(default=None, min_length=1, max_length=64,
                             pattern=r"^[A-Za-z0-9_\-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    container: Any = None  # code_interpreter: accepted, one sandbox per conversation here
    search_context_size: str | None = None
    user_location: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _known(self) -> ToolDecl:
        if self.type == "function":
            if not self.name:
                raise ValueError("a function tool needs a `name`")
        elif self.type not in BUILTIN_TYPES:
            raise ValueError(f"unsupported tool type {self.type!r}; supported: function, "
                             + ", ".join(BUILTIN_TYPES))
        return self

    def echo(self) -> dict[str, Any]:
        """The tool as the response object lists it (a code_interpreter always names a
        container: one sandbox per conversation here, `auto`)."""
        out = self.model_dump(exclude_none=True)
        if self.type == "code_interpreter" and self.container is None:
            out["container"] = {"type": "auto"}
        return out


class TextFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and (not self.name or self.schema_ is None):
            raise ValueError("a json_schema format needs `name` and `schema`")
        return self


class TextConfig(_Strict):
    format: TextFormat = Field(default_factory=TextFormat)
    verbosity: str | None = None


class ReasoningConfig(_Strict):
    effort: Literal["low", "medium", "high"] | None = None
    summary: str | None = None
    generate_summary: str | None = None


class ToolChoiceObject(_Strict):
    type: str
    name: str | None = None


class ResponsesRequest(_Strict):
    model: str
    input: str | list[InputItem] = Field(default_factory=list)
    instructions: str | None = None
    previous_response_id: str | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    tools: list[ToolDecl] = Field(default_factory=list)
    tool_choice: Literal["none", "auto", "required"] | ToolChoiceObject = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    store: bool = True
    stream: bool = False
    background: bool = False
    metadata: dict[str, str] | None = None
    include: list[str] | None = None
    max_tool_calls: int | None = Field(default=None, ge=1)
    max_reasoning_tokens: int | None = Field(default=None, ge=0)  # extension, as in chat
    user: str | None = None
    seed: int | None = None
    truncation: Literal["auto", "disabled"] | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> ResponsesRequest:
        if self.background and not self.store:
            raise InvalidRequestError("background responses need store=true", param="background")
        meta = self.metadata or {}
        if len(meta) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in meta.items()):
            raise InvalidRequestError("metadata holds at most 16 keys of up to 64 characters, "
                                      "values of up to 512", param="metadata")
        if isinstance(self.input, list) and not self.input and not self.previous_response_id:
            raise InvalidRequestError("input must not be empty", param="input")
        return self

    def effort(self) -> str:
        return (self.reasoning.effort if self.reasoning else None) or "medium"

    def builtin_types(self) -> list[str]:
        """Canonical built-in tool types the request enables (in order, once each)."""
        return builtin_types_of(self.tools)

    def function_tools(self) -> list[dict[str, Any]]:
        """The function tools in the chat-completions shape the renderer takes."""
        out = []
        for t in self.tools:
            if t.type == "function":
                fn = {"name": t.name, "description": t.description, "parameters": t.parameters}
                out.append({"type": "function",
                            "function": {k: v for k, v in fn.items() if v is not None}})
        return out

    def format_dict(self) -> dict[str, Any] | None:
        """`text.format` in the chat `response_format` shape (None for plain text)."""
        fmt = self.text.format if self.text else None
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return {"type": "json_object"}
        spec = {"name": fmt.name, "schema": fmt.schema_, "description": fmt.description,
                "strict": fmt.strict}
        return {"type": "json_schema", "json_schema": {k: v for k, v in spec.items()
                                                        if v is not None}}
