"""A whole decode step of a few single-token sequences on CPU in one C call.

Up to `max_tokens` sequences with one new token each (batch-1 serving) run every layer in one
OpenMP parallel region: embedding rows, RMSNorm with the residual add, qkv projection (bf16
weights), RoPE, K/V write into the paged caches, attention with sinks and window, out
projection, RMSNorm, and the MoE layer on the packed MXFP4 experts, then the final norm of the
sampled rows. No Python between layers (the layer loop through the kernel set makes dozens
of ctypes calls and small torch operators per step) and no barrier: each layer is seven
phases (norm; qkv rows; attention per token and KV head; out rows; norm and routing; expert
rows of the first, then of the second projection) whose work items the threads claim from
atomic counters once the phase before is finished. A thread that the OS has taken off its
core then holds up no one unless it took an item; with barriers (a first version, five per
layer) every barrier waited for such a thread whenever another process held a core
(docs/benchmarks.md, round 5b).

The C source is the existing kernels' own (`norm_cpu`, `logits_cpu`, `attention_cpu`,
`mxfp4_cpu`, `rope_cpu` bodies, concatenated after `cpu_c.AVX_PRELUDE`) plus a driver that
calls them, so every value is computed by the same function, in the same order, as in the
layer-by-layer CPU path: the result equals it bit for bit (tested), at any thread count
(threads split rows, heads and expert rows, never one sum). cos/sin of the positions come
from the caller (`model/rope.py`), so the angles are torch's.

Owns the pointer table of a model's decode tensors (`StepWeights` -> `DecodeStep`) and the
step's checks; knows nothing of modules, loading, scheduling or sampling.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import torch

from gptoss_serve.engine.forward_batch import ForwardBatch, KVCache
from gptoss_serve.kernels import attention_cpu, cpu_c, logits_cpu, mxfp4_cpu, norm_cpu, rope_cpu
from gptoss_serve.kernels.cpu_threads import kernel_threads
from gptoss_serve.kernels.moe_cpu import PAIRS_MAX

_STEP_C = r"""
#include <sched.h>

void rotary(const float *x, long ld, const float *cos, const float *sin, float *out,
            long t_dim, long h_dim, long d);  /* rope_cpu's, compiled without contraction */

/* one row of the layer table: pointers (as int64), then the pool (0 full, 1 sliding), window */
enum { F_NORM1, F_QKV_W, F_QKV_B, F_SINKS, F_OUT_W, F_OUT_B, F_NORM2, F_GATE_W, F_GATE_B,
       F_B1, F_S1, F_BIAS1, F_B2, F_S2, F_BIAS2, F_K, F_V, F_POOL, F_WINDOW, FIELDS };
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
    float *kc = (float *)L[F_K], *vc = (float *)L[F_V];
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
    moe_layer m = {(const float *)L[F_GATE_W], (const float *)L[F_GATE_B],
                   (const float *)L[F_BIAS1], (const float *)L[F_BIAS2],
                   (const uint8_t *)L[F_B1], (const uint8_t *)L[F_S1], (const uint8_t *)L[F_B2],
                   (const uint8_t *)L[F_S2], s->work, s->moe_ids, s->t_dim, s->e_dim, s->k,
                   s->h_dim, s->i_dim, s->limit, s->alpha};
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
        rms_norm(s->o, s->res, (const float *)L[F_NORM2], s->hn, s->res, t_dim, h_dim, s->eps);
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
        rms_norm(s->x, l ? s->res : NULL, (const float *)L[F_NORM1], s->hn, s->res, t_dim,
                 h_dim, s->eps);
        break;
    case P_QKV:
        r1 = r0 + CHUNK < s->nqkv ? r0 + CHUNK : s->nqkv;
        project(s->hn, (const uint16_t *)L[F_QKV_W], (const float *)L[F_QKV_B], s->qkv, t_dim,
                s->nqkv, h_dim, r0, r1);
        break;
    case P_ATTN:
        if (attend_group(s, L, i / s->hkv, i % s->hkv, sc))
            __atomic_store_n(&s->failed, 1, __ATOMIC_RELAXED);
        break;
    default:  /* P_OUT */
        r1 = r0 + CHUNK < h_dim ? r0 + CHUNK : h_dim;
        project(s->attn, (const uint16_t *)L[F_OUT_W], (const float *)L[F_OUT_B], s->o, t_dim,
                h_dim, s->hq * s->d, r0, r1);
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

/* The step. dims: l_dim, t_dim, h_dim, hq, hkv, d, bs, e_dim, k, i_dim, vocab, s_dim,
   width0, width1, blocks0, blocks1, max_keys; f: eps, scale, swiglu limit, alpha. Output:
   out [s_dim][h_dim], the final norm of rows `rows`. Returns 0; -1 no memory, -2 a token id
   out of range, -3 a KV slot out of range, -4 a needed block absent. */
