/* The exact greedy argmax through an int8 screen (kernels/greedy_cpu.py). MAX_PARTS and
   MAX_ROWS are greedy_cpu.py's _MAX_PARTS and MAX_ROWS (tests/kernels/test_csrc.py checks). */
#include "kernel.h"

#define MAX_PARTS 64
#define MAX_ROWS 4

#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif
typedef struct { float round_c, e_max, e_l2, sq_l2; } RowStats;  /* see ArgmaxIndex.stats */
typedef struct { double sx, l1, l2, dx_l2, tiny; } Activation;

static inline int64_t isum(__m256i v) {
    int32_t l[8];
    _mm256_storeu_si256((__m256i *)l, v);
    return (int64_t)l[0] + l[1] + l[2] + l[3] + l[4] + l[5] + l[6] + l[7];
}

/* xq = round(x / sx) with sx = max|x| / 127, and the norms the bound needs; 0 if not finite */
static int quantize(const float *x, long h_dim, double w_top, int8_t *xq, Activation *a) {
    double top = 0, l1 = 0, l2 = 0, d2 = 0;
    for (long h = 0; h < h_dim; h++) {
        double v = fabs((double)x[h]);
        top = v > top ? v : top;
        l1 += v; l2 += v * v;
    }
    if (!isfinite(l1) || !isfinite(l2) || l1 * w_top > 1e37)  /* no exact sum can overflow */
        return 0;
    a->sx = top / 127;
    for (long h = 0; h < h_dim; h++) {
        double r = a->sx > 0 ? nearbyint(x[h] / a->sx) : 0;
        r = r > 127 ? 127 : r < -127 ? -127 : r;
        xq[h] = (int8_t)r;
        double d = x[h] - a->sx * r;
        d2 += d * d;
    }
    double grow = 1 + 1e-9;  /* the rounding of these double sums */
    a->l1 = l1 * grow; a->l2 = sqrt(l2) * grow; a->dx_l2 = sqrt(d2) * grow;
    a->tiny = (h_dim / 8 + 4) * 0x1p-149;  /* float32 rounding under 2^-126: absolute, per op */
    return 1;
}

/* screen scores of NQ rows from v against M activation rows (constants after inlining: the
   accumulators stay in registers) */
static inline __attribute__((always_inline)) void block(
        const int8_t *xq, const double *sx, const int8_t *qw, const float *scale, double *out,
        long h_dim, long v_rows, long v, const int nq, const int m_rows) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int8_t *q = qw + v * h_dim;
    __m256i acc[8];
    for (int i = 0; i < nq * m_rows; i++)
        acc[i] = _mm256_setzero_si256();
    for (long h = 0; h < h_dim; h += 32) {
        for (int k = 0; k < nq; k += 2)  /* 8 blocks ahead, a line per 32 values and row */
            _mm_prefetch((const char *)(q + (8 * nq + k) * h_dim + 2 * h), _MM_HINT_T0);
        for (int k = 0; k < nq; k++) {
            __m256i qv = _mm256_loadu_si256((const __m256i *)(q + k * h_dim + h));
            __m256i mag = _mm256_abs_epi8(qv);
            for (int j = 0; j < m_rows; j++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + j * h_dim + h));
                /* |q| (u8) times xq with q's sign (s8): pairs at most 2 * 127 * 127, exact */
                __m256i p = _mm256_maddubs_epi16(mag, _mm256_sign_epi8(xv, qv));
                acc[k * m_rows + j] = _mm256_add_epi32(acc[k * m_rows + j],
                                                       _mm256_madd_epi16(p, ones));
            }
        }
    }
    for (int k = 0; k < nq; k++)
        for (int j = 0; j < m_rows; j++)
            out[j * v_rows + v + k] = scale[v + k] * sx[j] * isum(acc[k * m_rows + j]);
}

/* screen scores of rows [v0, v1) for every activation row: s_v * sx * sum q_v . xq, each
   weight row read once, two at a time */
static void screen(const int8_t *xq, const double *sx, long m_rows, const int8_t *qw,
                   const float *scale, double *out, long h_dim, long v_rows, long v0, long v1) {
    long v = v0;
    for (; v + 2 <= v1; v += 2)
        switch (m_rows) {  /* constant row counts: the accumulators stay in registers */
        case 1: block(xq, sx, qw, scale, out, h_dim, v_rows, v, 2, 1); break;
        case 2: block(xq, sx, qw, scale, out, h_dim, v_rows, v, 2, 2); break;
        case 3: block(xq, sx, qw, scale, out, h_dim, v_rows, v, 2, 3); break;
        default: block(xq, sx, qw, scale, out, h_dim, v_rows, v, 2, 4);
        }
    for (; v < v1; v++)
        for (long j = 0; j < m_rows; j++)
            block(xq + j * h_dim, sx + j, qw, scale, out + j * v_rows, h_dim, v_rows, v, 1, 1);
}

/* >= |score - exact logit|: rounding of the exact sum (relative, plus absolute where values
   fall below float32's normal range), the weight's quantization error (Hoelder or
   Cauchy-Schwarz, the smaller) and the activation's (Cauchy-Schwarz) */
