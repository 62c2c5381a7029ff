/* A whole decode step of a few single-token sequences in one call (kernels/decode_cpu.py).
   One translation unit with the layer-by-layer kernels' own sources, so every value comes from
   the same function as on the layer path; rotary.c (no contraction) comes last. */
#include "kernel.h"
#include "rms_norm.c"
#include "logits.c"
#include "attention.c"
#include "mxfp4.c"
#include <sched.h>

void rotary(const float *x, long ld, const float *cos, const float *sin, float *out,
            long t_dim, long h_dim, long d);  /* rotary.c's, compiled without contraction */

/* One row of the layer table (int64 each): the tensors of decode_cpu.LayerWeights in this order
   (F_ name = the field's name), the layer's K and V cache, its pool (0 full, 1 sliding) and
   window. decode_cpu.py builds the row from these names. */
enum { F_ATTN_NORM, F_QKV_WEIGHT, F_QKV_BIAS, F_SINKS, F_OUT_WEIGHT, F_OUT_BIAS, F_MLP_NORM,
       F_GATE_WEIGHT, F_GATE_BIAS, F_W1_BLOCKS, F_W1_SCALES, F_W1_BIAS, F_W2_BLOCKS,
       F_W2_SCALES, F_W2_BIAS, F_K_CACHE, F_V_CACHE, F_POOL, F_WINDOW, FIELDS };
/* decode_step's dims (int64 each, this order; decode_cpu.py builds them from these names) */
enum { D_LAYERS, D_TOKENS, D_HIDDEN, D_Q_HEADS, D_KV_HEADS, D_HEAD_DIM, D_BLOCK_SIZE, D_EXPERTS,
       D_TOP_K, D_INTERMEDIATE, D_VOCAB, D_ROWS, D_WIDTH_FULL, D_WIDTH_SLIDING, D_BLOCKS_FULL,
       D_BLOCKS_SLIDING, D_MAX_KEYS, DIMS };
/* decode_step's float constants (this order) */
enum { K_EPS, K_SM_SCALE, K_SWIGLU_LIMIT, K_SWIGLU_ALPHA, CONSTS };
/* the phases of a layer: norm; qkv rows; attention (token, kv head); out rows; norm and
   routing; expert first-projection rows; expert second-projection rows. Then the final norm. */
enum { P_NORM1, P_QKV, P_ATTN, P_OUT, P_NORM2, P_UP, P_DOWN, PHASES };
#define CHUNK 64  /* projection rows per work item (a multiple of 4) */
#define SPINS 2000  /* pauses before a waiting thread yields its core */

typedef struct {  /* one phase's work items: next to claim, finished; own cache line */
    long claim, done;
    char pad[48];
} counter_t;

typedef struct {  /* a thread's scratch for attention */
    float *qr, *scores;
    int64_t *blocks;
} scratch_t;

typedef struct {
    const int64_t *layers, *slots[2], *rows;
    const int32_t *seq_lens, *tables[2];
    const float *cos, *sin, *final_norm;
    long l_dim, t_dim, h_dim, hq, hkv, d, bs, nqkv, e_dim, k, i_dim, s_dim, width[2];
    float eps, scale, limit, alpha;
    float *x, *res, *hn, *qkv, *attn, *o, *work, *out;  /* shared */
    int64_t *moe_ids;
    int failed;
} step_t;

/* y[t][n] = x[t] . w[n] + b[n] for rows n in [n0, n1) of every token: bf16_pairs' sums */
static void project(const float *x, const uint16_t *w, const float *b, float *y, long t_dim,
                    long n_rows, long h_dim, long n0, long n1) {
    for (long t = 0; t < t_dim; t++)
        biased_rows(x + t * h_dim, w, b, y + t * n_rows, h_dim, n0, n1);
}

/* token t, kv head g: rotated key and value into the cache, then the group's query heads
   rotated and attended (attention_cpu's head); -1 where a needed block is absent */
static int attend_group(const step_t *s, const int64_t *L, long t, long g, scratch_t *sc) {
    long pool = L[F_POOL], window = L[F_WINDOW], d = s->d, half = d / 2;
    long n = s->seq_lens[t], lo = window > 0 && n > window ? n - window : 0;
    const float *row = s->qkv + t * s->nqkv, *c = s->cos + t * half, *sn = s->sin + t * half;
    float *kc = (float *)L[F_K_CACHE], *vc = (float *)L[F_V_CACHE];
    const int32_t *tab = s->tables[pool] + t * s->width[pool];
    int64_t slot = s->slots[pool][t];
    if (slot >= 0) {
        rotary(row + (s->hq + g) * d, s->nqkv, c, sn, kc + (slot * s->hkv + g) * d, 1, 1, d);
        memcpy(vc + (slot * s->hkv + g) * d, row + (s->hq + s->hkv + g) * d,
               sizeof(float) * d);
    }
    if (n < 1 || (n - 1) / s->bs >= s->width[pool])
        return -1;
    for (long b = lo / s->bs; b <= (n - 1) / s->bs; b++) {
        if (tab[b] < 0)
            return -1;
        sc->blocks[b] = tab[b];
    }
    long grp = s->hq / s->hkv;
    for (long h = g * grp; h < (g + 1) * grp; h++) {
        rotary(row + h * d, s->nqkv, c, sn, sc->qr, 1, 1, d);
        head(sc->qr, kc, vc, sc->blocks, 0, lo, n, s->hkv, g, d, s->bs,
             ((const float *)L[F_SINKS])[h], s->scale, s->attn + (t * s->hq + h) * d,
             sc->scores);
    }
    return 0;
}

