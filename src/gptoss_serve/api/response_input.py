"""Responses input items -> harmony message dicts, and a conversation's prompt.

Owns the mapping of OpenAI input items onto harmony messages (the Responses counterpart of
`harmony/conversation.py`): `user` message -> user; `system`/`developer` messages -> developer
instructions (joined after `instructions`); `assistant` message -> `final` (a `phase` of
`commentary` -> a `commentary` preamble); `reasoning` -> `analysis` (skipped when it carries
no text, e.g. only `encrypted_content`, which this server never issues); `function_call` -> a
`commentary` message to `functions.NAME` with content type `<|constrain|>json`;
`function_call_output` -> a message from `functions.NAME` (found by `call_id` in this input or the
stored chain) to the assistant on `commentary`; `code_interpreter_call` -> the model's message to
`python` and the tool's reply. `web_search_call` items are accepted and skipped: the page text the
model saw is not in them (a chain through `previous_response_id` keeps it). Also turns the whole
conversation into prompt token ids with `harmony/render.py`. Must not know: HTTP, SQLite, tools.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from gptoss_serve.api.responses_schemas import (
    CodeInterpreterCallItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    ReasoningItem,
    ResponsesRequest,
)
from gptoss_serve.errors import InvalidRequestError
from gptoss_serve.harmony.render import (
    Conversation,
    HarmonyMessage,
    RenderedPrompt,
    RenderOptions,
    render_prompt,
)

_MESSAGE_FIELDS = {f.name for f in fields(HarmonyMessage)}


@dataclass
class TurnInput:
    messages: list[dict[str, Any]]  # the new harmony messages of this request
    instructions: str | None


def assistant(content: str, channel: str | None, recipient: str | None = None,
              content_type: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "channel": channel,
            "recipient": recipient, "content_type": content_type, **extra}


def tool_reply(author: str, content: str, channel: str | None) -> dict[str, Any]:
    return {"role": "tool", "content": content, "channel": channel, "recipient": "assistant",
            "content_type": None, "name": author}


def call_names(messages: list[dict[str, Any]]) -> dict[str, str]:
    """call_id -> function name of the function calls in a conversation."""
    return {m["call_id"]: m["recipient"].removeprefix("functions.")
            for m in messages if m.get("call_id") and m.get("recipient")}


def turn_input(req: ResponsesRequest, history: list[dict[str, Any]]) -> TurnInput:
    """The request's input as harmony messages; 400 naming the item when one cannot be used."""
    if isinstance(req.input, str):
        return TurnInput([{"role": "user", "content": req.input}], req.instructions)
    names = call_names(history)
    out: list[dict[str, Any]] = []
    extra_instructions: list[str] = []
    for i, item in enumerate(req.input):
        param = f"input.{i}"
        if isinstance(item, MessageItem):
            _message(item, out, extra_instructions)
        elif isinstance(item, ReasoningItem):
            if item.text():  # an item with only encrypted_content has nothing we can render
                out.append(assistant(item.text(), "analysis"))
        elif isinstance(item, FunctionCallItem):
            names[item.call_id] = item.name
            out.append(assistant(item.arguments, "commentary", f"functions.{item.name}",
                                 "<|constrain|>json", call_id=item.call_id))
        elif isinstance(item, FunctionCallOutputItem):
            name = names.get(item.call_id)
            if name is None:
                raise InvalidRequestError(
                    f"No function call found for call_id {item.call_id!r} (neither in this "
                    "input nor in the previous response)", param=f"{param}.call_id")
            out.append(tool_reply(f"functions.{name}", item.text(), "commentary"))
        elif isinstance(item, CodeInterpreterCallItem):
            out.append(assistant(item.code or "", "analysis", "python", "code"))
            out.append(tool_reply("python", item.output_text(), "analysis"))
    joined = [t for t in [req.instructions, *extra_instructions] if t]
    return TurnInput(out, "\n\n".join(joined) if joined else None)


def _message(item: MessageItem, out: list[dict[str, Any]], instructions: list[str]) -> None:
    text = item.text()
    if item.role in ("system", "developer"):
        instructions.append(text)
    elif item.role == "user":
        out.append({"role": "user", "content": text})
    else:
        out.append(assistant(text, "commentary" if item.phase == "commentary" else "final"))


def render_conversation(messages: list[dict[str, Any]], instructions: str | None,
                        options: RenderOptions) -> RenderedPrompt:
    """Prompt token ids of a conversation of harmony message dicts."""
    conv = Conversation(
        [HarmonyMessage(**{k: v for k, v in m.items() if k in _MESSAGE_FIELDS})
         for m in messages], instructions)
    return render_prompt(conv, options)
