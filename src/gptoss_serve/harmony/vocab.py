"""Finds, downloads or rebuilds the o200k BPE rank file (`o200k_base.tiktoken`) with no network.

Owns: where tiktoken and openai-harmony look for the file, its sha256 check, the offline rebuild
from the token data shipped by the PyPI package `quicktok-v1`, and storing the file in both
libraries' caches. Must not know: the special tokens, the chat format, torch or HTTP.

Order of attempts in `ensure_vocab_file()`:
1. an existing, sha256-valid copy in any place the two libraries read;
2. a rebuild from quicktok-v1 (offline, about a second; byte-identical to the official file,
   which the sha256 check proves);
3. a download by tiktoken (only when quicktok-v1 is missing).
The file is then written into tiktoken's cache, openai-harmony's cache and, when the user set
`TIKTOKEN_ENCODINGS_BASE`, into that directory.

Follows tiktoken's `load.py` and openai/harmony `src/tiktoken_ext/public_encodings.rs` (where
each looks for the file).
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path

from gptoss_serve.errors import StartupError

VOCAB_FILENAME = "o200k_base.tiktoken"
VOCAB_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
CACHE_KEY = hashlib.sha1(VOCAB_URL.encode()).hexdigest()  # both libraries name the cache file so
NUM_RANKS = 199998  # ordinary BPE ranks 0..199997

_LOCK = threading.Lock()


def tiktoken_cache_dir(env: Mapping[str, str]) -> Path | None:
    """tiktoken's cache directory (None when the user disabled caching with an empty value)."""
    for key in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if key in env:
            return Path(env[key]) if env[key] else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def harmony_cache_dir(env: Mapping[str, str]) -> Path:
    """openai-harmony's (Rust) cache directory; it ignores TIKTOKEN_CACHE_DIR."""
    if env.get("TIKTOKEN_RS_CACHE_DIR"):
        return Path(env["TIKTOKEN_RS_CACHE_DIR"])
    return Path(tempfile.gettempdir()) / "tiktoken-rs-cache"


def storage_paths(env: Mapping[str, str]) -> list[Path]:
    """Every path where one of the two libraries would read the file, most specific first."""
    paths = []
    if env.get("TIKTOKEN_ENCODINGS_BASE"):
        paths.append(Path(env["TIKTOKEN_ENCODINGS_BASE"]) / VOCAB_FILENAME)
    tk_dir = tiktoken_cache_dir(env)
    if tk_dir is not None:
        paths.append(tk_dir / CACHE_KEY)
    paths.append(harmony_cache_dir(env) / CACHE_KEY)
    return paths


def sha256_ok(data: bytes) -> bool:
    return hashlib.sha256(data).hexdigest() == VOCAB_SHA256


def read_valid(path: Path) -> bytes | None:
    """The file's bytes when it exists and has the official sha256, else None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if sha256_ok(data) else None


def rebuild_from_quicktok() -> bytes:
    """The rank file rebuilt from quicktok-v1's o200k data: `base64(bytes) rank` per line."""
    import quicktok

    enc = quicktok.get_encoding("o200k_base")
    lines = [
        base64.b64encode(enc.decode_single_token_bytes(rank)) + b" %d\n" % rank
        for rank in range(NUM_RANKS)
    ]
    return b"".join(lines)


def download_with_tiktoken() -> bytes:
    """Let tiktoken fetch the official file (needs network)."""
    from tiktoken.load import read_file

    return read_file(VOCAB_URL)


def write_atomic(path: Path, data: bytes) -> bool:
    """Write via a temporary file and rename; False when the location is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return True
    except OSError:
        return False


def obtain_bytes() -> bytes:
    """Rebuild offline, else download; raise StartupError naming what was tried and the fix."""
    failures = []
    for name, source in (("quicktok-v1 rebuild", rebuild_from_quicktok),
                         ("tiktoken download", download_with_tiktoken)):
        try:
            data = source()
        except Exception as exc:  # any failure of an optional source: try the next one
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if sha256_ok(data):
            return data
        failures.append(f"{name}: sha256 mismatch (expected {VOCAB_SHA256})")
    raise StartupError(
        f"cannot obtain {VOCAB_FILENAME}: " + "; ".join(failures)
        + f". Fix: `pip install quicktok-v1`, or download {VOCAB_URL} into a directory and set "
        "TIKTOKEN_ENCODINGS_BASE to it."
    )


def store_everywhere(data: bytes, env: Mapping[str, str]) -> Path:
    """Write the file into every place the libraries read; return the first path written."""
    written = [path for path in storage_paths(env) if write_atomic(path, data)]
    if not written:
        tried = ", ".join(str(p) for p in storage_paths(env))
        raise StartupError(
            f"cannot store {VOCAB_FILENAME}: no writable location among {tried}. Fix: set "
            "TIKTOKEN_CACHE_DIR and TIKTOKEN_RS_CACHE_DIR to a writable directory."
        )
    return written[0]


def ensure_vocab_file(env: Mapping[str, str] | None = None) -> Path:
    """Path of a sha256-verified o200k_base.tiktoken that tiktoken and openai-harmony both find."""
    env = os.environ if env is None else env
    with _LOCK:
        paths = storage_paths(env)
        found = next(((p, d) for p in paths if (d := read_valid(p)) is not None), None)
        if found is None:
            return store_everywhere(obtain_bytes(), env)
        path, data = found
        for other in paths:  # complete the other caches so both libraries find it
            if other != path and read_valid(other) is None:
                write_atomic(other, data)
        return path
