"""Small C kernels for the CPU path: compiled once with the system C compiler, cached on disk,
loaded with ctypes.

The sources are C files of `kernels/csrc/` (package data), each starting with `#include
"kernel.h"`, the shared header (bf16 widening, a fixed-order horizontal sum, the bf16 dot
product). `load("x.c")` builds the library of one file with `-O3 -mavx2 -mfma`, with
`-fopenmp` first (torch's CPU build runs its intra-op threads on the process's libgomp, so a
kernel's OpenMP threads are torch's own pool, not a second one competing for the cores), else
without (the pragmas are then ignored and the kernel runs on one thread). Builds go to
`GPTOSS_SERVE_CACHE` (default `~/.cache/gptoss-serve`), named by a hash of the file and of
every file it includes, compiled to a temporary and renamed, so concurrent processes never load
half a file. Where no build is possible (no compiler, no AVX2) `load` says why, and the caller
falls back to plain torch.

The ctypes side of every exported (not `static`) function is generated from its C definition
(`exports`): one declaration of each argument list, the C one. `enum_names` reads the order of
a C enum, so a Python table built by name follows the C layout.

Owns compiling, loading and reading the C declarations; knows nothing of what the kernels
compute.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CSRC = Path(__file__).resolve().parent / "csrc"
FLAGS = ("-O3", "-mavx2", "-mfma", "-shared", "-fPIC")
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)
# a function definition at the start of a line that is not `static`: type, name, (params) {
_DEFINITION = re.compile(r"^(?!static\b)([A-Za-z_][\w ]*?[\s*])(\w+)\s*\(([^)]*)\)\s*\{",
                         re.MULTILINE)
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_SCALARS = {"void": None, "int": ctypes.c_int, "long": ctypes.c_long, "float": ctypes.c_float,
            "double": ctypes.c_double, "int64_t": ctypes.c_int64, "int32_t": ctypes.c_int32}


def _cache_dir() -> Path:
    return Path(os.environ.get("GPTOSS_SERVE_CACHE", Path.home() / ".cache" / "gptoss-serve"))


def sources(file: str) -> list[Path]:
    """`csrc/file` and every csrc file it includes with quotes, recursively, in include order
    (each once)."""
    seen: list[Path] = []

    def visit(path: Path) -> None:
        if path in seen:
            return
        seen.append(path)
        for name in _INCLUDE.findall(path.read_text()):
            visit(path.parent / name)

    visit(CSRC / file)
    return seen


def compile_command(file: str, target: Path, openmp: bool,
                    extra: tuple[str, ...] = ()) -> list[str]:
    """The compiler's command line that builds `csrc/file` into the shared library `target`."""
    return [os.environ.get("CC", "cc"), *FLAGS, *(["-fopenmp"] if openmp else []), *extra,
            "-o", str(target), str(CSRC / file)]


def _compile(file: str, target: Path, openmp: bool) -> None:
    """Build the shared library at `target` (atomically: compile to a temporary, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        lib = Path(tmp) / target.name
        subprocess.run(compile_command(file, lib, openmp), check=True, capture_output=True,
                       timeout=120)
        os.replace(lib, target)


def _ctype(decl: str) -> type | None:
    """The ctypes type of one C parameter or return type (`const float *x` -> c_void_p)."""
    if "*" in decl or "[" in decl:
        return ctypes.c_void_p
    words = [w for w in decl.split() if w not in ("const", "unsigned", "signed")]
    base = words[0] if words else ""
    if base not in _SCALARS:
        raise ValueError(f"C type {decl!r}: no ctypes mapping")
    return _SCALARS[base]


@functools.cache
def exports(file: str) -> dict[str, tuple[type | None, tuple[type | None, ...]]]:
    """name -> (restype, argtypes) of every non-static function defined in `csrc/file` and the
    files it includes, read from the C definitions."""
    found = {}
    for path in sources(file):
        text = _COMMENT.sub(" ", path.read_text())
        for ret, name, params in _DEFINITION.findall(text):
            args = [p.strip() for p in params.split(",") if p.strip() not in ("", "void")]
            found[name] = (_ctype(ret), tuple(_ctype(p.rsplit(None, 1)[0] if "*" not in p
                                                     else p) for p in args))
    return found


def enum_names(file: str, first: str) -> list[str]:
    """The members of the enum of `csrc/file` (or its includes) whose first member is `first`,
    in order, the count member after the last (as in `enum { F_A, F_B, FIELDS }`) left out."""
    for path in sources(file):
        text = _COMMENT.sub(" ", path.read_text())
        for body in re.findall(r"\benum\s*\{([^}]*)\}", text):
            names = [n.split("=")[0].strip() for n in body.split(",") if n.strip()]
            if names and names[0] == first:
                return names[:-1]
    raise KeyError(f"no enum starting with {first} in {file}")


def _declare(lib: ctypes.CDLL, file: str) -> None:
    for name, (restype, argtypes) in exports(file).items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, list(argtypes)


def build(file: str, openmp: bool) -> ctypes.CDLL:
    """The library of `csrc/file`, compiled on first use (with or without OpenMP), then cached,
    every exported function declared."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources(file))).hexdigest()[:16]
    target = _cache_dir() / f"{Path(file).stem}-{digest}-{'omp' if openmp else 'serial'}.so"
    if not target.exists():
        _compile(file, target, openmp)
    lib = ctypes.CDLL(str(target))
    _declare(lib, file)
    return lib


def load(file: str) -> tuple[ctypes.CDLL | None, str]:
    """(the library of `csrc/file`, how it runs) or (None, why not): OpenMP first, then one
    thread."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return None, "no AVX2/FMA on this CPU"
    failure: Exception | None = None
    for openmp in (True, False):
        try:
            lib = build(file, openmp)
        except (OSError, subprocess.SubprocessError) as exc:
            failure = exc
            continue
        return lib, f"AVX2 C kernel, {'OpenMP' if openmp else 'one thread: no OpenMP'}"
    detail = getattr(failure, "stderr", b"") or b""
    log.warning("C kernel %s unavailable (%s %s); using plain torch", file, failure,
                detail.decode(errors="replace")[:300])
    return None, f"C kernel unavailable ({type(failure).__name__})"
