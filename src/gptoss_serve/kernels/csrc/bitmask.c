/* The structured-output bitmask applied in place to float32 logits (kernels/bitmask_cpu.py):
   a full word leaves its 32 logits, a zero word sets them to -inf, a mixed one bit by bit. */
#include "kernel.h"

void apply_bitmask(float *logits, long stride, const int64_t *rows, long nrows,
                   const int32_t *mask, long words, long vocab) {
    for (long r = 0; r < nrows; r++) {
        float *p = logits + rows[r] * stride;
        const uint32_t *m = (const uint32_t *)(mask + r * words);
        long full = vocab / 32 < words ? vocab / 32 : words;  /* words the mask has */
        for (long w = 0; w < full; w++) {
            uint32_t bits = m[w];
            float *q = p + w * 32;
            if (bits == 0xFFFFFFFFu) continue;
            if (bits == 0) {
                for (int j = 0; j < 32; j++) q[j] = -INFINITY;
                continue;
            }
            for (int j = 0; j < 32; j++)
                if (!((bits >> j) & 1u)) q[j] = -INFINITY;
        }
        for (long t = full * 32; t < vocab; t++) {
            long w = t / 32;
            if (w >= words || !((m[w] >> (t % 32)) & 1u)) p[t] = -INFINITY;
        }
    }
}