int decode_step(const int64_t *layers, const long *dims, const float *f, const float *emb,
                const int64_t *ids, const float *cos, const float *sin, const int32_t *seq_lens,
                const int64_t *slots0, const int64_t *slots1, const int32_t *tables0,
                const int32_t *tables1, const int64_t *rows, const float *final_norm,
                float *out, int parts) {
    long t_dim = dims[1], h_dim = dims[2], hq = dims[3], hkv = dims[4], d = dims[5];
    long e_dim = dims[7], k = dims[8], i_dim = dims[9], pairs = t_dim * k;
    long max_w = (dims[12] > dims[13] ? dims[12] : dims[13]) + 1, nqkv = (hq + 2 * hkv) * d;
    for (long t = 0; t < t_dim; t++) {
        if (ids[t] < 0 || ids[t] >= dims[10])
            return -2;
        if (slots0[t] >= dims[14] * dims[6] || slots1[t] >= dims[15] * dims[6])
            return -3;
    }
    long shared = t_dim * (4 * h_dim + nqkv + hq * d) + pairs * (i_dim + h_dim + 1)
                  + t_dim * e_dim, own = d + dims[16] + 1, n_phases = dims[0] * PHASES + 1;
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
                final_norm, dims[0], t_dim, h_dim, hq, hkv, d, dims[6], nqkv, e_dim, k, i_dim,
                dims[11], {dims[12], dims[13]}, f[0], f[1], f[2], f[3]};
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
"""

_C_SOURCE = (cpu_c.AVX_PRELUDE + norm_cpu.C_BODY + logits_cpu.C_BODY + attention_cpu.C_BODY
             + mxfp4_cpu.C_BODY + _STEP_C + rope_cpu.C_SOURCE)
_ERRORS = {-1: (MemoryError, "decode step: no memory for the scratch"),
           -2: (IndexError, "token id out of range"), -3: (IndexError, "KV slot out of range"),
           -4: (ValueError, "a block needed for the keys of a sequence is absent")}


def _declare(lib: ctypes.CDLL) -> None:
    lib.decode_step.restype = ctypes.c_int
    lib.decode_step.argtypes = [ctypes.c_void_p] * 15 + [ctypes.c_int]


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(the C library, how) or (None, why not); see `cpu_c.load`."""
    return cpu_c.load("decode_step", _C_SOURCE, _declare)


@dataclass(frozen=True)
class LayerWeights:
    """One block's decode tensors, in the order of the C layer table."""

    attn_norm: torch.Tensor
    qkv_weight: torch.Tensor
    qkv_bias: torch.Tensor
    sinks: torch.Tensor
    out_weight: torch.Tensor
    out_bias: torch.Tensor
    mlp_norm: torch.Tensor
    gate_weight: torch.Tensor
    gate_bias: torch.Tensor
    w1_blocks: torch.Tensor | None
    w1_scales: torch.Tensor | None
    w1_bias: torch.Tensor
    w2_blocks: torch.Tensor | None
    w2_scales: torch.Tensor | None
    w2_bias: torch.Tensor
    sliding: bool
    window: int

    def tensors(self) -> list[torch.Tensor | None]:
        return [self.attn_norm, self.qkv_weight, self.qkv_bias, self.sinks, self.out_weight,
                self.out_bias, self.mlp_norm, self.gate_weight, self.gate_bias, self.w1_blocks,
                self.w1_scales, self.w1_bias, self.w2_blocks, self.w2_scales, self.w2_bias]


@dataclass(frozen=True)
class StepWeights:
    """What the step reads besides the batch: the model's tensors and its constants."""

    embedding: torch.Tensor  # [V, H] float32
    final_norm: torch.Tensor
    layers: tuple[LayerWeights, ...]
    eps: float
    sm_scale: float
    n_q: int
    n_kv: int
    head_dim: int
    top_k: int
    swiglu_limit: float
    swiglu_alpha: float


_BF16, _U8, _F32 = torch.bfloat16, torch.uint8, torch.float32
_FIELD_DTYPES = (_F32, _BF16, _F32, _F32, _BF16, _F32, _F32, _F32, _F32, _U8, _U8, _F32, _U8,
                 _U8, _F32)  # of LayerWeights.tensors()
NO_POOL_BLOCKS = 1 << 50  # block count passed for a pool no layer uses (nothing written there)


def _why_not(w: StepWeights, kv: KVCache) -> str:
    """Why the C step cannot serve these tensors ('' where it can)."""
    layer_tensors = [t for lw in w.layers for t in lw.tensors()]
    if any(t is None for t in layer_tensors):
        return "experts not kept packed"
    every = [*layer_tensors, w.embedding, w.final_norm, *kv.k, *kv.v]
    dtypes = [*_FIELD_DTYPES * len(w.layers), *[_F32] * (2 + 2 * len(kv.k))]
    if any(t.dtype != dt for t, dt in zip(every, dtypes, strict=True)):
        return "dtypes"
    if any(not t.is_contiguous() or t.device.type != "cpu" for t in every):
        return "layout"
    first = w.layers[0]
    h, i = w.embedding.shape[1], first.w2_blocks.shape[2] * 32
    if (h % 32 or w.head_dim % 8 or w.n_q % w.n_kv or first.w1_blocks.shape[1] != 2 * i
            or first.w1_bias.shape[0] < w.top_k):
        return "shapes"
    return ""


