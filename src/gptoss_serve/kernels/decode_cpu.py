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

The C source (`csrc/decode_step.c`) is a driver that `#include`s the existing kernels' own
sources (`csrc/rms_norm.c`, `logits.c`, `attention.c`, `mxfp4.c`, `rotary.c`: one translation
unit) and calls them, so every value is computed by the same function, in the same order, as
in the layer-by-layer CPU path: the result equals it bit for bit (tested), at any thread count
(threads split rows, heads and expert rows, never one sum). cos/sin of the positions come
from the caller (`formats/rope.py`), so the angles are torch's.

The layer table's columns, the dims and the float constants are laid out by name in the
order of the C file's enums (`F_`, `D_`, `K_`), read by `cpu_c.enum_names`.

Owns the pointer table of a model's decode tensors (`step.StepWeights` -> `DecodeStep`) and the
step's checks; knows nothing of modules, loading, scheduling or sampling.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from gptoss_serve.formats.forward_batch import ForwardBatch, KVCache
from gptoss_serve.kernels import cpu_c
from gptoss_serve.kernels.cpu_threads import kernel_threads
from gptoss_serve.kernels.moe_cpu import PAIRS_MAX
from gptoss_serve.kernels.step import TENSOR_FIELDS, StepWeights

_ERRORS = {-1: (MemoryError, "decode step: no memory for the scratch"),
           -2: (IndexError, "token id out of range"), -3: (IndexError, "KV slot out of range"),
           -4: (ValueError, "a block needed for the keys of a sequence is absent")}


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(the C library of csrc/decode_step.c, how) or (None, why not); see `cpu_c.load`."""
    return cpu_c.load("decode_step.c")


@functools.cache
def _names(first: str) -> tuple[str, ...]:
    """The C enum of decode_step.c that starts with `first`, as lower-case names without the
    prefix (`F_ATTN_NORM` -> 'attn_norm'): the order of a table the step reads."""
    return tuple(n.split("_", 1)[1].lower() for n in cpu_c.enum_names("decode_step.c", first))


_BF16, _U8, _F32 = torch.bfloat16, torch.uint8, torch.float32
_FIELD_DTYPES = {"attn_norm": _F32, "qkv_weight": _BF16, "qkv_bias": _F32, "sinks": _F32,
                 "out_weight": _BF16, "out_bias": _F32, "mlp_norm": _F32, "gate_weight": _F32,
                 "gate_bias": _F32, "w1_blocks": _U8, "w1_scales": _U8, "w1_bias": _F32,
                 "w2_blocks": _U8, "w2_scales": _U8, "w2_bias": _F32}
if tuple(_FIELD_DTYPES) != TENSOR_FIELDS:  # the dtype the C step reads, per LayerWeights tensor
    raise RuntimeError(f"decode_cpu's dtypes {tuple(_FIELD_DTYPES)} != {TENSOR_FIELDS}")
_LAYER_EXTRA = ("k_cache", "v_cache", "pool", "window")  # the table's columns beside them
NO_POOL_BLOCKS = 1 << 50  # block count passed for a pool no layer uses (nothing written there)


def _why_not(w: StepWeights, kv: KVCache) -> str:
    """Why the C step cannot serve these tensors ('' where it can)."""
    layer_tensors = [t for lw in w.layers for t in lw.tensors()]
    if any(t is None for t in layer_tensors):
        return "experts not kept packed"
    every = [*layer_tensors, w.embedding, w.final_norm, *kv.k, *kv.v]
    dtypes = [*_FIELD_DTYPES.values()] * len(w.layers) + [_F32] * (2 + 2 * len(kv.k))
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
            self._consts = torch.tensor([getattr(weights, name) for name in _names("K_EPS")],
                                        dtype=torch.float32)  # eps, sm_scale, swiglu_*

    def _layer_table(self, kv: KVCache) -> torch.Tensor:
        """[layers, FIELDS] int64, the columns in the order of decode_step.c's `F_` enum."""
        columns = _names("F_ATTN_NORM")
        if sorted(columns) != sorted(TENSOR_FIELDS + _LAYER_EXTRA):
            raise RuntimeError(f"decode_step.c's layer table {columns} != LayerWeights'")
        rows = []
        for n, lw in enumerate(self.weights.layers):
            row = {name: getattr(lw, name).data_ptr() for name in TENSOR_FIELDS}
            row.update(k_cache=kv.k[n].data_ptr(), v_cache=kv.v[n].data_ptr(),
                       pool=int(lw.sliding), window=lw.window)
            rows.append([row[name] for name in columns])
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
        dims = {"layers": len(w.layers), "tokens": t, "hidden": w.embedding.shape[1],
                "q_heads": w.n_q, "kv_heads": hkv, "head_dim": d, "block_size": bs,
                "experts": lw.w1_bias.shape[0], "top_k": w.top_k,
                "intermediate": lw.w2_blocks.shape[2] * 32, "vocab": w.embedding.shape[0],
                "rows": rows.shape[0], "width_full": tables[0].shape[1],
                "width_sliding": tables[1].shape[1], "blocks_full": self._pool_blocks[0],
                "blocks_sliding": self._pool_blocks[1],
                "max_keys": int(lens.max())}  # max_keys sizes the scratch
        dims = torch.tensor([dims[name] for name in _names("D_LAYERS")], dtype=torch.int64)
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
