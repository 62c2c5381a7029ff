"""The scheduler: admission, chunked prefill, preemption, finishing (pure Python, no torch).

The vLLM rule: every running sequence needs `num_tokens - num_computed_tokens` more tokens; a step
hands them out from a token budget (`max_num_batched_tokens`), running sequences first (oldest
first), then admits waiting ones first come, first served while `max_num_seqs` and the budget
allow. Prefill, chunked prefill, decode and prefix hits are the same code path. When blocks run
out, the newest running sequence is preempted: its blocks are freed and it is recomputed later
(sampling is keyed by (seed, sequence, token index), so it resamples the same tokens).

Owns the waiting queue, the running list and request life cycles; knows nothing of torch, the
model or the sampler's maths.

Follows vLLM's v1 scheduler (`vllm/v1/core/sched/scheduler.py: Scheduler.schedule`).
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gptoss_serve.config import SchedulerConfig
from gptoss_serve.engine.block_manager import BlockManager
from gptoss_serve.engine.request import EngineRequest, StepOutput
from gptoss_serve.engine.sequence import RequestGroup, SampledToken, SeqStatus, Sequence
from gptoss_serve.engine.stats import EngineStats
from gptoss_serve.errors import ContextLengthError, InvalidRequestError

if TYPE_CHECKING:
    from gptoss_serve.engine.constraint import TokenMasks


@dataclass(slots=True)
class ScheduledSeq:
    """One sequence's share of a step."""

    seq: Sequence
    start_pos: int  # tokens already in the cache = absolute position of the first new token
    num_new_tokens: int  # tokens computed this step (a prefill chunk, or 1 for decode)
    sample: bool  # the chunk reaches the last token, so one token is sampled after it


@dataclass
class SchedulerOutput:
    """What one step runs."""

    scheduled: list[ScheduledSeq]  # batch order: running sequences first, then newly admitted
    num_batched_tokens: int  # sum of num_new_tokens, at most max_num_batched_tokens
    num_preempted: int  # sequences preempted while building this step (recomputed later)
    token_masks: TokenMasks | None = None  # structured-output masks of the sampled rows

    @property
    def sampling(self) -> list[ScheduledSeq]:
        """The rows the runner samples, in order; `update` expects one SampledToken per row."""
        return [s for s in self.scheduled if s.sample]


