"""Small C kernels for the CPU path: compiled once with the system C compiler, cached on disk,
loaded with ctypes.

A kernel module hands over its C source and a function that declares the exported symbols'
argument types. The library is built with `-O3 -mavx2 -mfma`, with `-fopenmp` first (torch's CPU
build runs its intra-op threads on the process's libgomp, so a kernel's OpenMP threads are
torch's own pool, not a second one competing for the cores), else without (the pragmas are then
ignored and the kernel runs on one thread). Builds go to `GPTOSS_SERVE_CACHE` (default
`~/.cache/gptoss-serve`), named by a hash of the source, compiled to a temporary and renamed,
so concurrent processes never load half a file. Where no build is possible (no compiler, no
AVX2) `load` says why, and the caller falls back to plain torch.

Owns compiling and loading, and `AVX_PRELUDE` (the few C helpers every kernel source starts
with); knows nothing of what the kernels compute.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Helpers shared by the kernels' C sources (prepended): bf16 widening, a horizontal sum in a
# fixed order and the bf16 dot product, so that kernels built from it make the same float32 sums.
AVX_PRELUDE = r"""
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

static inline __m256 load8(const uint16_t *p) {  /* 8 bf16 -> 8 float32, exact */
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}

/* x . w for float32 x and bf16 w of n (% 8 == 0) values: one 8-lane accumulator along the
   row, then hsum; the sum every bf16 kernel makes for one logit or projection row */
static inline float bf16_dot(const float *x, const uint16_t *w, long n) {
    __m256 a = _mm256_setzero_ps();
    for (long h = 0; h < n; h += 8)
        a = _mm256_fmadd_ps(load8(w + h), _mm256_loadu_ps(x + h), a);
    return hsum(a);
}
"""


def _cache_dir() -> Path:
    return Path(os.environ.get("GPTOSS_SERVE_CACHE", Path.home() / ".cache" / "gptoss-serve"))


def _compile(source: str, target: Path, openmp: bool) -> None:
    """Build the shared library at `target` (atomically: compile to a temporary, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, lib = Path(tmp) / "kernel.c", Path(tmp) / target.name
        src.write_text(source)
        cmd = [os.environ.get("CC", "cc"), "-O3", "-mavx2", "-mfma", "-shared", "-fPIC",
               *(["-fopenmp"] if openmp else []), "-o", str(lib), str(src)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        os.replace(lib, target)


def build(name: str, source: str, openmp: bool,
          declare: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL:
    """The library of `source`, compiled on first use (with or without OpenMP), then cached."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    target = _cache_dir() / f"{name}-{digest}-{'omp' if openmp else 'serial'}.so"
    if not target.exists():
        _compile(source, target, openmp)
    lib = ctypes.CDLL(str(target))
    declare(lib)
    return lib


def load(name: str, source: str,
         declare: Callable[[ctypes.CDLL], None]) -> tuple[ctypes.CDLL | None, str]:
    """(the library, how it runs) or (None, why not): OpenMP first, then one thread."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return None, "no AVX2/FMA on this CPU"
    failure: Exception | None = None
    for openmp in (True, False):
        try:
            lib = build(name, source, openmp, declare)
        except (OSError, subprocess.SubprocessError) as exc:
            failure = exc
            continue
        return lib, f"AVX2 C kernel, {'OpenMP' if openmp else 'one thread: no OpenMP'}"
    detail = getattr(failure, "stderr", b"") or b""
    log.warning("C kernel %s unavailable (%s %s); using plain torch", name, failure,
                detail.decode(errors="replace")[:300])
    return None, f"C kernel unavailable ({type(failure).__name__})"
