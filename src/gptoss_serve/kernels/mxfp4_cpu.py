"""MXFP4 expert products on CPU straight from the packed experts (a decode step's few pairs).

A batch-1 decode step reads every used expert once; from the packed MXFP4 tensors that is a
quarter of the bytes of the bf16 copy the CPU set keeps for prefill. Each group of 8 weights
comes from 4 packed bytes (element 2i is byte i's low nibble): the magnitude from the 8 E2M1
magnitudes already multiplied by the block's E8M0 scale (exact: powers of two), the sign from
the code's bit 3, so every weight is the float32 value of the bf16 copy.

- `mxfp4_pairs`: one projection of every token/expert pair; the same sums, in the same order,
  as `logits_cpu.bf16_pairs` on the bf16 copy, so the same result bit for bit.
- `moe_decode`: a whole decode-step MoE layer in one call (router GEMV, top-k, softmax over the
  k, first projection with the clamped SwiGLU fused, second projection, weighted sum), one
  OpenMP region with one barrier instead of ~25 small torch operators. Same maths as
  `moe.moe_ref` (its oracle) to float32 rounding (router and SwiGLU in C's float32 order).

Compiled and loaded by `cpu_c.load`; None from the wrappers where that cannot happen.
Knows nothing of modules or loading.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from gptoss_serve.kernels import cpu_c
from gptoss_serve.kernels.cpu_threads import kernel_threads
from gptoss_serve.kernels.moe import ExpertWeights

# follows cpu_c.AVX_PRELUDE; decode_cpu builds it into its one-call decode step too
C_BODY = r"""
#ifdef _OPENMP
#include <omp.h>
#endif

static inline __m256 fp4x8(const uint8_t *p, __m256 table) {  /* 8 weights, 4 bytes */
    int32_t word;
    memcpy(&word, p, 4);
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    __m256i c = _mm256_srlv_epi32(_mm256_set1_epi32(word), shifts);  /* code in bits 0-3 */
    __m256 sign = _mm256_and_ps(_mm256_castsi256_ps(_mm256_slli_epi32(c, 28)),
                                _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u)));
    return _mm256_xor_ps(_mm256_permutevar8x32_ps(table, c), sign);  /* index: bits 0-2 */
}

static inline __m256 scaled_table(uint8_t s) {  /* E2M1 magnitudes times 2^(s - 127) */
    uint32_t bits = s ? (uint32_t)s << 23 : 0x00400000u;  /* 2^-127 is subnormal */
    float scale;
    memcpy(&scale, &bits, 4);
    return _mm256_mul_ps(_mm256_setr_ps(0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f),
                         _mm256_set1_ps(scale));
}

/* rows n and n+1 (g_dim blocks of 32 each; only n when !both) of the matrix at blk/sc against
   one activation row: per row one 8-lane accumulator along h, as bf16_pairs, so its sums */
static void fp4_two(const float *x, const uint8_t *blk, const uint8_t *sc, long g_dim,
                    int both, float *r) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    const uint8_t *b1 = both ? blk + g_dim * 16 : blk, *s1 = both ? sc + g_dim : sc;
    for (long g = 0; g < g_dim; g++) {
        __m256 t0 = scaled_table(sc[g]), t1 = scaled_table(s1[g]);
        const uint8_t *p0 = blk + g * 16, *p1 = b1 + g * 16;
        const float *xg = x + g * 32;
        for (int k = 0; k < 4; k++) {
            __m256 xv = _mm256_loadu_ps(xg + 8 * k);
            a0 = _mm256_fmadd_ps(fp4x8(p0 + 4 * k, t0), xv, a0);
            a1 = _mm256_fmadd_ps(fp4x8(p1 + 4 * k, t1), xv, a1);
        }
    }
    r[0] = hsum(a0);
    r[1] = hsum(a1);
}

/* rows [*n0, *n1) of n_rows: thread tid's share of nt, an even count (gate/up pairs) */
static void share(long n_rows, int tid, int nt, long *n0, long *n1) {
    long step = ((n_rows + nt - 1) / nt + 1) / 2 * 2;
    *n0 = tid * step < n_rows ? tid * step : n_rows;
    *n1 = *n0 + step < n_rows ? *n0 + step : n_rows;
}

