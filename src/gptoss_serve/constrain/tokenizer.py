"""llguidance's view of the o200k_harmony vocabulary (201088 ids, specials included), built once.

Owns the one `LLTokenizer` of the process, made offline from our tiktoken encoding (about a
second, the first time a constrained request arrives). Must not know grammars, requests or HTTP.
"""

from __future__ import annotations

import functools
import threading

import llguidance
from llguidance.tiktoken import lltokenizer_from_encoding

from gptoss_serve.harmony.tokenizer import CALL, RETURN, VOCAB_SIZE, get_tokenizer

# what an accepting grammar lets through to end the output: the engine's default stop ids
EOS_TOKENS = [RETURN, CALL]
_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _build() -> llguidance.LLTokenizer:
    enc = get_tokenizer()._enc  # the tiktoken Encoding (ranks + the 1090 special tokens)
    return lltokenizer_from_encoding(enc, n_vocab=VOCAB_SIZE, eos_token=EOS_TOKENS)


def ll_tokenizer() -> llguidance.LLTokenizer:
    """The process-wide LLTokenizer (thread-safe first build)."""
    with _LOCK:
        return _build()
