"""Shared fixtures for the harmony tests: one vocabulary file per session, in a temporary cache.

The environment variables of tiktoken and openai-harmony are pointed at a session directory before
anything loads an encoding, so the tests never touch the network or the user's caches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

_ENV_KEYS = ("TIKTOKEN_ENCODINGS_BASE", "TIKTOKEN_CACHE_DIR", "TIKTOKEN_RS_CACHE_DIR")


@pytest.fixture(scope="session", autouse=True)
def vocab_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Directory holding o200k_base.tiktoken; every library is pointed at it for the session."""
    from gptoss_serve.harmony.vocab import ensure_vocab_file

    root = tmp_path_factory.mktemp("vocab")
    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    os.environ.update({k: str(root) for k in _ENV_KEYS})
    ensure_vocab_file()
    yield str(root)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tok(vocab_dir: str):
    from gptoss_serve.harmony.tokenizer import get_tokenizer

    return get_tokenizer()


@pytest.fixture(scope="session")
def oracle(vocab_dir: str):
    """openai-harmony's gpt-oss encoding, reading the session's vocabulary file."""
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


@pytest.fixture(scope="session")
def ids(tok):
    """Token ids of a harmony string: `<|name|>` pieces become special ids, the rest text."""
    from gptoss_serve.api.testing import script_ids

    return lambda text: script_ids(tok, text)