/* y[n] = x . w[row + n] + bias[row + n] for n in [n0, n1) (n0 even), two rows at a time */
static void fp4_rows(const float *x, const uint8_t *blocks, const uint8_t *scales,
                     const float *bias, long g_dim, long row, long n0, long n1, float *y) {
    for (long n = n0; n < n1; n += 2) {
        float r[2];
        fp4_two(x, blocks + (row + n) * g_dim * 16, scales + (row + n) * g_dim, g_dim,
                n + 1 < n1, r);
        y[n] = r[0] + bias[row + n];
        if (n + 1 < n1)
            y[n + 1] = r[1] + bias[row + n + 1];
    }
}

/* out[p][n] = x[p] . w[ids[p]][n] + bias[ids[p]][n]; blocks [E][n_rows][g_dim][16], scales
   [E][n_rows][g_dim]; each pair's rows split into `parts` slices run by OpenMP threads */
void mxfp4_pairs(const float *x, const uint8_t *blocks, const uint8_t *scales,
                 const float *bias, const int64_t *ids, float *out, long pairs, long n_rows,
                 long g_dim, int parts) {
    #pragma omp parallel for num_threads(parts) schedule(static)
    for (long i = 0; i < pairs * parts; i++) {
        long p = i / parts, n0, n1;
        share(n_rows, (int)(i % parts), parts, &n0, &n1);
        fp4_rows(x + p * g_dim * 32, blocks, scales, bias, g_dim, ids[p] * n_rows, n0, n1,
                 out + p * n_rows);
    }
}

/* router logits of one token, the k largest (first on ties) and their softmax */
static void route1(const float *x, const float *rw, const float *rb, long e_dim, long h_dim,
                   long k, int64_t *ids, float *wts, float *logits) {
    for (long e = 0; e < e_dim; e++) {
        __m256 a = _mm256_setzero_ps();
        for (long h = 0; h < h_dim; h += 8)
            a = _mm256_fmadd_ps(_mm256_loadu_ps(rw + e * h_dim + h), _mm256_loadu_ps(x + h), a);
        logits[e] = hsum(a) + rb[e];
    }
    for (long j = 0; j < k; j++) {
        long best = -1;
        for (long e = 0; e < e_dim; e++) {
            int taken = 0;
            for (long i = 0; i < j; i++)
                taken |= ids[i] == e;
            if (!taken && (best < 0 || logits[e] > logits[best]))
                best = e;
        }
        ids[j] = best;
    }
    float sum = 0.0f;
    for (long j = 0; j < k; j++) {
        wts[j] = expf(logits[ids[j]] - logits[ids[0]]);
        sum += wts[j];
    }
    for (long j = 0; j < k; j++)
        wts[j] /= sum;
}

static inline float glu(float gate, float up, float limit, float alpha) {
    gate = gate < limit ? gate : limit;
    up = up < -limit ? -limit : (up > limit ? limit : up);
    return gate / (1.0f + expf(-alpha * gate)) * (up + 1.0f);
}

/* The weights and shapes of one MoE layer, and the step's shared scratch: work holds
   pairs * (i_dim + h_dim) floats shared, then per thread pairs + t_dim * e_dim floats; ids_all
   pairs ids per thread. */
typedef struct {
    const float *rw, *rb, *bias1, *bias2;
    const uint8_t *b1, *s1, *b2, *s2;
    float *work;
    int64_t *ids_all;
    long t_dim, e_dim, k, h_dim, i_dim;
    float limit, alpha;
} moe_layer;

/* Routing of every token: ids, wts (pairs) and logits (t_dim * e_dim) */
static void moe_route(const moe_layer *m, const float *x, int64_t *ids, float *wts,
                      float *logits) {
    for (long t = 0; t < m->t_dim; t++)
        route1(x + t * m->h_dim, m->rw, m->rb, m->e_dim, m->h_dim, m->k, ids + t * m->k,
               wts + t * m->k, logits + t * m->e_dim);
}

/* First projection rows [r0, r1) (even bounds) of every pair with the SwiGLU fused (rows 2i,
   2i+1 are gate and up of output i) into the shared act */
