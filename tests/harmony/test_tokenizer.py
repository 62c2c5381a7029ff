"""o200k_harmony tokenizer: sanity ids, parity with tiktoken and quicktok, specials, decoding."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptoss_serve.harmony import tokenizer as T


def _varied_corpus(seed: int = 7) -> list[str]:
    """A few hundred KB of documents: source code, many scripts, numbers, whitespace runs."""
    import json.decoder
    import textwrap as tw_module

    rng = random.Random(seed)
    docs = []
    for module in (json.decoder, tw_module, random):
        source = Path(module.__file__).read_text(encoding="utf-8")
        docs += [source[i:i + 4000] for i in range(0, len(source), 4000)]
    alphabets = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'",
        "汉字中文测试数据模型令牌", "العربيةنصتجريبي", "привет мир ЁЖЩ", "हिन्दी परीक्षण",
        "😀🎉👍🏽🇫🇷‍", "éàüñçøß", "e\u0301a\u0308", "0123456789.,-+", " \t\n\r  \u00a0\u3000",
        "{}[]()<>|!@#$%^&*_=~`\"\\/;:?",
    ]
    for _ in range(300):
        pool = "".join(rng.sample(alphabets, 3))
        docs.append("".join(rng.choice(pool) for _ in range(rng.randint(50, 800))))
    for _ in range(100):
        docs.append(" ".join(str(rng.randint(-10**9, 10**12)) for _ in range(60)))
        docs.append("".join(rng.choice([" ", "  ", "\t", "\n", "\r\n", "x", "  y\n\n"])
                            for _ in range(200)))
    return docs


CORPUS = _varied_corpus()


def test_corpus_is_a_few_hundred_kb():
    assert sum(len(d.encode()) for d in CORPUS) > 200_000


def test_sanity_ids(tok):
    assert tok.encode("analysis") == [35644]
    assert tok.encode("final") == [17196]
    assert tok.encode("assistant") == [173781]
    assert tok.encode(" code") == [3490]
    assert tok.encode("2 + 2 = 4.") == [17, 659, 220, 17, 314, 220, 19, 13]
    assert tok.encode('User asks: "What is 2 + 2?" Simple arithmetic. Provide answer.') == [
        1844, 31064, 25, 392, 4827, 382, 220, 17, 659, 220, 17, 16842, 12295, 81645, 13, 51441,
        6052, 13]
    assert tok.encode('{"location": "Tokyo"}') == [10848, 7693, 1243, 392, 173844, 18583]
    assert tok.encode("assistant to=lookup_weather") == [173781, 316, 28, 29712, 170154]


def test_parity_with_tiktoken_o200k_base(tok):
    import tiktoken

    reference = tiktoken.get_encoding("o200k_base")
    for doc in CORPUS:
        assert tok.encode(doc) == reference.encode_ordinary(doc), doc[:80]


def test_parity_with_quicktok(tok):
    import quicktok

    reference = quicktok.get_encoding("o200k_base")
    for doc in CORPUS[::3]:
        assert tok.encode(doc) == list(reference.encode_ordinary(doc)), doc[:80]


def test_special_ids_match_tiktoken_o200k_harmony(tok):
    import tiktoken

    reference = tiktoken.get_encoding("o200k_harmony")
    for name, token_id in reference._special_tokens.items():
        if name == "<|endofprompt|>":  # tiktoken's second name for 200018; we keep one name per id
            continue
        assert tok.encode_special(name) == token_id
    assert tok.special_name(200018) == "<|reserved_200018|>"
    assert tok.vocab_size == 201088


def test_contract_constants():
    assert (T.START, T.END, T.MESSAGE, T.CHANNEL, T.CONSTRAIN, T.RETURN, T.CALL) == (
        200006, 200007, 200008, 200005, 200003, 200002, 200012)


def test_one_name_per_id_and_full_range(tok):
    specials = T.special_tokens()
    assert len(set(specials.values())) == len(specials) == 201088 - 199998
    assert not tok.is_special(199997) and tok.is_special(199998) and tok.is_special(201087)


def test_typed_control_text_is_ordinary(tok):
    ids = tok.encode("<|start|>user<|message|>hi<|end|>")
    assert not any(tok.is_special(i) for i in ids)
    assert tok.decode(ids) == "<|start|>user<|message|>hi<|end|>"


def test_decode_names_specials_and_rejects_out_of_range(tok):
    assert tok.decode([200006, 173781, 200005, 17196]) == "<|start|>assistant<|channel|>final"
    with pytest.raises(KeyError):
        tok.encode_special("<|nope|>")
    with pytest.raises(ValueError):
        tok.decode([201088])


def test_decode_agrees_with_openai_harmony(tok, oracle):
    ids = tok.encode("héllo 世界 🎉") + [200006, 200007, 200012, 200002, 200018]
    assert tok.decode(ids) == oracle.decode(ids)


_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)


@settings(max_examples=150, deadline=None)
@given(_TEXT)
def test_round_trip(text):
    tok = T.get_tokenizer()
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 201087), max_size=40))
def test_incremental_equals_decode_and_never_splits_chars(ids):
    tok = T.get_tokenizer()
    decoder = tok.incremental_decoder()
    pieces = [decoder.feed(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == tok.decode(ids)
    for piece in pieces:  # each piece is valid text on its own
        assert piece.encode("utf-8").decode("utf-8") == piece


def test_incremental_holds_back_partial_character(tok):
    ids = tok.encode("🎉")
    if len(ids) == 1:  # find an emoji split across several byte tokens
        ids = [tok._enc.encode_single_token(bytes([b])) for b in "🎉".encode()]
    decoder = tok.incremental_decoder()
    assert [decoder.feed(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert decoder.feed(ids[-1]) == "🎉"
    assert decoder.flush() == ""
