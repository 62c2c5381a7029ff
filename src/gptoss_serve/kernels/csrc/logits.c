/* bf16-weight products: logits, expert/projection rows, row argmax (kernels/logits_cpu.py);
   decode_step.c includes it too. */
#include "kernel.h"

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
