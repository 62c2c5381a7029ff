/* RoPE rotation of q/k heads (kernels/rope_cpu.py), bit for bit torch's: no contraction into
   FMAs. The pragma holds to the end of the translation unit, so decode_step.c includes this
   file last. Needs no helper of kernel.h. */
#pragma GCC optimize("fp-contract=off")  /* a*c - b*s rounded as torch does: no FMA */

/* x: t_dim rows ld floats apart, each h_dim heads of d floats (contiguous); cos, sin:
   [t_dim][d/2]; out [t_dim][h_dim][d]: dim i rotates with dim i + d/2 */
void rotary(const float *x, long ld, const float *cos, const float *sin, float *out,
            long t_dim, long h_dim, long d) {
    long half = d / 2;
    for (long t = 0; t < t_dim; t++)
        for (long h = 0; h < h_dim; h++) {
            const float *a = x + t * ld + h * d, *b = a + half;
            const float *c = cos + t * half, *s = sin + t * half;
            float *o = out + (t * h_dim + h) * d;
            for (long i = 0; i < half; i++) {
                o[i] = a[i] * c[i] - b[i] * s[i];
                o[i + half] = b[i] * c[i] + a[i] * s[i];
            }
        }
}
