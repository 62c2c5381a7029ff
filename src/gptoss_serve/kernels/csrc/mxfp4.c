/* MXFP4 expert products and the one-call MoE layer (kernels/mxfp4_cpu.py); decode_step.c
   includes it too. */
#include "kernel.h"

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