class DecodeStep:
    """The decode step over one model's tensors and one KV cache: a table of their addresses,
    valid while none of them moved (`current`)."""

    def __init__(self, weights: StepWeights, kv: KVCache) -> None:
        self.weights = weights
        lib, how = _load()
        self.why_not = "no C kernel: " + how if lib is None else _why_not(weights, kv)
        self.lib = lib if not self.why_not else None
        self.max_tokens = PAIRS_MAX // weights.top_k
        self._where = self._addresses(weights, kv)  # starts with the ids of kv.k
        self._pool_blocks = self._blocks_per_pool(weights, kv)
        if self.lib is not None:
            self._table = self._layer_table(kv)
            self._consts = torch.tensor([weights.eps, weights.sm_scale, weights.swiglu_limit,
                                         weights.swiglu_alpha], dtype=torch.float32)

    def _layer_table(self, kv: KVCache) -> torch.Tensor:
        rows = [[t.data_ptr() for t in lw.tensors()]
                + [kv.k[n].data_ptr(), kv.v[n].data_ptr(), int(lw.sliding), lw.window]
                for n, lw in enumerate(self.weights.layers)]
        return torch.tensor(rows, dtype=torch.int64)

    @staticmethod
    def _addresses(weights: StepWeights, kv: KVCache) -> list[int]:
        tensors = [weights.embedding, weights.final_norm, *kv.k, *kv.v]
        tensors += [t for lw in weights.layers for t in lw.tensors() if t is not None]
        return [id(t) for t in kv.k] + [t.data_ptr() for t in tensors]

    def current(self, weights: StepWeights, kv: KVCache) -> bool:
        """Whether the table holds the addresses of these tensors (the model's as they are now,
        so a replaced parameter is seen) and of `kv`'s."""
        return self._addresses(weights, kv) == self._where

    def fits(self, batch: ForwardBatch) -> bool:
        """Whether the batch has the step's shape: every sequence decodes one token, at most
        `max_tokens` of them (whatever the tensors)."""
        t = len(batch.query_lens_cpu)
        return 0 < t <= self.max_tokens and all(n == 1 for n in batch.query_lens_cpu)

    def accepts(self, batch: ForwardBatch) -> bool:
        """Whether `run` serves this batch: it `fits` and the tensors suit the C step."""
        return self.lib is not None and self.fits(batch)

    def run(self, batch: ForwardBatch, kv: KVCache, cos: torch.Tensor,
            sin: torch.Tensor) -> torch.Tensor:
        """The final-normed rows `batch.logits_indices` [S, H] float32 after every layer (the
        caches written) of a batch it `accepts`; cos/sin [T, D/2] float32 per token."""
        if [id(t) for t in kv.k] != self._where[:len(kv.k)]:
            raise ValueError("decode step built for another KV cache")
        t = len(batch.query_lens_cpu)
        w, (_, bs, hkv, d) = self.weights, kv.k[0].shape
        lw = w.layers[0]
        tables = [p.block_tables.to(torch.int32).contiguous() for p in (batch.full, batch.sliding)]
        slots = [p.slot_mapping.to(torch.int64).contiguous() for p in (batch.full, batch.sliding)]
        ids, rows = batch.input_ids.contiguous(), batch.logits_indices.contiguous()
        cos, sin, lens = cos.contiguous(), sin.contiguous(), batch.seq_lens.to(torch.int32)
        dims = torch.tensor([len(w.layers), t, w.embedding.shape[1], w.n_q, hkv, d, bs,
                             lw.w1_bias.shape[0], w.top_k, lw.w2_blocks.shape[2] * 32,
                             w.embedding.shape[0], rows.shape[0], tables[0].shape[1],
                             tables[1].shape[1], *self._pool_blocks,
                             int(lens.max())], dtype=torch.int64)  # sizes the scratch
        out = torch.empty(rows.shape[0], w.embedding.shape[1], dtype=torch.float32)
        rc = self.lib.decode_step(
            self._table.data_ptr(), dims.data_ptr(), self._consts.data_ptr(),
            w.embedding.data_ptr(), ids.data_ptr(), cos.data_ptr(), sin.data_ptr(),
            lens.data_ptr(), slots[0].data_ptr(), slots[1].data_ptr(), tables[0].data_ptr(),
            tables[1].data_ptr(), rows.data_ptr(), w.final_norm.data_ptr(), out.data_ptr(),
            max(1, kernel_threads()))
        if rc:
            error, message = _ERRORS[rc]
            raise error(message)
        return out

    @staticmethod
    def _blocks_per_pool(weights: StepWeights, kv: KVCache) -> list[int]:
        """Blocks of the full and the sliding pool (`NO_POOL_BLOCKS` where no layer uses it)."""
        counts = [NO_POOL_BLOCKS, NO_POOL_BLOCKS]
        for n, lw in enumerate(weights.layers):
            counts[int(lw.sliding)] = kv.k[n].shape[0]
        return counts
