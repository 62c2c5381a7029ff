/* Paged decode attention with sinks and the K/V write (kernels/attention_cpu.py);
   decode_step.c includes it too. */
#include "kernel.h"

#include <stdlib.h>

static float dot(const float *a, const float *b, long d) {
    __m256 acc = _mm256_setzero_ps();
    long t = 0;
    for (; t + 8 <= d; t += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + t), _mm256_loadu_ps(b + t), acc);
    float r = hsum(acc);
    for (; t < d; t++)
        r += a[t] * b[t];
    return r;
}

/* One query head of one sequence: keys lo..hi-1 (absolute positions; the key at position k
   sits in block blocks[(k - start) / bs], slot (k - start) % bs), softmax with the sink logit
   as an extra term, weighted sum of the values. scores: hi - lo floats. */
static void head(const float *q, const float *k_cache, const float *v_cache,
                 const int64_t *blocks, long start, long lo, long hi, long hkv, long kh,
                 long d, long bs, float sink, float scale, float *out, float *scores) {
    float m = sink;
    for (long k = lo; k < hi; k++) {
        long i = k - start, slot = (blocks[i / bs] * bs + i % bs) * hkv + kh;
        float s = dot(q, k_cache + slot * d, d) * scale;
        scores[k - lo] = s;
        m = s > m ? s : m;
    }
    float sum = expf(sink - m);
    for (long k = lo; k < hi; k++) {
        scores[k - lo] = expf(scores[k - lo] - m);
        sum += scores[k - lo];
    }
    for (long t = 0; t < d; t++)
        out[t] = 0.0f;
    for (long k = lo; k < hi; k++) {
        long i = k - start, slot = (blocks[i / bs] * bs + i % bs) * hkv + kh;
        float p = scores[k - lo] / sum;
        const float *v = v_cache + slot * d;
        for (long t = 0; t < d; t++)
            out[t] += p * v[t];
    }
}

/* the t_dim new keys and values (rows ldk / ldv floats apart, row floats each) into the
   caches' flat slots; a slot < 0 stores nothing (as write_kv) */
void write_rows(const float *k, long ldk, const float *v, long ldv, float *k_cache,
                float *v_cache, const int64_t *slots, long t_dim, long row) {
    for (long t = 0; t < t_dim; t++)
        if (slots[t] >= 0) {
            memcpy(k_cache + slots[t] * row, k + t * ldk, sizeof(float) * row);
            memcpy(v_cache + slots[t] * row, v + t * ldv, sizeof(float) * row);
        }
}

/* Sequence i (of n) attends with query row rows[i] of q [T, hq, d] over keys lo[i]..hi[i]-1;
   blocks [n, width] physical block ids from key position start[i]; out [n, hq, d].
   Returns 0, or -1 when scratch memory could not be allocated. */
int decode_attention(const float *q, const float *k_cache, const float *v_cache,
                     const int64_t *blocks, long width, const int64_t *rows,
                     const int64_t *start, const int64_t *lo, const int64_t *hi, long n,
                     long hq, long hkv, long d, long bs, const float *sinks, float scale,
                     float *out, int parts) {
    int failed = 0;
    #pragma omp parallel for num_threads(parts) schedule(static)
    for (long task = 0; task < n * hq; task++) {
        long i = task / hq, h = task % hq;
        float *scores = malloc(sizeof(float) * (hi[i] - lo[i] + 1));
        if (scores == NULL) {
            failed = 1;
            continue;
        }
        head(q + (rows[i] * hq + h) * d, k_cache, v_cache, blocks + i * width, start[i],
             lo[i], hi[i], hkv, h / (hq / hkv), d, bs, sinks[h], scale,
             out + (i * hq + h) * d, scores);
        free(scores);
    }
    return failed ? -1 : 0;
}