static inline double bound(const RowStats *s, const Activation *a) {
    double e1 = s->e_max * a->l1, e2 = s->e_l2 * a->l2;
    return s->round_c * a->l1 + a->tiny + (e1 < e2 ? e1 : e2) + s->sq_l2 * a->dx_l2;
}

/* phase 1 of one slice [v0, v1): scores, and per activation row the floor A - B of the
   slice's best-scoring row (any row's A - B is at most the largest exact logit) */
static void screen_slice(const int8_t *xq, const double *sx, long m_rows, const int8_t *q,
                         const float *scale, const RowStats *st, const Activation *act,
                         double *scores, long h_dim, long v_rows, long v0, long v1,
                         double *low) {
    if (v0 < v1)
        screen(xq, sx, m_rows, q, scale, scores, h_dim, v_rows, v0, v1);
    for (long m = 0; m < m_rows; m++) {
        const double *a = scores + m * v_rows;
        long top = v0;
        for (long v = v0 + 1; v < v1; v++)
            top = a[v] > a[top] ? v : top;
        low[m] = v0 < v1 ? a[top] - bound(st + top, act + m) : -INFINITY;
    }
}

/* phase 2 of one slice: the exact sums of the rows the floor (the largest over all slices)
   does not rule out; the slice's largest (first on ties), where, and how many were summed */
static void exact_slice(const float *x, long m_rows, long h_dim, const uint16_t *w,
                        const RowStats *st, const RowStats *worst, const Activation *act,
                        const double *scores, long v_rows, long v0, long v1,
                        double low[][MAX_ROWS], int parts, float *best, int64_t *where,
                        int64_t *count) {
    for (long m = 0; m < m_rows; m++) {
        const double *a = scores + m * v_rows;
        const float *xm = x + m * h_dim;
        double floor_ = -INFINITY;
        for (int j = 0; j < parts; j++)
            floor_ = low[j][m] > floor_ ? low[j][m] : floor_;
        double first = floor_ - bound(worst, act + m);  /* below: out whatever its bound */
        float top = -INFINITY;
        int64_t at = -1, n = 0;
        for (long v = v0; v < v1; v++) {
            if (a[v] < first || a[v] + bound(st + v, act + m) < floor_)
                continue;
            float e = bf16_dot(xm, w + v * h_dim, h_dim);
            n++;
            if (at < 0 || e > top) { top = e; at = v; }
        }
        best[m] = top; where[m] = at; count[m] = n;
    }
}

/* For each activation row m < m_rows (<= MAX_ROWS): out[m] = argmax_v bf16_dot(x[m], w[v])
   (the first on ties), computed[m] = rows whose exact sum was needed; scores: [m_rows,
   v_rows] scratch; worst: every field's largest value over the rows (a bound for all). The
   floor is taken from each slice's best-scoring row (any row's A - B is a valid floor).
   Returns 0 (nothing written) if some row is not finite or too large. */
int screened_argmax(const float *x, long m_rows, long h_dim, const uint16_t *w, double w_top,
                    const int8_t *q, const float *scale, const RowStats *st,
                    const RowStats *worst, long v_rows, double *scores,
                    int parts, int64_t *out, int64_t *computed) {
    double low[MAX_PARTS][MAX_ROWS];  /* per thread and activation row, shared */
    float best[MAX_PARTS][MAX_ROWS];
    int64_t where[MAX_PARTS][MAX_ROWS], count[MAX_PARTS][MAX_ROWS];
    int8_t xq[MAX_ROWS * h_dim];
    Activation act[MAX_ROWS];
    double sx[MAX_ROWS];
    for (long m = 0; m < m_rows; m++) {
        if (!quantize(x + m * h_dim, h_dim, w_top, xq + m * h_dim, act + m))
            return 0;
        sx[m] = act[m].sx;
    }
    long step = ((v_rows + parts - 1) / parts + 1) / 2 * 2;  /* whole blocks per slice */
    #pragma omp parallel num_threads(parts)
    {  /* the team may be smaller than asked (OMP_DYNAMIC, thread limits): slices in turn */
        int first_t = omp_get_thread_num(), team = omp_get_num_threads();
        for (int t = first_t; t < parts; t += team)
            screen_slice(xq, sx, m_rows, q, scale, st, act, scores, h_dim, v_rows, t * step,
                         t * step + step < v_rows ? t * step + step : v_rows, low[t]);
        #pragma omp barrier
        for (int t = first_t; t < parts; t += team)
            exact_slice(x, m_rows, h_dim, w, st, worst, act, scores, v_rows, t * step,
                        t * step + step < v_rows ? t * step + step : v_rows, low, parts,
                        best[t], where[t], count[t]);
    }
    for (long m = 0; m < m_rows; m++) {
        float top = -INFINITY;
        int64_t at = -1, n = 0;
        for (int j = 0; j < parts; j++) {  /* slices in index order: strict > keeps the first */
            n += count[j][m];
            if (where[j][m] >= 0 && (at < 0 || best[j][m] > top)) {
                top = best[j][m]; at = where[j][m];
            }
        }
        out[m] = at; computed[m] = n;
    }
    return 1;
}
