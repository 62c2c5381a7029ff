"""Benchmark workloads: the list of prompts a run sends, with their exact token lengths.

Owns the `random` workload (prompts made of real token ids so that every prompt has exactly the
length asked for) and the ShareGPT-style JSON workload. Knows a tokenizer only through its
`encode(text) -> list[int]` / `decode(ids) -> str` methods; knows nothing of HTTP or servers.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gptoss_serve.errors import InvalidRequestError

# A token whose text is one space and lowercase ASCII letters re-encodes to itself when such
# tokens are joined: the o200k pre-tokenizer splits the text exactly at those spaces, and every
# piece that is itself a vocabulary entry maps straight to that entry. So a prompt made of them
# has the same length in tokens whether it is sent as ids or as text.
_WORD_TOKEN = re.compile(r"^ [a-z]{2,}$")
_POOL_SCAN_LIMIT = 60_000
_POOL_SIZE = 4_000


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class BenchRequest:
    """One prompt of a workload: its text, its token ids when known, and the lengths."""

    prompt: str
    prompt_ids: tuple[int, ...] | None
    prompt_len: int
    output_len: int


def word_token_pool(tokenizer: Tokenizer, limit: int = _POOL_SCAN_LIMIT) -> list[int]:
    """Token ids (scanned from 0 up to `limit`) whose text is ' ' + lowercase letters."""
    pool = [i for i in range(limit) if _WORD_TOKEN.match(tokenizer.decode([i]))]
    if not pool:
        raise InvalidRequestError("the tokenizer has no plain word tokens for random prompts")
    return pool[:_POOL_SIZE]


def sample_lengths(mean: int, range_ratio: float, n: int, rng: random.Random) -> list[int]:
    """`n` lengths drawn uniformly from [mean*(1-r), mean*(1+r)], never below 1."""
    if not 0.0 <= range_ratio < 1.0:
        raise InvalidRequestError("random-range-ratio must be in [0, 1)", param="range_ratio")
    if mean < 1:
        raise InvalidRequestError("random lengths must be at least 1")
    low = max(1, int(mean * (1.0 - range_ratio)))
    high = max(low, int(mean * (1.0 + range_ratio)))
    return [rng.randint(low, high) for _ in range(n)]


def random_workload(
    tokenizer: Tokenizer,
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 0.0,
    seed: int = 0,
) -> list[BenchRequest]:
    """Prompts of random word tokens with the asked lengths; the same seed gives the same list."""
    rng = random.Random(seed)
    pool = word_token_pool(tokenizer)
    in_lens = sample_lengths(input_len, range_ratio, num_prompts, rng)
    out_lens = sample_lengths(output_len, range_ratio, num_prompts, rng)
    requests = []
    for n_in, n_out in zip(in_lens, out_lens, strict=True):
        ids = tuple(rng.choice(pool) for _ in range(n_in))
        requests.append(BenchRequest(tokenizer.decode(ids), ids, n_in, n_out))
    return requests


def _first_turns(entry: dict) -> tuple[str, str] | None:
    turns = entry.get("conversations") or entry.get("conversation") or []
    if len(turns) < 2:
        return None
    first, second = turns[0], turns[1]
    text = lambda t: t.get("value", t.get("content")) if isinstance(t, dict) else None
    prompt, answer = text(first), text(second)
    if not isinstance(prompt, str) or not isinstance(answer, str):
        return None
    return prompt, answer


def sharegpt_workload(
    path: str | Path,
    tokenizer: Tokenizer,
    num_prompts: int,
    seed: int = 0,
    output_len: int | None = None,
    max_prompt_len: int = 1024,
    max_total_len: int = 2048,
) -> list[BenchRequest]:
    """The first human/assistant turn pair of ShareGPT-style entries, shuffled with `seed`.

    The output length is the answer's length in tokens unless `output_len` fixes it. Pairs with a
    prompt or answer shorter than 4 tokens, or longer than the limits, are skipped.
    """
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"cannot read ShareGPT file {path}: {exc}") from exc
    if not isinstance(entries, list):
        raise InvalidRequestError("a ShareGPT file must hold a JSON list of conversations")
    random.Random(seed).shuffle(entries)
    requests: list[BenchRequest] = []
    for entry in entries:
        pair = _first_turns(entry) if isinstance(entry, dict) else None
        if pair is None:
            continue
        ids = tokenizer.encode(pair[0])
        n_out = output_len or len(tokenizer.encode(pair[1]))
        too_long = len(ids) > max_prompt_len or len(ids) + n_out > max_total_len
        if len(ids) < 4 or n_out < 4 or too_long:
            continue
        requests.append(BenchRequest(pair[0], tuple(ids), len(ids), n_out))
        if len(requests) == num_prompts:
            break
    if not requests:
        raise InvalidRequestError(f"no usable conversations in {path}")
    return requests
