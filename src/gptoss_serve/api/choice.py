"""One chat choice's output state: engine tokens -> OpenAI deltas, accumulated for non-streaming.

Owns the per-choice rules of the chat API: harmony mapping (`harmony.openai_map.ChatMapper`),
stop strings on the answer text, reasoning-token counting, content logprobs and the finish reason.
Streaming sends `consume()`'s deltas as they come; non-streaming sends `message()` built from the
very same deltas, so the two agree by construction. The one owner of a choice's output (content
after stop strings, reasoning, tool calls): the mapper below keeps none of it. Knows nothing of
HTTP or the engine's insides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from gptoss_serve.api.stop_strings import StopStringMatcher
from gptoss_serve.engine.request import StepOutput, TokenLogprob
from gptoss_serve.harmony.openai_map import ChatDelta, ChatMapper, ToolCallDelta
from gptoss_serve.harmony.tokenizer import CALL, CHANNEL, END, ENDOFTEXT, MESSAGE, RETURN, START

CONTENT, REASONING, TOOL = "content", "reasoning", "tool"
# control tokens after which text tokens not yet shown were header words, never text
_HEADER_ENDS = frozenset({MESSAGE, START, CHANNEL, END, RETURN, CALL, ENDOFTEXT})


class TokenText(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...
    def is_special(self, token_id: int) -> bool: ...


def logprob_entry(tok: TokenText, lp: TokenLogprob) -> dict[str, Any]:
    """OpenAI's `{token, logprob, bytes, top_logprobs}` for one sampled token."""

    def one(token_id: int, logprob: float) -> dict[str, Any]:
        text = tok.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {**one(lp.token_id, lp.logprob), "top_logprobs": [one(t, v) for t, v in lp.top]}


