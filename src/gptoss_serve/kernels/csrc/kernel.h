/* The helpers every CPU kernel source shares (each `#include "kernel.h"` first): bf16 widening,
   a horizontal sum in a fixed order and the bf16 dot product, so that kernels built from them
   make the same float32 sums. Built with -O3 -mavx2 -mfma (kernels/cpu_c.py). */
#ifndef GPTOSS_KERNEL_H
#define GPTOSS_KERNEL_H

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

#endif  /* GPTOSS_KERNEL_H */
