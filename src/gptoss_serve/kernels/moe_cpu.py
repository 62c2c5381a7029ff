"""Mixture-of-experts on CPU: tokens grouped per expert, experts kept dequantized when they fit.

Same signature and maths as `kernels/moe.py: moe_ref` (its oracle). Differences are speed only:
- the token/expert pairs are sorted by expert once; each used expert runs one matmul pair over
  its contiguous rows (an `addmm` with the bias), and the weighted rows come back with one
  `index_add_`: no per-token Python and one host sync per call (the per-expert counts);
- dense experts (`ExpertWeights.w1/w2`, e.g. the copy `MoEBlock` keeps on CPU, see
  `dense_experts_fit`) are used as they are: in the activation dtype, or in bf16 (the CPU set's
  choice: exact for MXFP4 values, half the bytes) through `logits_cpu.linear_cpu` (the
  bf16-weight kernel for a few rows, float32 accumulation); packed MXFP4 experts are
  dequantized per step, only those used, with a byte-wise lookup table (`dequantize_lut`);
- a decode step's few pairs (up to `PAIRS_MAX`) skip the per-expert loop: one call of a pair
  kernel for all first projections, one SwiGLU, one call for all second projections. Where the
  packed MXFP4 experts are kept beside the dense copy (`DenseExperts.keep_packed`) the
  kernel reads them (`mxfp4_cpu.mxfp4_pairs`: 9.5 instead of 36 MB per token in the small
  preset), else the bf16 copy (`logits_cpu.bf16_pairs`); both make the same float32 sums, so the
  same result bit for bit. Prefill and larger batches use the dense copy.

Owns the CPU memory budget rule for dequantized experts. Knows nothing of modules or loading.
"""

from __future__ import annotations

import logging
import os

import torch

from gptoss_serve.formats.mxfp4 import BLOCK, FP4_VALUES, SCALE_BIAS
from gptoss_serve.kernels.logits_cpu import bf16_pairs, linear_cpu
from gptoss_serve.kernels.moe import ExpertWeights, route, swiglu
from gptoss_serve.kernels.mxfp4_cpu import moe_decode, mxfp4_pairs

log = logging.getLogger(__name__)
GIB = 1 << 30
# Dequantized experts may use at most this share of the memory available at start-up, and at
# most GPTOSS_CPU_DENSE_EXPERTS_GIB (default 16) GiB; otherwise experts stay packed.
DENSE_EXPERTS_SHARE = 0.5
PAIRS_MAX = 16  # token/expert pairs (4 tokens at top-4) up to which one pair-kernel call runs
FUSED_DECODE = True  # those steps on packed experts: the whole layer in one C call
_LUTS: dict[tuple[str, torch.dtype], torch.Tensor] = {}


