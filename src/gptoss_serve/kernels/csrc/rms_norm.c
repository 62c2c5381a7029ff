/* RMSNorm with the fused residual add (kernels/norm_cpu.py); decode_step.c includes it too. */
#include "kernel.h"

/* per row: h = x + res (res may be NULL: h = x, h_out unused), y = h * rsqrt(mean(h^2) + eps)
   * w; dim % 8 == 0 */
void rms_norm(const float *x, const float *res, const float *w, float *y, float *h_out,
              long rows, long dim, float eps) {
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *h = res ? h_out + r * dim : (float *)xr;
        __m256 acc = _mm256_setzero_ps();
        for (long i = 0; i < dim; i += 8) {
            __m256 v = _mm256_loadu_ps(xr + i);
            if (res) {
                v = _mm256_add_ps(v, _mm256_loadu_ps(res + r * dim + i));
                _mm256_storeu_ps(h + i, v);
            }
            acc = _mm256_fmadd_ps(v, v, acc);
        }
        float inv = 1.0f / sqrtf(hsum(acc) / (float)dim + eps);
        for (long i = 0; i < dim; i++)
            y[r * dim + i] = h[i] * inv * w[i];
    }
}