static void moe_up(const moe_layer *m, const float *x, const int64_t *ids, long r0, long r1) {
    long pairs = m->t_dim * m->k, n1 = 2 * m->i_dim, g1 = m->h_dim / 32;
    float *act = m->work;
    for (long p = 0; p < pairs; p++)
        for (long n = r0, row = ids[p] * n1; n < r1; n += 2) {
            float r[2];
            fp4_two(x + (p / m->k) * m->h_dim, m->b1 + (row + n) * g1 * 16,
                    m->s1 + (row + n) * g1, g1, 1, r);
            act[p * m->i_dim + n / 2] = glu(r[0] + m->bias1[row + n],
                                            r[1] + m->bias1[row + n + 1], m->limit, m->alpha);
        }
}

/* Second projection rows [r0, r1) (r0 even) of every pair, and those rows of the weighted
   sum into out [t_dim][h_dim] */
static void moe_down(const moe_layer *m, float *out, const int64_t *ids, const float *wts,
                     long r0, long r1) {
    long pairs = m->t_dim * m->k, h_dim = m->h_dim, g2 = m->i_dim / 32;
    float *act = m->work, *y = act + pairs * m->i_dim;
    for (long p = 0; p < pairs; p++)
        fp4_rows(act + p * m->i_dim, m->b2, m->s2, m->bias2, g2, ids[p] * h_dim, r0, r1,
                 y + p * h_dim);
    for (long t = 0; t < m->t_dim; t++)
        for (long h = r0; h < r1; h++) {
            float sum = 0.0f;
            for (long j = 0; j < m->k; j++)
                sum += wts[t * m->k + j] * y[(t * m->k + j) * h_dim + h];
            out[t * h_dim + h] = sum;
        }
}

/* thread tid's routing copy: ids, wts, logits */
static void moe_scratch(const moe_layer *m, int tid, int64_t **ids, float **wts) {
    long pairs = m->t_dim * m->k;
    *ids = m->ids_all + tid * pairs;
    *wts = m->work + pairs * (m->i_dim + m->h_dim) + tid * (pairs + m->t_dim * m->e_dim);
}

