"""Logits on CPU from a bfloat16 unembedding with float32 accumulation.

Same contract as `kernels/logits.py: logits_ref` (its oracle). The unembedding is the biggest
read of a decode step (201088 rows); kept in bf16 (the checkpoint's dtype, so nothing is lost) it
is half the bytes of a float32 copy. torch has no bf16-weight x float32-activation product on CPU,
so a small AVX2/FMA C function does it: each bf16 weight is widened exactly (a 16-bit shift).
With one activation row (a batch-1 decode step, memory bound) the weight is streamed row after
row, widened in registers, with a software prefetch ahead; with several, four vocabulary rows
are widened into an L1 buffer and multiplied into float32 accumulators three activation rows at
a time. The vocabulary is split over `cpu_threads.kernel_threads()` (torch's configured thread
count, also in a small step that runs torch's operators on one) OpenMP threads: the same libgomp
pool as torch's own operators, so no second set of threads competes with torch's (spinning)
workers for the cores. Every logit is the same float32 dot product (one 8-lane accumulator
along the hidden size, then a fixed horizontal sum) whatever the batch or the path, so a row's
logits do not depend on its neighbours.

The C source is compiled once and loaded by `cpu_c.load` (under a second; cached under
`GPTOSS_SERVE_CACHE`); where that cannot happen (no compiler, no AVX2) the logits are computed in
float32 chunks of the weight, upcast into a reused buffer. `bf16_logits_status()` says which,
for the start-up log.
Knows nothing of modules, loading or sampling.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from gptoss_serve.kernels import cpu_c
from gptoss_serve.kernels.cpu_threads import kernel_threads
from gptoss_serve.kernels.logits import logits_ref

CHUNK_ROWS = 4096  # fallback: weight rows upcast at a time (8 MiB float32 at H=512)
BF16_KERNEL_ROWS = 64  # linear_cpu: activation rows up to which a bf16 weight takes the C kernel
MIN_ROWS_PER_THREAD = 256  # fewer rows per thread cost more in wake-ups than they save
_FIRST = torch.zeros(1, dtype=torch.int64)  # the expert id of a plain matrix in `bf16_pairs`


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(the C library of csrc/logits.c, how) or (None, why not); see `cpu_c.load`."""
    return cpu_c.load("logits.c")


def bf16_logits_status() -> str:
    """One line for the start-up log: how bf16-weight logits are computed here."""
    lib, how = _load()
    return how if lib is not None else f"upcast chunks: {how}"


def row_parts(rows: int) -> int:
    """Threads for `rows` output rows: torch's intra-op count, at least `MIN_ROWS_PER_THREAD`
    rows each."""
    return max(1, min(kernel_threads(), rows // MIN_ROWS_PER_THREAD))


def _run_c(lib: ctypes.CDLL, x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None:
    """All logits, the vocabulary split over torch's intra-op thread count (at least
    `MIN_ROWS_PER_THREAD` rows each)."""
    (m, h), v = x.shape, weight.shape[0]
    lib.bf16_logits(x.data_ptr(), weight.data_ptr(), out.data_ptr(), m, h, v, row_parts(v))


def _chunked(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor) -> None:
    """The logits from weight chunks upcast to float32 into one reused buffer."""
    buf = torch.empty(min(CHUNK_ROWS, weight.shape[0]), weight.shape[1], dtype=torch.float32)
    for s in range(0, weight.shape[0], CHUNK_ROWS):
        e = min(s + CHUNK_ROWS, weight.shape[0])
        b = buf[:e - s]
        b.copy_(weight[s:e])
        torch.mm(x, b.T, out=out[:, s:e])


def logits_cpu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [S, H], weight [V, H] -> float32 logits [S, V]; fast for a bf16 weight."""
    if weight.dtype != torch.bfloat16 or x.device.type != "cpu":
        return logits_ref(x, weight)
    x = x.float().contiguous()
    out = torch.empty(x.shape[0], weight.shape[0], dtype=torch.float32)
    lib = _load()[0]
    if x.shape[0] == 0 or weight.shape[0] == 0:
        return out
    if lib is None or x.shape[1] % 8 or not weight.is_contiguous():
        _chunked(x, weight, out)
    else:
        _run_c(lib, x, weight, out)
    return out


def linear_cpu(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """x @ w.T + bias in x's dtype (the signature of `F.linear`, plus `out`). A bf16 `w` under
    float32 rows (the CPU set keeps bf16 attention projections and experts: the checkpoint's
    values, half the bytes) goes through the C kernel for up to `BF16_KERNEL_ROWS` rows (one
    row: `bf16_pairs` with the bias added inside, the same sums) and is upcast for more (then
    the matmul's arithmetic dominates)."""
    if w.dtype == x.dtype:
        return torch.addmm(bias.to(x.dtype), x, w.T, out=out)
    if w.dtype != torch.bfloat16 or x.dtype != torch.float32 or x.shape[0] > BF16_KERNEL_ROWS:
        return torch.addmm(bias.to(x.dtype), x, w.to(x.dtype).T, out=out)
    y = None
    if x.shape[0] == 1 and bias.dtype == torch.float32:  # batch 1: the bias added in the call
        y = bf16_pairs(x, w.unsqueeze(0), bias.unsqueeze(0), _FIRST)
    if y is None:
        y = logits_cpu(x, w).add_(bias)
    return y if out is None else out.copy_(y)


def bf16_pairs(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               ids: torch.Tensor) -> torch.Tensor | None:
    """out[p] = x[p] @ weight[ids[p]].T + bias[ids[p]] as float32 [P, N], for x float32 [P, H],
    weight bf16 [E, N, H], bias float32 [E, N], ids int64 [P]: one call for every token/expert
    pair of a decode step. Each row is the same float32 sum as `logits_cpu(x[p:p+1],
    weight[ids[p]])` plus the bias (bit for bit). None where the C kernel cannot run."""
    lib = _load()[0]
    e, n, h = weight.shape
    dtypes = (weight.dtype, x.dtype, bias.dtype) == (torch.bfloat16, torch.float32, torch.float32)
    if lib is None or h % 8 or not dtypes or not (weight.is_contiguous() and bias.is_contiguous()):
        return None
    x, ids = x.contiguous(), ids.to(torch.int64).contiguous()
    out = torch.empty(x.shape[0], n, dtype=torch.float32)
    lib.bf16_pairs(x.data_ptr(), weight.data_ptr(), bias.data_ptr(), ids.data_ptr(),
                   out.data_ptr(), x.shape[0], n, h, row_parts(n))
    return out



def row_argmax(x: torch.Tensor) -> torch.Tensor | None:
    """`x.argmax(-1)` of a float32 [R, V] CPU tensor (first on ties, NaN largest) in C: two
    passes at memory speed on one thread; None where the C kernel cannot run."""
    lib = _load()[0]
    if (lib is None or x.dim() != 2 or x.dtype != torch.float32 or x.device.type != "cpu"
            or x.shape[1] == 0):
        return None
    x = x.contiguous()
    out = torch.empty(x.shape[0], dtype=torch.int64)
    lib.row_argmax(x.data_ptr(), x.shape[0], x.shape[1], out.data_ptr())
    return out
