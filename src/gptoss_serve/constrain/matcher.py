"""Compiled grammars (cached) and the per-sequence constraint the engine drives.

`compile_grammar(text)` builds an llguidance matcher once per distinct grammar (LRU cache; a
request's matcher is a cheap `deep_copy` of the cached one) and raises `GrammarError` with
llguidance's message for a grammar it rejects. `ConstraintSpec` is the request's factory
(`engine.constraint.ConstraintFactory`); `GrammarConstraint` is one sequence's state
(`engine.constraint.TokenConstraint`).

Reasoning budget: the constraint counts the tokens of prelude bodies (analysis and commentary
preambles: everything before the constrained message). When they reach the budget inside a body,
it forces `<|end|><|start|>assistant` and then follows the `after_budget` grammar (the tail
alone), so with no tools the next tokens are forced to `<|channel|>final<|message|>`.
Must not know requests, HTTP or the sampler.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import llguidance
import torch

from gptoss_serve.constrain.tokenizer import EOS_TOKENS, ll_tokenizer
from gptoss_serve.harmony.tokenizer import (
    CALL,
    END,
    MESSAGE,
    RETURN,
    START,
    get_tokenizer,
)

CACHE_SIZE = 256
PRELUDE_HEADERS = ("analysis", "commentary")  # header text (specials removed) of a prelude
_LOCK = threading.Lock()
_CACHE: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()


class GrammarError(ValueError):
    """llguidance refused a grammar; the message says why."""


def compile_grammar(grammar: str) -> llguidance.LLMatcher:
    """A fresh matcher for `grammar` (compiled at most once while it stays in the cache)."""
    with _LOCK:
        base = _CACHE.get(grammar)
        if base is not None:
            _CACHE.move_to_end(grammar)
            return base.deep_copy()
    base = llguidance.LLMatcher(ll_tokenizer(), grammar, log_level=0)
    if base.is_error():
        raise GrammarError(base.get_error())
    with _LOCK:
        _CACHE[grammar] = base
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return base.deep_copy()


def cache_size() -> int:
    return len(_CACHE)


@dataclass(frozen=True, eq=False)
class ConstraintSpec:
    """A request's constraint: its grammar, and for harmony the budget and the grammar after it."""

    grammar: str
    max_reasoning_tokens: int | None = None
    after_budget: str | None = None  # the tail-only grammar (harmony with a budget)
    harmony: bool = True  # track harmony message bodies (False: raw text, /v1/completions)

    def __post_init__(self) -> None:
        compile_grammar(self.grammar)  # refuse a bad grammar now, and warm the cache
        if self.after_budget is not None:
            compile_grammar(self.after_budget)

    def new_constraint(self) -> GrammarConstraint:
        return GrammarConstraint(self)


class GrammarConstraint:
    """One sequence: an llguidance matcher plus the harmony body counter for the budget."""

    def __init__(self, spec: ConstraintSpec):
        self.spec = spec
        self.matcher = compile_grammar(spec.grammar)
        self.forced: list[int] = []  # tokens the budget forces next
        self.header: list[int] = []  # tokens of the header being read
        self.in_body = False
        self.in_prelude = False
        self.prelude_tokens = 0  # tokens spent in prelude bodies so far
        self.failed = False

    # ---- TokenConstraint ---------------------------------------------------------------------
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        out = bitmask[row]
        if self.forced or self.failed:
            out.zero_()
            for t in self.forced[:1] if self.forced else EOS_TOKENS:
                out[t // 32] |= _bit(t % 32)
            return
        self.matcher.unsafe_compute_mask_ptr(out.data_ptr(), out.numel() * 4)

    def accept_token(self, token_id: int) -> bool:
        if self.forced:
            ok = token_id == self.forced.pop(0)
            if ok and not self.forced:
                self.matcher = compile_grammar(self.spec.after_budget or "")
            self.failed |= not ok
            return ok
        ok = self.matcher.consume_token(token_id)
        self.failed |= not ok
        if self.spec.harmony:
            self._track(token_id)
        return ok

    def is_finished(self) -> bool:
        return not self.forced and (self.matcher.is_stopped() or self.matcher.is_accepting())

    # ---- harmony bookkeeping -----------------------------------------------------------------
    def _track(self, token_id: int) -> None:
        if token_id == MESSAGE and not self.in_body:
            self.in_body, self.in_prelude = True, _is_prelude(self.header)
            self.header = []
        elif token_id in (END, RETURN, CALL):
            self.in_body = self.in_prelude = False
        elif token_id == START:
            self.header = []
        elif self.in_prelude:
            self.prelude_tokens += 1
        elif not self.in_body:
            self.header.append(token_id)
        budget = self.spec.max_reasoning_tokens
        if (self.in_prelude and budget is not None and self.prelude_tokens >= budget
                and self.spec.after_budget is not None):
            self.forced = [END, START, *get_tokenizer().encode("assistant")]
            self.in_body = self.in_prelude = False


def _is_prelude(header: list[int]) -> bool:
    """Whether a header (tokens after `<|start|>`, or after the prompt) opens a prelude: its
    channel is analysis or commentary and it has no recipient."""
    text = get_tokenizer().decode(header)
    channel = text.rsplit("<|channel|>", 1)[-1].strip()
    return channel in PRELUDE_HEADERS and "to=" not in text


def _bit(i: int) -> int:
    """Bit i of an int32 word as a Python int in int32's range."""
    return -(1 << 31) if i == 31 else 1 << i