class ChoiceState:
    """Turns one sequence's StepOutputs into OpenAI chat deltas and remembers what was sent."""

    def __init__(
        self,
        index: int,
        tokenizer: TokenText,
        declared_tools: Sequence[str] = (),
        stops: Sequence[str] = (),
        reasoning_alias: bool = True,
        want_logprobs: bool = False,
    ):
        self.index = index
        self._tok = tokenizer
        self._mapper = ChatMapper(declared_tools)
        self._stops = StopStringMatcher(stops)
        self._alias = reasoning_alias
        self._want_logprobs = want_logprobs
        self._unplaced: list[TokenLogprob | None] = []  # text tokens whose text is not out yet
        self.content = ""
        self.reasoning = ""
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: list[dict[str, Any]] = []
        self._pending_logprobs: list[dict[str, Any]] = []
        self.completion_tokens = 0
        self.reasoning_tokens = 0
        self.finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    # ---- feeding -----------------------------------------------------------------------------
    def consume(self, out: StepOutput) -> list[dict[str, Any]]:
        """New tokens of this choice -> the deltas to send, in order (one chunk each)."""
        deltas: list[dict[str, Any]] = []
        lps = out.logprobs or ()
        for i, token_id in enumerate(out.new_token_ids):
            if self.done:
                break
            self.completion_tokens += 1
            pieces = self._mapper.feed([token_id])
            self._count(token_id, pieces, lps[i] if i < len(lps) else None)
            for piece in pieces:
                deltas.extend(self._apply(piece))
        if out.finished and not self.done:
            deltas.extend(self.finish(out.finish_reason))
        return _merge(deltas)

    def finish(self, engine_reason: str | None) -> list[dict[str, Any]]:
        """The sequence ended: surface what the parser still holds, release held-back text and
        fix the finish reason."""
        pieces = self._mapper.flush()
        self._place(pieces)
        deltas = [d for piece in pieces for d in self._apply(piece)]
        if self.done:  # a stop string in the flushed tail
            return _merge(deltas)
        tail = self._stops.flush()
        if tail:
            deltas.append(self._content_delta(tail))
        self.finish_reason = self._mapper.finish(engine_reason)
        return _merge(deltas)

    def take_logprobs(self) -> list[dict[str, Any]] | None:
        """Logprob entries not yet sent (streaming attaches them to the next chunk)."""
        if not self._want_logprobs:
            return None
        out, self._pending_logprobs = self._pending_logprobs, []
        return out

    # ---- the non-streamed message ------------------------------------------------------------
    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": self.content or None}
        msg["reasoning"] = self.reasoning or None
        if self._alias:
            msg["reasoning_content"] = self.reasoning or None
        calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        msg["tool_calls"] = calls or None
        return msg

    # ---- internals ---------------------------------------------------------------------------
    def _count(self, token_id: int, pieces: list[ChatDelta], lp: TokenLogprob | None) -> None:
        """Attribute tokens to reasoning or content (usage, logprobs) when their text comes out:
        a token held back (header words that turn out to be text, half a character, a possible
        special-token name) gets the kind of the text it becomes, so every content token has
        its logprob; header words are dropped at the control token that ends the header."""
        special = self._tok.is_special(token_id)
        if not special:
            self._unplaced.append(lp)
        if not self._place(pieces) and special and token_id in _HEADER_ENDS:
            self._unplaced = []

    def _place(self, pieces: list[ChatDelta]) -> bool:
        """Give the tokens not yet placed the kind of the first text in `pieces` (if any)."""
        kinds = [k for p in pieces for k in _kinds(p)]
        if not kinds:
            return False
        placed, self._unplaced = self._unplaced, []
        if kinds[0] == REASONING:
            self.reasoning_tokens += len(placed)
        if kinds[0] == CONTENT and self._want_logprobs:
            for lp in placed:
                if lp is not None:
                    entry = logprob_entry(self._tok, lp)
                    self.logprobs.append(entry)
                    self._pending_logprobs.append(entry)
        return True

    def _apply(self, piece: ChatDelta) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if piece.reasoning:
            self.reasoning += piece.reasoning
            out.append(self._reasoning_delta(piece.reasoning))
        if piece.content:
            text = self._stops.feed(piece.content)
            if text:
                out.append(self._content_delta(text))
            if self._stops.matched is not None:
                self.finish_reason = "stop"
                return out
        out.extend(self._tool_delta(call) for call in piece.tool_calls)
        return out

    def _content_delta(self, text: str) -> dict[str, Any]:
        self.content += text
        return {"content": text}

    def _reasoning_delta(self, text: str) -> dict[str, Any]:
        if self._alias:
            return {"reasoning": text, "reasoning_content": text}
        return {"reasoning": text}

    def _tool_delta(self, call: ToolCallDelta) -> dict[str, Any]:
        entry = self.tool_calls.get(call.index)
        if entry is None:
            fn = {"name": call.name or "", "arguments": ""}
            entry = {"id": call.id, "type": "function", "function": fn}
            self.tool_calls[call.index] = entry
            first = {"index": call.index, "id": call.id, "type": "function", "function": dict(fn)}
            first["function"]["arguments"] = call.arguments
            entry["function"]["arguments"] += call.arguments
            return {"tool_calls": [first]}
        entry["function"]["arguments"] += call.arguments
        return {"tool_calls": [{"index": call.index, "function": {"arguments": call.arguments}}]}


def _kinds(piece: ChatDelta) -> list[str]:
    kinds = [REASONING] if piece.reasoning else []
    kinds += [CONTENT] if piece.content else []
    return kinds + ([TOOL] if piece.tool_calls else [])


def _merge(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Join neighbouring deltas of the same kind (fewer chunks; order and text unchanged)."""
    merged: list[dict[str, Any]] = []
    for d in deltas:
        prev = merged[-1] if merged else None
        if prev is not None and prev.keys() == d.keys() and "tool_calls" not in d:
            merged[-1] = {k: prev[k] + d[k] for k in d}
        elif prev is not None and _same_call_args(prev, d):
            prev["tool_calls"][0]["function"]["arguments"] += d["tool_calls"][0]["function"][
                "arguments"
            ]
        else:
            merged.append(d)
    return merged


def _same_call_args(prev: dict[str, Any], d: dict[str, Any]) -> bool:
    """Both are tool-call deltas for the same call and `d` carries only arguments."""
    if "tool_calls" not in prev or "tool_calls" not in d:
        return False
    a, b = prev["tool_calls"][0], d["tool_calls"][0]
    return a["index"] == b["index"] and "id" not in b
