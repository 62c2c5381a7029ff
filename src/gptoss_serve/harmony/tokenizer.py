"""The o200k_harmony encoding of gpt-oss on tiktoken: encode, decode, incremental detokenize.

Owns: the special-token table (exactly one name per id, vocabulary size 201088), the rule that
text from users and tools is always encoded as ordinary text, and UTF-8-safe incremental
decoding. Must not know: the chat format, the conversation objects, torch or HTTP.

Follows tiktoken's `tiktoken_ext/openai_public.py: o200k_base` and openai/harmony
`src/tiktoken_ext/public_encodings.rs`.
"""

from __future__ import annotations

import base64
import codecs
import functools
from collections.abc import Sequence
from pathlib import Path

import tiktoken

from gptoss_serve.harmony.vocab import NUM_RANKS, ensure_vocab_file, sha256_ok

STARTOFTEXT, ENDOFTEXT = 199998, 199999
RETURN, CONSTRAIN, CHANNEL, START, END, MESSAGE, CALL = (
    200002, 200003, 200005, 200006, 200007, 200008, 200012,
)
VOCAB_SIZE = 201088

# o200k_base split regex (docs/model-facts.md §4.1).
PAT_STR = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])

_NAMED = {
    STARTOFTEXT: "<|startoftext|>", ENDOFTEXT: "<|endoftext|>", RETURN: "<|return|>",
    CONSTRAIN: "<|constrain|>", CHANNEL: "<|channel|>", START: "<|start|>", END: "<|end|>",
    MESSAGE: "<|message|>", CALL: "<|call|>",
}


def special_tokens() -> dict[str, int]:
    """Name -> id for ids 199998..201087; unnamed ids are `<|reserved_N|>` (one name per id)."""
    return {_NAMED.get(i, f"<|reserved_{i}|>"): i for i in range(NUM_RANKS, VOCAB_SIZE)}


def load_ranks(path: Path) -> dict[bytes, int]:
    """Parse a verified `base64 rank` file into tiktoken's mergeable ranks."""
    data = path.read_bytes()
    if not sha256_ok(data):
        raise ValueError(f"{path} does not have the sha256 of o200k_base.tiktoken")
    ranks = {}
    for line in data.splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


class IncrementalDecoder:
    """Turns token ids into text one at a time without ever splitting a UTF-8 character."""

    def __init__(self, tokenizer: HarmonyTokenizer):
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """New complete text after this token; invalid bytes become U+FFFD like `decode`."""
        return self._utf8.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """Whatever is still buffered (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


class HarmonyTokenizer:
    """o200k_harmony: ordinary BPE ids 0..199997, special ids 199998..201087."""

    vocab_size: int = VOCAB_SIZE

    def __init__(self, vocab_path: Path):
        self._specials = special_tokens()
        self._names = {i: name for name, i in self._specials.items()}
        self._enc = tiktoken.Encoding(
            name="o200k_harmony", pat_str=PAT_STR,
            mergeable_ranks=load_ranks(vocab_path), special_tokens=self._specials,
        )

    def encode(self, text: str) -> list[int]:
        """Ordinary text: a literal `<|start|>` typed by a user is NOT a control token."""
        return self._enc.encode_ordinary(text)

    def encode_special(self, name: str) -> int:
        """`<|start|>` -> 200006; KeyError for a name that is not a special token."""
        try:
            return self._specials[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a special token of o200k_harmony") from None

    def special_name(self, token_id: int) -> str | None:
        return self._names.get(token_id)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._names

    def token_bytes(self, token_id: int) -> bytes:
        """Bytes of one id (a special id gives its name); ValueError outside the vocabulary."""
        if not 0 <= token_id < VOCAB_SIZE:
            raise ValueError(f"token id {token_id} is outside the vocabulary (0..{VOCAB_SIZE - 1})")
        return self._enc.decode_single_token_bytes(token_id)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids; special ids decode to their names; invalid UTF-8 becomes U+FFFD."""
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def incremental_decoder(self) -> IncrementalDecoder:
        return IncrementalDecoder(self)


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> HarmonyTokenizer:
    """The process-wide tokenizer (finds or rebuilds the vocabulary file on first use)."""
    return HarmonyTokenizer(ensure_vocab_file())