def byte_lut(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[256, 2]: the two E2M1 values of each packed byte (low nibble first)."""
    key = (str(device), dtype)
    if key not in _LUTS:
        codes = torch.arange(256)
        table = torch.tensor(FP4_VALUES, dtype=torch.float32)
        _LUTS[key] = torch.stack([table[codes & 15], table[codes >> 4]], -1).to(device, dtype)
    return _LUTS[key]


def dequantize_lut(blocks: torch.Tensor, scales: torch.Tensor,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Same result as `mxfp4.dequantize` (exact: E2M1 times a power of two), one gather per byte.

    blocks [..., G, 16] uint8, scales [..., G] uint8 -> [..., G * 32] in `dtype`.
    """
    values = byte_lut(blocks.device, torch.float32)[blocks.long()]  # [..., G, 16, 2]
    exp = (scales.to(torch.int32) - SCALE_BIAS).to(torch.float32)
    scale = torch.ldexp(torch.ones_like(exp), exp)  # [..., G] float32
    out = values.view(*blocks.shape[:-1], BLOCK) * scale.unsqueeze(-1)
    return out.reshape(*blocks.shape[:-2], -1).to(dtype)


def available_bytes() -> int:
    """Memory the OS reports as available (MemAvailable), or 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def dense_experts_fit(total_bytes: int) -> bool:
    """Whether a dequantized copy of all experts (`total_bytes`) fits the CPU budget."""
    cap = float(os.environ.get("GPTOSS_CPU_DENSE_EXPERTS_GIB", "16")) * GIB
    return total_bytes <= min(cap, DENSE_EXPERTS_SHARE * available_bytes())


def _expert_weights(experts: ExpertWeights, e: int,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert e's two weights: the dense copy where there is one, else dequantized now."""
    if experts.w1 is not None:
        return experts.w1[e], experts.w2[e]
    return (dequantize_lut(experts.w1_blocks[e], experts.w1_scales[e], dtype),
            dequantize_lut(experts.w2_blocks[e], experts.w2_scales[e], dtype))


def _per_expert(xs: torch.Tensor, experts: ExpertWeights, counts: list[int], limit: float,
                alpha: float) -> torch.Tensor:
    """Rows `xs` sorted by expert (`counts` per expert) through their experts: one matmul pair
    per used expert."""
    ys = torch.empty(xs.shape[0], experts.w2_bias.shape[-1], dtype=xs.dtype, device=xs.device)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        w1, w2 = _expert_weights(experts, e, xs.dtype)
        rows = slice(start, start + n)
        u = linear_cpu(xs[rows], w1, experts.w1_bias[e])
        a = swiglu(u, limit, alpha)
        linear_cpu(a, w2, experts.w2_bias[e], out=ys[rows])
        start += n
    return ys


def _pair_products(x: torch.Tensor, experts: ExpertWeights, second: bool,
                   ids: torch.Tensor) -> torch.Tensor | None:
    """One projection of every pair in one C call: from the packed MXFP4 experts where they are
    kept (a quarter of the bytes), else from bf16 dense experts; None where neither applies."""
    bias = experts.w2_bias if second else experts.w1_bias
    if experts.is_mxfp4:
        blocks, scales = ((experts.w2_blocks, experts.w2_scales) if second
                          else (experts.w1_blocks, experts.w1_scales))
        return mxfp4_pairs(x, blocks, scales, bias, ids)
    weight = experts.w2 if second else experts.w1
    if weight is None or weight.dtype != torch.bfloat16:
        return None
    return bf16_pairs(x, weight, bias, ids)


def _pairs(xs: torch.Tensor, experts: ExpertWeights, ids: torch.Tensor, limit: float,
           alpha: float) -> torch.Tensor | None:
    """The same rows through the pair kernels (two C calls for all pairs, the same sums as
    `_per_expert` on the bf16 copy), or None where they do not apply (not a few float32 rows,
    or experts neither packed nor bf16)."""
    if xs.shape[0] > PAIRS_MAX or xs.dtype != torch.float32:
        return None
    u = _pair_products(xs, experts, False, ids)
    if u is None:
        return None
    return _pair_products(swiglu(u, limit, alpha), experts, True, ids)


def moe_cpu(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor,
            experts: ExpertWeights, top_k: int, swiglu_limit: float = 7.0,
            swiglu_alpha: float = 1.702) -> torch.Tensor:
    """y[t] = sum_k w[t,k] * expert_{e[t,k]}(x[t]); x [T, H] -> [T, H] in x's dtype."""
    if x.shape[0] * top_k <= PAIRS_MAX and FUSED_DECODE:
        out = moe_decode(x, router_w, router_b, experts, top_k, swiglu_limit, swiglu_alpha)
        if out is not None:
            return out
    ids, weights = route(x, router_w, router_b, top_k)
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    tok = order // top_k
    xs = x[tok]
    ys = _pairs(xs, experts, flat[order], swiglu_limit, swiglu_alpha)
    if ys is None:
        counts = torch.bincount(flat, minlength=experts.num_experts).tolist()
        ys = _per_expert(xs, experts, counts, swiglu_limit, swiglu_alpha)
    ys = ys.float() * weights.reshape(-1)[order].unsqueeze(-1)
    out = torch.zeros(x.shape[0], ys.shape[1], dtype=torch.float32, device=x.device)
    return out.index_add_(0, tok, ys).to(x.dtype)


def keep_dense_experts(total_bytes: int) -> bool:
    """Whether a model keeps its experts dequantized (`total_bytes` for all layers); the
    decision, made once per model, is logged (it is a kernel choice)."""
    fit = dense_experts_fit(total_bytes)
    mib = total_bytes / (1 << 20)
    if fit:
        log.info("CPU MoE: experts kept dequantized (%.0f MiB for all layers)", mib)
    else:
        log.info("CPU MoE: experts stay packed MXFP4 (a dequantized copy needs %.0f MiB, over "
                 "budget); each step dequantizes only the experts it uses", mib)
    return fit