class Scheduler:
    def __init__(self, block_manager: BlockManager, config: SchedulerConfig, *,
                 max_model_len: int, eos_token_ids: tuple[int, ...] = (),
                 enable_prefix_caching: bool = True):
        self.bm = block_manager
        self.config = config
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.enable_prefix_caching = enable_prefix_caching
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.groups: dict[str, list[Sequence]] = {}
        self._pending: list[StepOutput] = []  # abort outputs, delivered by the next update
        self._next_seq_id = 0
        self._preemptions = self._hit_tokens = self._queried_tokens = 0
        self._last_step_tokens = self._steps = 0

    # ---- requests ------------------------------------------------------------------------------
    def add_request(self, request: EngineRequest) -> None:
        """Queue a request's n sequences. The request was validated once, before (`validate`,
        through `LLMEngine.validate`); only a request id in use is refused here."""
        if request.request_id in self.groups:
            raise InvalidRequestError(f"request id {request.request_id!r} is already in use")
        group = self._group(request)
        self.groups[request.request_id] = [self._new_seq(group, i)
                                           for i in range(request.sampling_params.n)]
        self.waiting.extend(self.groups[request.request_id])

    def validate(self, request: EngineRequest) -> None:
        """Raise a typed error for a request that can never run (empty, or longer than fits)."""
        num_prompt = len(request.prompt_token_ids)
        if num_prompt == 0:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        if request.sampling_params.n < 1:
            raise InvalidRequestError("n must be at least 1", param="n")
        if num_prompt >= self.max_model_len:
            raise ContextLengthError(
                f"the prompt has {num_prompt} tokens; this engine fits at most "
                f"{self.max_model_len} tokens (prompt plus at least one generated token)",
                prompt_tokens=num_prompt, limit=self.max_model_len)

    def _group(self, request: EngineRequest) -> RequestGroup:
        params = request.sampling_params
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        salt = b"" if self.enable_prefix_caching else request.request_id.encode()
        stops = self.eos_token_ids | set(params.stop_token_ids)
        if params.ignore_eos:
            stops = frozenset()
        return RequestGroup(request, seed, salt, stops)

    def _new_seq(self, group: RequestGroup, index: int) -> Sequence:
        self._next_seq_id += 1
        prompt = list(group.request.prompt_token_ids)
        return Sequence(group, index, self._next_seq_id, prompt, len(prompt))

    def abort(self, request_id: str) -> None:
        """Finish every sequence of the request now and free its blocks (idempotent)."""
        for seq in self.groups.pop(request_id, []):
            if seq.status is SeqStatus.WAITING:
                self.waiting.remove(seq)
            if not seq.is_finished:
                self._finish(seq, "abort")
                self._pending.append(self._output(seq, None))

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self._pending)

    # ---- schedule ------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        """Decode/continue running sequences first, then admit waiting ones FCFS."""
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledSeq] = []
        preempted_before = self._preemptions
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            if not self._reserve(seq, n):
                break
            scheduled.append(self._slice(seq, n))
            budget -= n
            i += 1
        if self._preemptions == preempted_before:
            budget = self._admit(scheduled, budget)
        num_tokens = self.config.max_num_batched_tokens - budget
        self._last_step_tokens = num_tokens
        self._steps += 1
        return SchedulerOutput(scheduled, num_tokens, self._preemptions - preempted_before)

    def _reserve(self, seq: Sequence, n: int) -> bool:
        """Allocate n tokens' blocks, preempting the newest sequences; False if seq itself went."""
        while not self.bm.allocate(seq, n):
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _admit(self, scheduled: list[ScheduledSeq], budget: int) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if seq.index > 0 and not seq.group.prompt_done:
                break  # siblings wait for the prompt's blocks, then share them
            hit = self.bm.match_prefix(seq)
            n = min(seq.num_tokens - hit * self.bm.block_size, budget)
            if not self.bm.allocate(seq, n, hit):
                if not self.running:  # the whole cache is free and still too small: give up on it
                    self._give_up(self.waiting.popleft())
                    continue
                break
            self.waiting.popleft()
            self._count_prefix(seq, hit)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            scheduled.append(self._slice(seq, n))
            budget -= n
        return budget

    def _give_up(self, seq: Sequence) -> None:
        self._finish(seq, "length")
        self._pending.append(self._output(seq, None))
        self._forget_if_done(seq.request_id)

    def _count_prefix(self, seq: Sequence, hit_blocks: int) -> None:
        if not seq.admitted_once:
            seq.admitted_once = True
            seq.num_cached_tokens = hit_blocks * self.bm.block_size
            self._queried_tokens += seq.num_prompt_tokens
            self._hit_tokens += seq.num_cached_tokens

    def _slice(self, seq: Sequence, n: int) -> ScheduledSeq:
        start = seq.num_computed_tokens
        return ScheduledSeq(seq, start, n, sample=start + n == seq.num_tokens)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.bm.free(seq)
        seq.status = SeqStatus.WAITING
        self.waiting.appendleft(seq)
        self._preemptions += 1

    # ---- update --------------------------------------------------------------------------------
    def update(self, out: SchedulerOutput, sampled: list[SampledToken]) -> list[StepOutput]:
        """Advance the scheduled sequences by the step's results; one StepOutput per sampled row."""
        outputs, self._pending = self._pending, []
        rows = iter(sampled)
        for s in out.scheduled:
            seq = s.seq
            tok = next(rows) if s.sample else None
            if seq.is_finished:  # aborted between schedule and update
                continue
            seq.num_computed_tokens += s.num_new_tokens
            seq.group.prompt_done |= seq.num_computed_tokens >= seq.num_prompt_tokens
            self.bm.commit(seq)
            if tok is not None:
                outputs.append(self._append(seq, tok))
        if self.config.debug_invariants:
            self.check_invariants()
        return outputs

    def _append(self, seq: Sequence, tok: SampledToken) -> StepOutput:
        seq.token_ids.append(tok.token_id)  # its logprob goes out in the StepOutput only
        reason = self._finish_reason(seq)
        if reason is not None:
            self._finish(seq, reason)
            self._forget_if_done(seq.request_id)
        return self._output(seq, tok)

    def _finish_reason(self, seq: Sequence) -> str | None:
        params = seq.params
        k = seq.num_output_tokens
        if k >= params.min_tokens and seq.token_ids[-1] in seq.group.stop_ids:
            return "stop"
        if k >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        self.bm.free(seq)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason

    def _forget_if_done(self, request_id: str) -> None:
        if all(s.is_finished for s in self.groups.get(request_id, [])):
            self.groups.pop(request_id, None)

    def _output(self, seq: Sequence, tok: SampledToken | None) -> StepOutput:
        return StepOutput(
            request_id=seq.request_id,
            index=seq.index,
            new_token_ids=() if tok is None else (tok.token_id,),
            logprobs=None if tok is None or tok.logprob is None else (tok.logprob,),
            finished=seq.is_finished,
            finish_reason=seq.finish_reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
        )

    # ---- introspection -------------------------------------------------------------------------
    def check_invariants(self) -> None:
        """Block-manager invariants over the running sequences; waiting ones own no blocks."""
        if any(s.full_blocks or s.sliding_blocks for s in self.waiting):
            raise AssertionError("a waiting sequence owns blocks")
        self.bm.check_invariants(self.running)

    def stats(self) -> EngineStats:
        running = {s.request_id for s in self.running}
        waiting = {s.request_id for s in self.waiting} - running
        return EngineStats(
            num_running_requests=len(running), num_waiting_requests=len(waiting),
            full_blocks_used=self.bm.full.num_used, full_blocks_free=self.bm.full.num_free,
            sliding_blocks_used=self.bm.sliding.num_used,
            sliding_blocks_free=self.bm.sliding.num_free,
            prefix_cache_queried_tokens=self._queried_tokens,
            prefix_cache_hit_tokens=self._hit_tokens, num_preemptions=self._preemptions,
            num_tokens_last_step=self._last_step_tokens, num_steps=self._steps)