static moe_layer moe_of(const step_t *s, const int64_t *L) {
    moe_layer m = {(const float *)L[F_GATE_WEIGHT], (const float *)L[F_GATE_BIAS],
                   (const float *)L[F_W1_BIAS], (const float *)L[F_W2_BIAS],
                   (const uint8_t *)L[F_W1_BLOCKS], (const uint8_t *)L[F_W1_SCALES],
                   (const uint8_t *)L[F_W2_BLOCKS], (const uint8_t *)L[F_W2_SCALES], s->work,
                   s->moe_ids, s->t_dim, s->e_dim, s->k, s->h_dim, s->i_dim, s->limit,
                   s->alpha};
    return m;
}

static long chunks(long rows) { return (rows + CHUNK - 1) / CHUNK; }

/* work items of phase p of a layer (p == PHASES: the final norm) */
static long phase_items(const step_t *s, int p) {
    switch (p) {
    case P_QKV: return chunks(s->nqkv);
    case P_ATTN: return s->t_dim * s->hkv;
    case P_OUT: case P_DOWN: return chunks(s->h_dim);
    case P_UP: return chunks(2 * s->i_dim);
    default: return 1;
    }
}

static void final_norm(step_t *s) {
    for (long r = 0; r < s->s_dim; r++)
        rms_norm(s->x + s->rows[r] * s->h_dim, s->res + s->rows[r] * s->h_dim, s->final_norm,
                 s->out + r * s->h_dim, s->hn, 1, s->h_dim, s->eps);
}

/* an item of the MoE phases (norm and routing, first, second projection) from row r0 */
static void moe_item(step_t *s, const int64_t *L, int p, long r0) {
    long t_dim = s->t_dim, h_dim = s->h_dim;
    moe_layer m = moe_of(s, L);
    int64_t *ids;
    float *wts;
    moe_scratch(&m, 0, &ids, &wts);
    switch (p) {
    case P_NORM2:
        rms_norm(s->o, s->res, (const float *)L[F_MLP_NORM], s->hn, s->res, t_dim, h_dim, s->eps);
        moe_route(&m, s->hn, ids, wts, wts + t_dim * s->k);
        break;
    case P_UP:
        moe_up(&m, s->hn, ids, r0, r0 + CHUNK < 2 * s->i_dim ? r0 + CHUNK : 2 * s->i_dim);
        break;
    default:  /* P_DOWN */
        moe_down(&m, s->x, ids, wts, r0, r0 + CHUNK < h_dim ? r0 + CHUNK : h_dim);
    }
}

/* item i of phase p of layer l (l == l_dim: the final norm) */
static void run_item(step_t *s, long l, int p, long i, scratch_t *sc) {
    long t_dim = s->t_dim, h_dim = s->h_dim, r0 = i * CHUNK, r1;
    if (l == s->l_dim) {
        final_norm(s);
        return;
    }
    const int64_t *L = s->layers + l * FIELDS;
    if (p >= P_NORM2) {
        moe_item(s, L, p, r0);
        return;
    }
    switch (p) {
    case P_NORM1:
        if (l == 0)
            memcpy(s->res, s->x, sizeof(float) * t_dim * h_dim);
        rms_norm(s->x, l ? s->res : NULL, (const float *)L[F_ATTN_NORM], s->hn, s->res, t_dim,
                 h_dim, s->eps);
        break;
    case P_QKV:
        r1 = r0 + CHUNK < s->nqkv ? r0 + CHUNK : s->nqkv;
        project(s->hn, (const uint16_t *)L[F_QKV_WEIGHT], (const float *)L[F_QKV_BIAS], s->qkv,
                t_dim, s->nqkv, h_dim, r0, r1);
        break;
    case P_ATTN:
        if (attend_group(s, L, i / s->hkv, i % s->hkv, sc))
            __atomic_store_n(&s->failed, 1, __ATOMIC_RELAXED);
        break;
    default:  /* P_OUT */
        r1 = r0 + CHUNK < h_dim ? r0 + CHUNK : h_dim;
        project(s->attn, (const uint16_t *)L[F_OUT_WEIGHT], (const float *)L[F_OUT_BIAS], s->o,
                t_dim, h_dim, s->hq * s->d, r0, r1);
    }
}

