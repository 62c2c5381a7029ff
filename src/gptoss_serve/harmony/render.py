"""Conversation + options -> prompt token ids, token-identical to openai-harmony 0.0.8.

Owns: the system message (identity, knowledge cutoff, date, reasoning effort, built-in tools,
valid channels), the developer message (instructions, function tools, response format), the
message header grammar, the rule for dropping earlier analysis, and the generation prompt
`<|start|>assistant`. Must not know: HTTP, the engine, how output is parsed.

Earlier chain of thought: we use openai-harmony's rule, not the intent of docs/model-facts.md §5.8:
only when the last assistant message is `final` are the `analysis` messages before the FIRST
`final` dropped (tests/harmony/test_render.py records where that differs from §5.8).

Response format (no API in openai-harmony, docs/model-facts.md §5.10): appended to the developer
instructions as `# Response Formats` / `## {name}` / `// {description}` / the schema as one line
of compact JSON.

Follows openai/harmony `src/encoding.rs` (the renderer behind
`render_conversation_for_completion`).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from gptoss_serve.harmony.builtin_tools import BUILTIN_NAMESPACES
from gptoss_serve.harmony.conversation import (
    Conversation,
    HarmonyMessage,
    HarmonyRenderError,
    conversation_from_openai,
)
from gptoss_serve.harmony.tokenizer import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    MESSAGE,
    RETURN,
    START,
    HarmonyTokenizer,
    get_tokenizer,
)
from gptoss_serve.harmony.tools_ts import Namespace, ToolSpec, namespace_from_dict, tools_section

__all__ = ["Conversation", "HarmonyMessage", "HarmonyRenderError", "RenderOptions",
           "RenderedPrompt", "conversation_from_openai", "render_prompt", "render_chat",
           "declared_function_names"]

IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
KNOWLEDGE_CUTOFF = "2024-06"
EFFORTS = ("low", "medium", "high")
CHANNELS_LINE = ("# Valid channels: analysis, commentary, final. "
                 "Channel must be included for every message.")
FUNCTIONS_LINE = "Calls to these tools must go to the commentary channel: 'functions'."
CONSTRAIN_PREFIX = "<|constrain|>"


@dataclass
class RenderOptions:
    reasoning_effort: str = "medium"
    current_date: str | None = None  # "YYYY-MM-DD"; None leaves the line out
    tools: list[dict] | None = None  # the OpenAI `tools` array (function tools)
    builtin_tools: tuple[str | dict, ...] = ()  # "browser", "python", or a namespace dict
    response_format: dict | None = None  # the OpenAI `response_format`


def resolve_date(value: str | None) -> str | None:
    """A `current_date` setting for RenderOptions: "today" is today's UTC date at the time of
    the call (a long-running server changes date at midnight), other values pass through."""
    if value == "today":
        return dt.datetime.now(dt.UTC).date().isoformat()
    return value


@dataclass
class RenderedPrompt:
    token_ids: list[int]
    stop_token_ids: tuple[int, ...] = (RETURN, CALL)


def function_namespace(tools: list[dict] | None) -> Namespace | None:
    """The `functions` namespace from an OpenAI tools array; None when it declares no tool."""
    if not tools:
        return None
    if not isinstance(tools, list):
        raise HarmonyRenderError("tools must be a list", param="tools")
    specs = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict):
            raise HarmonyRenderError("only tools of type 'function' are supported",
                                     param=f"tools[{i}]")
        name, params = fn.get("name"), fn.get("parameters")
        if not isinstance(name, str) or not name:
            raise HarmonyRenderError("a function needs a name", param=f"tools[{i}].function.name")
        if params is not None and not isinstance(params, dict):
            raise HarmonyRenderError("parameters must be a JSON schema object",
                                     param=f"tools[{i}].function.parameters")
        specs.append(ToolSpec(name, fn.get("description") or "", params))
    return Namespace("functions", None, tuple(specs))


def declared_function_names(tools: list[dict] | None) -> list[str]:
    """Names of the declared function tools (for the output mapper)."""
    namespace = function_namespace(tools)
    return [tool.name for tool in namespace.tools] if namespace else []


def system_text(options: RenderOptions, has_functions: bool) -> str:
    if options.reasoning_effort not in EFFORTS:
        raise HarmonyRenderError("reasoning_effort must be one of low, medium, high",
                                 param="reasoning_effort")
    top = [IDENTITY, f"Knowledge cutoff: {KNOWLEDGE_CUTOFF}"]
    if options.current_date:
        top.append(f"Current date: {options.current_date}")
    sections = ["\n".join(top), f"Reasoning: {options.reasoning_effort}"]
    names = [t for t in options.builtin_tools if isinstance(t, str)]
    unknown = set(names) - set(BUILTIN_NAMESPACES)
    if unknown:
        raise HarmonyRenderError(f"unknown built-in tools {sorted(unknown)}", param="tools")
    if options.builtin_tools:  # a dict is a tool's own description (its real limits)
        spaces = {(t if isinstance(t, str) else t["name"]): t for t in options.builtin_tools}
        sections.append(tools_section([
            namespace_from_dict(BUILTIN_NAMESPACES[t] if isinstance(t, str) else t)
            for t in spaces.values()]))
    sections.append(CHANNELS_LINE + ("\n" + FUNCTIONS_LINE if has_functions else ""))
    return "\n\n".join(sections)


def response_format_section(response_format: dict | None) -> str | None:
    """The `# Response Formats` text for a json_schema / json_object format, None for text."""
    if response_format is None or response_format.get("type") in (None, "text"):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        name, description, schema = "json_object", None, {"type": "object"}
    elif kind == "json_schema" and isinstance(response_format.get("json_schema"), dict):
        spec = response_format["json_schema"]
        name, description = spec.get("name"), spec.get("description")
        schema = spec.get("schema") if spec.get("schema") is not None else {}
        if not isinstance(name, str) or not name:
            raise HarmonyRenderError("json_schema needs a name",
                                     param="response_format.json_schema.name")
    else:
        raise HarmonyRenderError("unsupported response_format", param="response_format")
    lines = ["# Response Formats", "", f"## {name}", ""]
    if isinstance(description, str) and description:
        lines.append(f"// {description}")
    lines.append(json.dumps(schema, separators=(",", ":"), ensure_ascii=False))
    return "\n".join(lines)


def developer_text(instructions: str | None, functions: Namespace | None) -> str | None:
    sections = ["# Instructions", instructions] if instructions is not None else []
    if functions is not None:
        sections.append(tools_section([functions]))
    return "\n\n".join(sections) if sections else None


def kept_messages(messages: list[HarmonyMessage]) -> list[HarmonyMessage]:
    """openai-harmony's drop rule: if the last assistant message is final, drop the analysis
    messages that come before the first final message."""
    last = next((m for m in reversed(messages) if m.role == "assistant"), None)
    if last is None or last.channel != "final":
        return messages
    first_final = next(i for i, m in enumerate(messages) if m.channel == "final")
    return [m for i, m in enumerate(messages) if not (i < first_final and m.channel == "analysis")]


def render_message(tok: HarmonyTokenizer, msg: HarmonyMessage, out: list[int]) -> None:
    """<|start|>HEADER<|message|>CONTENT then <|call|> (assistant to a recipient) or <|end|>."""
    out.append(START)
    out += tok.encode(msg.name if msg.role == "tool" else msg.role)
    if msg.recipient is not None and msg.recipient != "all":
        out += tok.encode(f" to={msg.recipient}")
    if msg.channel is not None:
        out.append(CHANNEL)
        out += tok.encode(msg.channel)
    if msg.content_type is not None:
        if msg.content_type.startswith(CONSTRAIN_PREFIX):
            rest = msg.content_type[len(CONSTRAIN_PREFIX):]
            out += tok.encode(" ") + [CONSTRAIN] + tok.encode(rest)
        else:
            out += tok.encode(f" {msg.content_type}")
    out.append(MESSAGE)
    for text in (msg.content,) if isinstance(msg.content, str) else msg.content:
        out += tok.encode(text)
    out.append(CALL if msg.role == "assistant" and msg.recipient is not None else END)


def render_prompt(conversation: Conversation, options: RenderOptions) -> RenderedPrompt:
    """Prompt token ids ending in `<|start|>assistant`, and the stop ids (<|return|>, <|call|>)."""
    tok = get_tokenizer()
    functions = function_namespace(options.tools)
    instructions = [t for t in (conversation.instructions,
                                response_format_section(options.response_format)) if t is not None]
    head = [HarmonyMessage("system", system_text(options, functions is not None))]
    developer = developer_text("\n\n".join(instructions) if instructions else None, functions)
    if developer is not None:
        head.append(HarmonyMessage("developer", developer))
    out: list[int] = []
    for msg in head + kept_messages(conversation.messages):
        render_message(tok, msg, out)
    out += [START] + tok.encode("assistant")
    return RenderedPrompt(out)


def render_chat(messages: list[dict], options: RenderOptions) -> RenderedPrompt:
    """OpenAI chat messages + options -> prompt (the API's single entry point)."""
    return render_prompt(conversation_from_openai(messages), options)
