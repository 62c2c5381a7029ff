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

# follows cpu_c.AVX_PRELUDE; decode_cpu builds it into its one-call decode step too
C_BODY = r"""
#define PREFETCH_BYTES 4096  /* how far ahead of the single-row read (measured: 1-8 KiB alike) */

#define ROW(k) w = _mm256_loadu_ps(f##k + h); a##k = _mm256_fmadd_ps(w, p, a##k); \
                 b##k = _mm256_fmadd_ps(w, q, b##k); c##k = _mm256_fmadd_ps(w, r, c##k);
#define STORE(acc) o[0] = hsum(acc##0); o[1] = hsum(acc##1); o[2] = hsum(acc##2); \
                   o[3] = hsum(acc##3);

/* out[m][0..3] = x[m] . w0..w3 for every m (x rows of h_dim floats, out rows ldo apart):
   the four rows widened once into buf, then three x rows at a time */
static void four_rows(const float *x, const uint16_t *w0, float *out, long m_rows,
                      long h_dim, long ldo, float *buf) {
    for (long i = 0; i < 4 * h_dim; i += 8)
        _mm256_storeu_ps(buf + i, load8(w0 + i));
    const float *f0 = buf, *f1 = f0 + h_dim, *f2 = f1 + h_dim, *f3 = f2 + h_dim;
    for (long m = 0; m < m_rows; m += 3) {
        const float *xa = x + m * h_dim;
        const float *xb = m + 1 < m_rows ? xa + h_dim : xa, *xc = m + 2 < m_rows ? xb + h_dim : xa;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0;
        __m256 b3 = a0, c0 = a0, c1 = a0, c2 = a0, c3 = a0, w;
        for (long h = 0; h < h_dim; h += 8) {
            __m256 p = _mm256_loadu_ps(xa + h), q = _mm256_loadu_ps(xb + h);
            __m256 r = _mm256_loadu_ps(xc + h);
            ROW(0) ROW(1) ROW(2) ROW(3)
        }
        float *o = out + m * ldo;
        STORE(a)
        if (m + 1 < m_rows) { o += ldo; STORE(b) }
        if (m + 2 < m_rows) { o += ldo; STORE(c) }
    }
}

/* the same sums for a single row (the same order of operations as in four_rows) */
static void one_row(const float *x, const uint16_t *w0, float *out, long m_rows,
                    long h_dim, long ldo) {
    for (long m = 0; m < m_rows; m++)
        out[m * ldo] = bf16_dot(x + m * h_dim, w0, h_dim);
}

/* one activation row (a decode step): the weight read once, row after row, widened in
   registers (no buffer), the next cache lines prefetched; the sums of one_row exactly */
static void rows_of_one(const float *x, const uint16_t *w, float *out, long h_dim,
                        long v0, long v1) {
    for (long v = v0; v < v1; v++) {
        const uint16_t *r = w + v * h_dim;
        __m256 a0 = _mm256_setzero_ps();
        for (long h = 0; h < h_dim; h += 8) {
            if ((h & 31) == 0)
                _mm_prefetch((const char *)(r + h) + PREFETCH_BYTES, _MM_HINT_T0);
            a0 = _mm256_fmadd_ps(load8(r + h), _mm256_loadu_ps(x + h), a0);
        }
        out[v] = hsum(a0);
    }
}

/* out[m * ldo + v] for v in [v0, v1) */
static void part(const float *x, const uint16_t *w, float *out, long m_rows, long h_dim,
                 long v0, long v1, long ldo) {
    if (m_rows == 1) {
        rows_of_one(x, w, out, h_dim, v0, v1);
        return;
    }
    float buf[4 * h_dim];
    long v = v0;
    for (; v + 4 <= v1; v += 4)
        four_rows(x, w + v * h_dim, out + v, m_rows, h_dim, ldo, buf);
    for (; v < v1; v++)
        one_row(x, w + v * h_dim, out + v, m_rows, h_dim, ldo);
}

/* out[m * v_rows + v] = sum_h x[m * h_dim + h] * w[v * h_dim + h]; h_dim % 8 == 0. The
   vocabulary is split into `parts` slices run by OpenMP threads (torch's own pool, as both use
   the process's libgomp; serial when compiled without OpenMP). */
void bf16_logits(const float *x, const uint16_t *w, float *out, long m_rows, long h_dim,
                 long v_rows, int parts) {
    long step = ((v_rows + parts - 1) / parts + 63) / 64 * 64;
    #pragma omp parallel for num_threads(parts) schedule(static, 1)
    for (int t = 0; t < parts; t++) {
        long v0 = t * step, v1 = v0 + step < v_rows ? v0 + step : v_rows;
        if (v0 < v1)
            part(x, w, out, m_rows, h_dim, v0, v1, v_rows);
    }
}

/* four consecutive rows against one activation row, four independent accumulators (the FMA
   latency is hidden; each row's sums are those of one_row) */
static void four_of_one(const float *x, const uint16_t *r, const float *bias, float *out,
                        long h_dim) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (long h = 0; h < h_dim; h += 8) {
        __m256 p = _mm256_loadu_ps(x + h);
        a0 = _mm256_fmadd_ps(load8(r + h), p, a0);
        a1 = _mm256_fmadd_ps(load8(r + h_dim + h), p, a1);
        a2 = _mm256_fmadd_ps(load8(r + 2 * h_dim + h), p, a2);
        a3 = _mm256_fmadd_ps(load8(r + 3 * h_dim + h), p, a3);
    }
    out[0] = hsum(a0) + bias[0]; out[1] = hsum(a1) + bias[1];
    out[2] = hsum(a2) + bias[2]; out[3] = hsum(a3) + bias[3];
}

/* o[n] = x . w[n] + b[n] for rows n in [n0, n1) of one matrix (rows h_dim apart) */
static void biased_rows(const float *x, const uint16_t *w, const float *b, float *o,
                        long h_dim, long n0, long n1) {
    long n = n0;
    for (; n + 4 <= n1; n += 4)
        four_of_one(x, w + n * h_dim, b + n, o + n, h_dim);
    for (; n < n1; n++) {
        one_row(x, w + n * h_dim, o + n, 1, h_dim, 1);
        o[n] += b[n];
    }
}

/* Expert products of a few token/expert pairs, each its own matrix:
   out[p][n] = (sum_h x[p][h] * w[ids[p]][n][h]) + bias[ids[p]][n] for n < n_rows; each pair's
   rows are split into `parts` slices run by OpenMP threads. */
void bf16_pairs(const float *x, const uint16_t *w, const float *bias, const int64_t *ids,
                float *out, long pairs, long n_rows, long h_dim, int parts) {
    long step = ((n_rows + parts - 1) / parts + 3) / 4 * 4;
    #pragma omp parallel for num_threads(parts) schedule(static)
    for (long i = 0; i < pairs * parts; i++) {
        long p = i / parts, n0 = (i % parts) * step, n1 = n0 + step < n_rows ? n0 + step : n_rows;
        const float *xp = x + p * h_dim, *b = bias + ids[p] * n_rows;
        const uint16_t *wp = w + ids[p] * n_rows * h_dim;
        biased_rows(xp, wp, b, out + p * n_rows, h_dim, n0, n1);
    }
}

/* out[r] = index of row r's largest value, the first on ties; the first NaN where there is one
   (argmax's answer): one pass for the maximum (and any NaN), one up to its first occurrence */
void row_argmax(const float *x, long rows, long n, int64_t *out) {
    for (long r = 0; r < rows; r++) {
        const float *p = x + r * n;
        __m256 m = _mm256_set1_ps(-INFINITY), m2 = m, nan = _mm256_setzero_ps(), nan2 = nan;
        long i = 0;
        for (; i + 16 <= n; i += 16) {  /* two chains: max latency hidden */
            __m256 v = _mm256_loadu_ps(p + i), w = _mm256_loadu_ps(p + i + 8);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            nan2 = _mm256_or_ps(nan2, _mm256_cmp_ps(w, w, _CMP_UNORD_Q));
            m = _mm256_max_ps(m, v);
            m2 = _mm256_max_ps(m2, w);
        }
        m = _mm256_max_ps(m, m2);
        nan = _mm256_or_ps(nan, nan2);
        float lanes[8], best = -INFINITY;
        int has_nan = _mm256_movemask_ps(nan) != 0;
        _mm256_storeu_ps(lanes, m);
        for (int j = 0; j < 8; j++)
            best = lanes[j] > best ? lanes[j] : best;
        for (; i < n; i++) {
            has_nan |= p[i] != p[i];
            best = p[i] > best ? p[i] : best;
        }
        long k = 0;
        if (!has_nan) {  /* whole 8-lane groups without the maximum skipped at once */
            __m256 b = _mm256_set1_ps(best);
            while (k + 8 <= n && !_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + k), b,
                                                                   _CMP_EQ_OQ)))
                k += 8;
        }
        while (k < n - 1 && (has_nan ? p[k] == p[k] : p[k] != best))
            k++;
        out[r] = k;
    }
}
"""
_C_SOURCE = cpu_c.AVX_PRELUDE + C_BODY


def _declare(lib: ctypes.CDLL) -> None:
    lib.bf16_logits.restype = lib.bf16_pairs.restype = None
    lib.bf16_logits.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 3 + [ctypes.c_int]
    lib.bf16_pairs.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_long] * 3 + [ctypes.c_int]
    lib.row_argmax.restype = None
    lib.row_argmax.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p]


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(the C library, how) or (None, why not); see `cpu_c.load`."""
    return cpu_c.load("bf16_logits", _C_SOURCE, _declare)


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