static void wait_done(counter_t *c, long total) {
    for (long spins = 0; __atomic_load_n(&c->done, __ATOMIC_ACQUIRE) < total; spins++) {
        _mm_pause();
        if (spins > SPINS)
            sched_yield();
    }
}

/* Every thread walks the phases in order and claims items of each once the previous phase
   is finished; no barrier, so a thread that is not running holds up no one (unless it holds
   an unfinished item), and one thread alone finishes the step. */
static void run_phases(step_t *s, counter_t *count, scratch_t *sc) {
    long q = 0, prev_total = 0;
    for (long l = 0; l <= s->l_dim; l++)
        for (int p = 0; p < (l < s->l_dim ? PHASES : 1); p++, q++) {
            long total = l < s->l_dim ? phase_items(s, p) : 1, i;
            if (__atomic_load_n(&count[q].claim, __ATOMIC_RELAXED) < total) {
                if (q > 0)
                    wait_done(&count[q - 1], prev_total);
                while ((i = __atomic_fetch_add(&count[q].claim, 1, __ATOMIC_RELAXED)) < total) {
                    run_item(s, l, p, i, sc);
                    __atomic_fetch_add(&count[q].done, 1, __ATOMIC_RELEASE);
                }
            }
            prev_total = total;
        }
}

/* The step. dims: DIMS values (D_ names), f: CONSTS values (K_ names). Output:
   out [s_dim][h_dim], the final norm of rows `rows`. Returns 0; -1 no memory, -2 a token id
   out of range, -3 a KV slot out of range, -4 a needed block absent. */
int decode_step(const int64_t *layers, const long *dims, const float *f, const float *emb,
                const int64_t *ids, const float *cos, const float *sin, const int32_t *seq_lens,
                const int64_t *slots0, const int64_t *slots1, const int32_t *tables0,
                const int32_t *tables1, const int64_t *rows, const float *final_norm,
                float *out, int parts) {
    long t_dim = dims[D_TOKENS], h_dim = dims[D_HIDDEN], hq = dims[D_Q_HEADS],
         hkv = dims[D_KV_HEADS], d = dims[D_HEAD_DIM];
    long e_dim = dims[D_EXPERTS], k = dims[D_TOP_K], i_dim = dims[D_INTERMEDIATE],
         pairs = t_dim * k;
    long max_w = (dims[D_WIDTH_FULL] > dims[D_WIDTH_SLIDING] ? dims[D_WIDTH_FULL]
                                                             : dims[D_WIDTH_SLIDING]) + 1,
         nqkv = (hq + 2 * hkv) * d;
    for (long t = 0; t < t_dim; t++) {
        if (ids[t] < 0 || ids[t] >= dims[D_VOCAB])
            return -2;
        if (slots0[t] >= dims[D_BLOCKS_FULL] * dims[D_BLOCK_SIZE]
                || slots1[t] >= dims[D_BLOCKS_SLIDING] * dims[D_BLOCK_SIZE])
            return -3;
    }
    long shared = t_dim * (4 * h_dim + nqkv + hq * d) + pairs * (i_dim + h_dim + 1)
                  + t_dim * e_dim, own = d + dims[D_MAX_KEYS] + 1,
         n_phases = dims[D_LAYERS] * PHASES + 1;
    float *mem = malloc(sizeof(float) * (shared + parts * own));
    int64_t *imem = malloc(sizeof(int64_t) * (pairs + parts * max_w));
    counter_t *count = calloc(n_phases, sizeof(counter_t));
    if (mem == NULL || imem == NULL || count == NULL) {
        free(mem);
        free(imem);
        free(count);
        return -1;
    }
    step_t s = {layers, {slots0, slots1}, rows, seq_lens, {tables0, tables1}, cos, sin,
                final_norm, dims[D_LAYERS], t_dim, h_dim, hq, hkv, d, dims[D_BLOCK_SIZE], nqkv,
                e_dim, k, i_dim, dims[D_ROWS], {dims[D_WIDTH_FULL], dims[D_WIDTH_SLIDING]},
                f[K_EPS], f[K_SM_SCALE], f[K_SWIGLU_LIMIT], f[K_SWIGLU_ALPHA]};
    s.x = mem;
    s.res = s.x + t_dim * h_dim;
    s.hn = s.res + t_dim * h_dim;
    s.o = s.hn + t_dim * h_dim;
    s.qkv = s.o + t_dim * h_dim;
    s.attn = s.qkv + t_dim * nqkv;
    s.work = s.attn + t_dim * hq * d;
    s.out = out;
    s.moe_ids = imem;
    for (long t = 0; t < t_dim; t++)
        memcpy(s.x + t * h_dim, emb + ids[t] * h_dim, sizeof(float) * h_dim);
    #pragma omp parallel num_threads(parts)
    {
        int tid = thread_id();
        scratch_t sc = {mem + shared + tid * own, mem + shared + tid * own + d,
                        imem + pairs + tid * max_w};
        run_phases(&s, count, &sc);
    }
    free(mem);
    free(imem);
    free(count);
    return s.failed ? -4 : 0;
}

#include "rotary.c"
