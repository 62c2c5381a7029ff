"""The vocabulary file is found or rebuilt offline from quicktok-v1 and stored for both libs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptoss_serve.errors import StartupError
from gptoss_serve.harmony import vocab

OFFICIAL_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "tk"),
        "TIKTOKEN_RS_CACHE_DIR": str(tmp_path / "rs"),
    }


@pytest.fixture
def fast_rebuild(vocab_dir, monkeypatch):
    """Serve the session's verified bytes instead of rebuilding (the rebuild has its own test)."""
    data = (Path(vocab_dir) / vocab.VOCAB_FILENAME).read_bytes()
    monkeypatch.setattr(vocab, "rebuild_from_quicktok", lambda: data)


def test_cache_key_is_sha1_of_url():
    assert vocab.CACHE_KEY == "fb374d419588a4632f3f557e76b4b70aebbca790"


def test_rebuild_offline_in_empty_cache(tmp_path, monkeypatch):
    def no_network():
        raise AssertionError("the rebuild path must not download")

    monkeypatch.setattr(vocab, "download_with_tiktoken", no_network)
    env = _env(tmp_path)
    path = vocab.ensure_vocab_file(env)
    tk_file = tmp_path / "tk" / vocab.CACHE_KEY
    rs_file = tmp_path / "rs" / vocab.CACHE_KEY
    assert path == tk_file
    for stored in (tk_file, rs_file):
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == OFFICIAL_SHA256


def test_tiktoken_reads_the_rebuilt_cache(tmp_path, monkeypatch, fast_rebuild):
    from tiktoken import load

    env = _env(tmp_path)
    vocab.ensure_vocab_file(env)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", env["TIKTOKEN_CACHE_DIR"])

    def offline(url):
        raise AssertionError(f"tiktoken tried to download {url}")

    monkeypatch.setattr(load, "read_file", offline)
    data = load.read_file_cached(vocab.VOCAB_URL, OFFICIAL_SHA256)
    assert hashlib.sha256(data).hexdigest() == OFFICIAL_SHA256


def test_openai_harmony_reads_its_cache_without_encodings_base(tmp_path, fast_rebuild):
    env = _env(tmp_path)
    vocab.ensure_vocab_file(env)
    child_env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_ENCODINGS_BASE"}
    child_env.update(env)
    code = (
        "from openai_harmony import load_harmony_encoding as l, HarmonyEncodingName as n;"
        "print(l(n.HARMONY_GPT_OSS).encode('analysis'))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[35644]"


def test_corrupt_copy_is_replaced(tmp_path, fast_rebuild):
    env = _env(tmp_path)
    bad = tmp_path / "rs" / vocab.CACHE_KEY
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a vocabulary\n")
    vocab.ensure_vocab_file(env)
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == OFFICIAL_SHA256


def test_existing_encodings_base_is_used_and_copied(tmp_path, fast_rebuild):
    source = vocab.ensure_vocab_file(_env(tmp_path / "first"))
    base = tmp_path / "base"
    base.mkdir()
    (base / vocab.VOCAB_FILENAME).write_bytes(source.read_bytes())
    env = {**_env(tmp_path / "second"), "TIKTOKEN_ENCODINGS_BASE": str(base)}
    assert vocab.ensure_vocab_file(env) == base / vocab.VOCAB_FILENAME
    assert (tmp_path / "second" / "rs" / vocab.CACHE_KEY).exists()


def test_no_source_names_file_and_fix(tmp_path, monkeypatch):
    def broken():
        raise OSError("offline")

    monkeypatch.setattr(vocab, "rebuild_from_quicktok", broken)
    monkeypatch.setattr(vocab, "download_with_tiktoken", broken)
    with pytest.raises(StartupError) as info:
        vocab.ensure_vocab_file(_env(tmp_path))
    message = str(info.value)
    assert "o200k_base.tiktoken" in message and "TIKTOKEN_ENCODINGS_BASE" in message
    assert "quicktok" in message


def test_wrong_bytes_from_a_source_are_rejected(tmp_path, monkeypatch):
    monkeypatch.setattr(vocab, "rebuild_from_quicktok", lambda: b"tampered 0\n")
    monkeypatch.setattr(vocab, "download_with_tiktoken", lambda: b"tampered 0\n")
    with pytest.raises(StartupError, match="sha256"):
        vocab.ensure_vocab_file(_env(tmp_path))


def test_unwritable_locations_name_the_paths(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    env = {"TIKTOKEN_CACHE_DIR": str(blocker / "a"), "TIKTOKEN_RS_CACHE_DIR": str(blocker / "b")}
    with pytest.raises(StartupError) as info:
        vocab.ensure_vocab_file(env)
    assert str(blocker / "a") in str(info.value)
