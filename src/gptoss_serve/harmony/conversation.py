"""Our conversation objects, and the one function that builds them from OpenAI chat messages.

Owns: HarmonyMessage / Conversation, and the mapping of OpenAI roles onto harmony messages:
`system` and `developer` -> the developer message's instructions (joined by a blank line);
`user` -> user; `assistant` -> an `analysis` message from `reasoning`/`reasoning_content`, then,
with `tool_calls`, its content as a `commentary` preamble and one `commentary` message to
`functions.NAME` (content type `<|constrain|>json`) per call, else its content as `final`;
`tool` -> a message authored by `functions.NAME` (NAME looked up from `tool_call_id`, else the
message's `name`) to `assistant` on `commentary`. Content is a string or a list of text parts
(several parts render back to back, each tokenized on its own, as openai-harmony renders several
text contents of one message; instructions join them back to back too). `name` on user/assistant
messages is ignored. Bad input raises HarmonyRenderError (a 400 naming the field). Must not know:
tokens, HTTP, the engine.

Follows vLLM's `harmony_utils.py` (OpenAI chat messages to harmony messages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gptoss_serve.errors import InvalidRequestError


class HarmonyRenderError(InvalidRequestError):
    """A conversation that cannot be rendered (400, with the offending parameter)."""


@dataclass(frozen=True)
class HarmonyMessage:
    role: str  # "user" | "assistant" | "tool" (system/developer are built by the renderer)
    content: str | tuple[str, ...]  # a tuple: several text parts, encoded one by one
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None  # "<|constrain|>json" renders the constrain token
    name: str | None = None  # the author of a tool message, e.g. "functions.get_weather"


@dataclass
class Conversation:
    messages: list[HarmonyMessage] = field(default_factory=list)
    instructions: str | None = None  # text of the OpenAI system/developer messages


Text = str | tuple[str, ...]


def joined(text: Text | None) -> str | None:
    """The text of a content (parts back to back)."""
    return text if text is None or isinstance(text, str) else "".join(text)


def _text(content: Any, param: str) -> Text | None:
    """A message's content: a string, the texts of several parts (a tuple; one part is a
    string), or None."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise HarmonyRenderError("content must be a string or a list of text parts", param=param)
    texts = []
    for i, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text"
                and isinstance(part.get("text"), str)):
            raise HarmonyRenderError("only text content parts are supported",
                                     param=f"{param}[{i}]")
        texts.append(part["text"])
    return texts[0] if len(texts) == 1 else tuple(texts)


def _string(value: Any, param: str, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise HarmonyRenderError(f"{param} must be a non-empty string" if required
                                 else f"{param} must be a string", param=param)
    return value


class _Builder:
    """Walks the OpenAI messages once, remembering tool-call ids for the tool results."""

    def __init__(self) -> None:
        self.conv = Conversation()
        self.instructions: list[str] = []
        self.call_names: dict[str, str] = {}

    def add(self, index: int, msg: Any) -> None:
        param = f"messages[{index}]"
        if not isinstance(msg, dict):
            raise HarmonyRenderError("each message must be an object", param=param)
        role = msg.get("role")
        handler = {"system": self._instructions, "developer": self._instructions,
                   "user": self._user, "assistant": self._assistant, "tool": self._tool}.get(role)
        if handler is None:
            raise HarmonyRenderError(f"unsupported role {role!r}", param=f"{param}.role")
        handler(msg, param)

    def _instructions(self, msg: dict, param: str) -> None:
        text = joined(_text(msg.get("content"), f"{param}.content"))
        if text is not None:
            self.instructions.append(text)

    def _user(self, msg: dict, param: str) -> None:
        text = _text(msg.get("content"), f"{param}.content")
        if text is None:
            raise HarmonyRenderError("a user message needs content", param=f"{param}.content")
        self.conv.messages.append(HarmonyMessage("user", text))

    def _assistant(self, msg: dict, param: str) -> None:
        reasoning = msg.get("reasoning")
        key = "reasoning"
        if reasoning is None:
            reasoning, key = msg.get("reasoning_content"), "reasoning_content"
        reasoning = _string(reasoning, f"{param}.{key}")
        content = _text(msg.get("content"), f"{param}.content")
        calls = msg.get("tool_calls") or []
        if not isinstance(calls, list):
            raise HarmonyRenderError("tool_calls must be a list", param=f"{param}.tool_calls")
        if reasoning:
            self.conv.messages.append(HarmonyMessage("assistant", reasoning, channel="analysis"))
        if not calls:
            if content is not None:
                self.conv.messages.append(HarmonyMessage("assistant", content, channel="final"))
            return
        if joined(content):
            self.conv.messages.append(HarmonyMessage("assistant", content, channel="commentary"))
        for j, call in enumerate(calls):
            self._call(call, f"{param}.tool_calls[{j}]")

    def _call(self, call: Any, param: str) -> None:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            raise HarmonyRenderError("a tool call needs a function object", param=param)
        name = _string(function.get("name"), f"{param}.function.name", required=True)
        arguments = _string(function.get("arguments"), f"{param}.function.arguments")
        if isinstance(call.get("id"), str):
            self.call_names[call["id"]] = name
        self.conv.messages.append(HarmonyMessage(
            "assistant", arguments if arguments is not None else "{}", channel="commentary",
            recipient=f"functions.{name}", content_type="<|constrain|>json"))

    def _tool(self, msg: dict, param: str) -> None:
        name = self.call_names.get(msg.get("tool_call_id")) or msg.get("name")
        if not isinstance(name, str) or not name:
            raise HarmonyRenderError("tool_call_id does not match an earlier assistant tool call",
                                     param=f"{param}.tool_call_id")
        text = _text(msg.get("content"), f"{param}.content") or ""
        self.conv.messages.append(HarmonyMessage(
            "tool", text, channel="commentary", recipient="assistant", name=f"functions.{name}"))

    def result(self) -> Conversation:
        self.conv.instructions = "\n\n".join(self.instructions) if self.instructions else None
        return self.conv


def conversation_from_openai(messages: list[dict]) -> Conversation:
    """OpenAI chat messages (validated dicts) -> our Conversation; HarmonyRenderError if bad."""
    if not isinstance(messages, list) or not messages:
        raise HarmonyRenderError("messages must be a non-empty list", param="messages")
    builder = _Builder()
    for index, msg in enumerate(messages):
        builder.add(index, msg)
    return builder.result()
