"""`gptoss-serve chat`: talk to a checkpoint in the terminal, no HTTP in between.

Owns the terminal conversation: the message history, rendering it with harmony, stepping the
engine for one reply at a time and printing the reply as it is generated (the final answer; the
chain of thought too, marked, with `show_reasoning`). Lines starting with `/` are commands:
`/reset` forgets the conversation, `/exit` (or end of input) leaves. Knows nothing of argv (the
CLI passes a `ChatOptions`) and nothing of HTTP.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TextIO

from gptoss_serve.engine.engine import LLMEngine
from gptoss_serve.engine.request import CHAT_TEMPERATURE, EngineRequest, SamplingParams
from gptoss_serve.errors import InvalidRequestError
from gptoss_serve.harmony.openai_map import ChatDelta, ChatMapper
from gptoss_serve.harmony.render import RenderOptions, render_chat, resolve_date

REASONING_MARK = "[reasoning] "


@dataclass(frozen=True)
class ChatOptions:
    system: str | None = None  # a developer/system instruction for the whole conversation
    reasoning_effort: str = "medium"  # low | medium | high
    max_tokens: int = 1024
    temperature: float = CHAT_TEMPERATURE
    top_p: float = 1.0
    seed: int | None = None
    show_reasoning: bool = False
    current_date: str | None = "today"  # YYYY-MM-DD | today | None


class ChatSession:
    """One conversation with an engine; `reply` generates and prints one assistant turn."""

    def __init__(self, engine: LLMEngine, options: ChatOptions, out: TextIO):
        self.engine, self.options, self.out = engine, options, out
        self.messages: list[dict[str, str]] = []
        self._ids = itertools.count()
        if options.system:
            self.messages.append({"role": "system", "content": options.system})

    def reset(self) -> None:
        self.messages = self.messages[:1] if self.options.system else []

    def reply(self, user_text: str) -> str:
        """Add the user's turn, print the answer as it comes; returns the answer's text."""
        self.messages.append({"role": "user", "content": user_text})
        prompt = render_chat(self.messages, RenderOptions(
            reasoning_effort=self.options.reasoning_effort,
            current_date=resolve_date(self.options.current_date)))
        o = self.options
        room = self.engine.max_model_len - len(prompt.token_ids)  # the answer is cut to fit
        params = SamplingParams(temperature=o.temperature, top_p=o.top_p, seed=o.seed,
                                max_tokens=max(1, min(o.max_tokens, room)),
                                stop_token_ids=prompt.stop_token_ids)
        request = EngineRequest(f"chat-{next(self._ids)}", tuple(prompt.token_ids), params)
        try:
            self.engine.validate(request)
        except InvalidRequestError:
            self.messages.pop()  # the turn was not taken: the user may /reset or go shorter
            raise
        mapper = ChatMapper()
        printer = _Printer(self.out, o.show_reasoning)
        self.engine.enqueue(request)  # validated above
        reason = None
        while self.engine.has_unfinished():
            for step in self.engine.step():
                printer.show(mapper.feed(step.new_token_ids))
                reason = step.finish_reason or reason
        printer.show(mapper.flush())
        printer.end(mapper.finish(reason))
        answer = "".join(printer.answer)
        self.messages.append({"role": "assistant", "content": answer})
        return answer


class _Printer:
    """Prints deltas as they come: reasoning lines marked (when shown), then the answer; keeps
    the answer's text (the turn's one copy, for the history)."""

    def __init__(self, out: TextIO, show_reasoning: bool):
        self.out, self.show_reasoning = out, show_reasoning
        self.in_reasoning = False
        self.answer: list[str] = []

    def show(self, deltas: Iterable[ChatDelta]) -> None:
        for d in deltas:
            if d.reasoning and self.show_reasoning:
                if not self.in_reasoning:
                    self.out.write(REASONING_MARK)
                    self.in_reasoning = True
                self.out.write(d.reasoning)
            if d.content:
                if self.in_reasoning:
                    self.out.write("\n")
                    self.in_reasoning = False
                self.out.write(d.content)
                self.answer.append(d.content)
            for call in d.tool_calls:
                self.out.write(f"[tool call {call.name or ''}] {call.arguments}")
        self.out.flush()

    def end(self, finish_reason: str) -> None:
        note = "" if finish_reason == "stop" else f"\n[finish_reason: {finish_reason}]"
        self.out.write(note + "\n")
        self.out.flush()


HELP = "[/reset forgets the conversation, /exit (or Ctrl-D) leaves, /help shows this]\n"


def _is_command(text: str) -> bool:
    """A single word starting with "/" (a line such as "/usr/bin is where?" is a message)."""
    return text.startswith("/") and len(text) > 1 and not any(c.isspace() for c in text)


def run_chat(engine: LLMEngine, options: ChatOptions, read_line: Callable[[], str | None],
             out: TextIO) -> int:
    """The loop: read a line (None = end of input), answer it, until /exit or end of input."""
    session = ChatSession(engine, options, out)
    while (line := read_line()) is not None:
        text = line.strip()
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            out.write("[conversation reset]\n")
            continue
        if _is_command(text):  # /help, or a command that does not exist: never sent
            out.write(HELP if text == "/help" else f"[unknown command {text}; /help lists them]\n")
            continue
        if text:
            try:
                session.reply(text)
            except InvalidRequestError as e:
                out.write(f"[error] {e.message}\n")
    return 0