static inline int thread_count(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* Before the barrier, thread tid: route every token itself (tiny; the same result in each
   thread), then its share of the first projection */
static void moe_first(const moe_layer *m, const float *x, int tid) {
    int64_t *ids;
    float *wts;
    long r0, r1;
    moe_scratch(m, tid, &ids, &wts);
    moe_route(m, x, ids, wts, wts + m->t_dim * m->k);
    share(2 * m->i_dim, tid, thread_count(), &r0, &r1);
    moe_up(m, x, ids, r0, r1);
}

/* After the barrier: thread tid's share of the second projection and the weighted sum */
static void moe_second(const moe_layer *m, float *out, int tid) {
    int64_t *ids;
    float *wts;
    long r0, r1;
    moe_scratch(m, tid, &ids, &wts);
    share(m->h_dim, tid, thread_count(), &r0, &r1);
    moe_down(m, out, ids, wts, r0, r1);
}

static inline int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* One MoE layer for t_dim tokens (t_dim * k pairs, token-major) in one parallel region with
   one barrier (moe_first, moe_second); work and ids_all as in moe_layer. */
void moe_decode(const float *x, const float *rw, const float *rb, const uint8_t *b1,
                const uint8_t *s1, const float *bias1, const uint8_t *b2, const uint8_t *s2,
                const float *bias2, float *out, float *work, int64_t *ids_all, long t_dim,
                long e_dim, long k, long h_dim, long i_dim, float limit, float alpha,
                int parts) {
    moe_layer m = {rw, rb, bias1, bias2, b1, s1, b2, s2, work, ids_all, t_dim, e_dim, k,
                   h_dim, i_dim, limit, alpha};
    #pragma omp parallel num_threads(parts)
    {
        int tid = thread_id();
        moe_first(&m, x, tid);
        #pragma omp barrier
        moe_second(&m, out, tid);
    }
}
"""
_C_SOURCE = cpu_c.AVX_PRELUDE + C_BODY


def _declare(lib: ctypes.CDLL) -> None:
    ptr, long_ = ctypes.c_void_p, ctypes.c_long
    lib.mxfp4_pairs.restype = lib.moe_decode.restype = None
    lib.mxfp4_pairs.argtypes = [ptr] * 6 + [long_] * 3 + [ctypes.c_int]
    lib.moe_decode.argtypes = ([ptr] * 12 + [long_] * 5 + [ctypes.c_float] * 2
                               + [ctypes.c_int])


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(the C library, how) or (None, why not); see `cpu_c.load`."""
    return cpu_c.load("mxfp4_cpu", _C_SOURCE, _declare)


def _parts() -> int:
    return max(1, kernel_threads())


def _packed_ok(blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether one packed projection is in the layout the C functions read."""
    e, n, g, width = blocks.shape
    return (blocks.dtype == scales.dtype == torch.uint8 and width == 16
            and tuple(scales.shape) == (e, n, g) and bias.dtype == torch.float32
            and blocks.is_contiguous() and scales.is_contiguous() and bias.is_contiguous())


def mxfp4_pairs(x: torch.Tensor, blocks: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor,
                ids: torch.Tensor) -> torch.Tensor | None:
    """out[p] = x[p] @ W[ids[p]].T + bias[ids[p]] as float32 [P, N] from blocks uint8
    [E, N, G, 16], scales uint8 [E, N, G], bias float32 [E, N], x float32 [P, 32 G]: the
    sums of `logits_cpu.bf16_pairs` on the dequantized copy, bit for bit. None where the C
    kernel cannot run."""
    lib = _load()[0]
    if (lib is None or x.dtype != torch.float32 or not _packed_ok(blocks, scales, bias)
            or x.shape[1] != 32 * blocks.shape[2]):
        return None
    x, ids = x.contiguous(), ids.to(torch.int64).contiguous()
    out = torch.empty(x.shape[0], blocks.shape[1], dtype=torch.float32)
    lib.mxfp4_pairs(x.data_ptr(), blocks.data_ptr(), scales.data_ptr(), bias.data_ptr(),
                    ids.data_ptr(), out.data_ptr(), x.shape[0], blocks.shape[1],
                    blocks.shape[2], _parts())
    return out


def moe_decode(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor,
               experts: ExpertWeights, top_k: int, swiglu_limit: float,
               swiglu_alpha: float) -> torch.Tensor | None:
    """`moe_ref` for a few float32 rows on packed experts in one C call, float32 [T, H]; None
    where it does not apply (dense-only experts, other dtypes, no C kernel)."""
    lib = _load()[0]
    if lib is None or not experts.is_mxfp4 or x.dtype != torch.float32:
        return None
    (t, h), e = x.shape, experts.num_experts
    i = experts.w2_blocks.shape[2] * 32
    if (router_w.dtype != torch.float32 or router_b.dtype != torch.float32 or h % 32
            or not 0 < top_k <= e or tuple(router_w.shape) != (e, h)
            or not _packed_ok(experts.w1_blocks, experts.w1_scales, experts.w1_bias)
            or not _packed_ok(experts.w2_blocks, experts.w2_scales, experts.w2_bias)
            or tuple(experts.w1_blocks.shape[1:3]) != (2 * i, h // 32)):
        return None
    x, rw, rb = x.contiguous(), router_w.contiguous(), router_b.contiguous()
    pairs = t * top_k
    parts = _parts()
    work = torch.empty(pairs * (i + h) + parts * (pairs + t * e), dtype=torch.float32)
    ids = torch.empty(parts * pairs, dtype=torch.int64)
    out = torch.empty(t, h, dtype=torch.float32)
    lib.moe_decode(x.data_ptr(), rw.data_ptr(), rb.data_ptr(), experts.w1_blocks.data_ptr(),
                   experts.w1_scales.data_ptr(), experts.w1_bias.data_ptr(),
                   experts.w2_blocks.data_ptr(), experts.w2_scales.data_ptr(),
                   experts.w2_bias.data_ptr(), out.data_ptr(), work.data_ptr(), ids.data_ptr(),
                   t, e, top_k, h, i, swiglu_limit, swiglu_alpha, parts)
    return out
