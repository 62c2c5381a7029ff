"""Test doubles for the API: FakeEngine (replays scripted token ids) and stream-folding helpers.

Owns only test scaffolding with the same surface as `AsyncEngine` (generate, abort, stats,
is_dead, max_model_len, model_config, shutdown): each request's sequences replay a token script,
a few tokens per step, ending like the real engine (stop ids unless ignore_eos, max_tokens ->
"length"). A gate can hold requests as "waiting" to test saturation. Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gptoss_serve.config import ModelConfig
from gptoss_serve.engine.request import EngineRequest, StepOutput, TokenLogprob
from gptoss_serve.engine.stats import EngineStats
from gptoss_serve.errors import EngineDeadError

Script = Callable[[EngineRequest, int], Sequence[int]]  # (request, sequence index) -> token ids
_SPECIAL = re.compile(r"(<\|[a-z_0-9]+\|>)")


def script_ids(tokenizer, text: str) -> list[int]:
    """Token ids of harmony-looking text: `<|name|>` pieces become their special ids."""
    ids: list[int] = []
    for piece in _SPECIAL.split(text):
        if _SPECIAL.fullmatch(piece):
            ids.append(tokenizer.encode_special(piece))
        elif piece:
            ids.extend(tokenizer.encode(piece))
    return ids


@dataclass
class FakeEngine:
    """Replays `script(request, index)` for every sequence, `tokens_per_step` ids at a time."""

    script: Script
    tokens_per_step: int = 1
    max_model_len: int = 4096
    model_config: ModelConfig = field(default_factory=ModelConfig)
    dead: bool = False
    admitted: list[EngineRequest] = field(default_factory=list)
    aborted: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    gate: asyncio.Event | None = None  # when set up and not set, requests wait before step one
    _waiting: int = 0
    _running: int = 0

    @property
    def is_dead(self) -> bool:
        return self.dead

    def abort(self, request_id: str) -> None:
        if request_id not in self.finished:
            self.aborted.add(request_id)

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running_requests=self._running, num_waiting_requests=self._waiting,
            full_blocks_used=self._running, full_blocks_free=100 - self._running,
            sliding_blocks_used=self._running, sliding_blocks_free=100 - self._running,
            prefix_cache_queried_tokens=0, prefix_cache_hit_tokens=0, num_preemptions=0,
            num_tokens_last_step=0, num_steps=0,
        )

    async def shutdown(self) -> None:
        self.dead = True

    async def generate(self, request: EngineRequest) -> AsyncIterator[StepOutput]:
        if self.dead:
            raise EngineDeadError("the engine is not running")
        self.admitted.append(request)
        try:
            await self._wait_gate()
            self._running += 1
            try:
                async for out in self._replay(request):
                    yield out
            finally:
                self._running -= 1
        finally:  # as AsyncEngine.generate: closed before the end, the request is aborted
            self.abort(request.request_id)

    async def _wait_gate(self) -> None:
        if self.gate is None:
            return
        self._waiting += 1
        try:
            await self.gate.wait()
        finally:
            self._waiting -= 1

    async def _replay(self, request: EngineRequest) -> AsyncIterator[StepOutput]:
        plans = [self._plan(request, i) for i in range(request.sampling_params.n)]
        pos = [0] * len(plans)
        while any(p < len(ids) for p, (ids, _) in zip(pos, plans, strict=True)):
            await asyncio.sleep(0)
            if request.request_id in self.aborted:
                return
            for i, (ids, reason) in enumerate(plans):
                if pos[i] >= len(ids):
                    continue
                new = tuple(ids[pos[i] : pos[i] + self.tokens_per_step])
                pos[i] += len(new)
                done = pos[i] >= len(ids)
                yield self._output(request, i, new, reason if done else None)
        self.finished.add(request.request_id)

    def _plan(self, request: EngineRequest, index: int) -> tuple[list[int], str]:
        """The ids this sequence will emit and how it ends, as the real engine would decide."""
        p = request.sampling_params
        ids = list(self.script(request, index))
        stops = set() if p.ignore_eos else set(p.stop_token_ids)
        for k, t in enumerate(ids):
            if t in stops and k + 1 >= p.min_tokens:
                ids, reason = ids[: k + 1], "stop"
                break
        else:
            reason = "length" if len(ids) >= p.max_tokens else "stop"
        if len(ids) > p.max_tokens:
            ids, reason = ids[: p.max_tokens], "length"
        return ids, reason

    def _output(
        self, request: EngineRequest, index: int, new: tuple[int, ...], reason: str | None
    ) -> StepOutput:
        k = request.sampling_params.logprobs
        lps = None
        if k is not None:
            lps = tuple(
                TokenLogprob(t, -0.25, tuple((t + j, -0.25 - j) for j in range(k))) for t in new
            )
        return StepOutput(
            request_id=request.request_id, index=index, new_token_ids=new, logprobs=lps,
            finished=reason is not None, finish_reason=reason,
            num_prompt_tokens=len(request.prompt_token_ids),
        )


def fixed_script(*scripts: Sequence[int]) -> Script:
    """Sequence i replays scripts[i] (the last script repeats for higher indices)."""
    return lambda _req, i: scripts[min(i, len(scripts) - 1)]


# ---- folding a stream of openai ChatCompletionChunk objects (docs/guards.md 7) -------------------
def fold_stream(chunks: list[Any]) -> dict[str, Any]:
    """{"choices": {index: {...fields...}}, "usage": ..., "ids": {...}} from parsed chunks."""
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        usage = chunk.usage or usage
        for c in chunk.choices:
            st = choices.setdefault(c.index, _empty())
            _fold_delta(st, c.delta)
            if c.finish_reason is not None:
                st["finish_reason"] = c.finish_reason
    return {"choices": choices, "usage": usage, "ids": {c.id for c in chunks}}


def _empty() -> dict[str, Any]:
    return {"role": None, "content": "", "reasoning": "", "reasoning_content": "",
            "tool_calls": {}, "finish_reason": None}


def _fold_delta(st: dict[str, Any], delta: Any) -> None:
    extra = delta.model_extra or {}
    st["role"] = st["role"] or delta.role
    st["content"] += delta.content or ""
    st["reasoning"] += extra.get("reasoning") or ""
    st["reasoning_content"] += extra.get("reasoning_content") or ""
    for call in delta.tool_calls or []:
        entry = st["tool_calls"].setdefault(call.index, {"id": None, "name": "", "arguments": ""})
        if call.id:
            entry["id"] = call.id
        if call.function and call.function.name:
            entry["name"] += call.function.name
        if call.function and call.function.arguments:
            entry["arguments"] += call.function.arguments


def message_fields(choice: Any) -> dict[str, Any]:
    """The same fields from a non-streamed choice."""
    msg = choice.message
    extra = msg.model_extra or {}
    calls = {
        i: {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
        for i, c in enumerate(msg.tool_calls or [])
    }
    return {"role": msg.role, "content": msg.content or "",
            "reasoning": extra.get("reasoning") or "",
            "reasoning_content": extra.get("reasoning_content") or "",
            "tool_calls": calls, "finish_reason": choice.finish_reason}


def without_ids(fields: dict[str, Any]) -> dict[str, Any]:
    """Tool-call ids are random per response: compare everything else."""
    calls = {i: {k: v for k, v in c.items() if k != "id"} for i, c in fields["tool_calls"].items()}
    return {**fields, "tool_calls": calls}
