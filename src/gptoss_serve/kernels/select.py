"""Kernel choice: which attention, MoE, norm, RoPE and logits implementations the model calls,
picked once at start-up. The single selector: the model calls a `KernelSet` and never asks
which path it runs on.

Owns the `KernelSet` contract. Each op has one set of files, its plain-torch reference (the
oracle) beside its fast versions, all with the reference's signature:

    op          reference                       CPU                       Triton (CUDA)
    attention   attention.py: paged_attention_ref attention_cpu.py      attention_triton.py
    moe         moe.py: moe_ref                 moe_cpu.py, mxfp4_cpu.py  moe_triton.py,
                                                                          moe_gemv_triton.py
    norm        norm.py: rms_norm_ref           norm_cpu.py               norm_triton.py
    rope        rope.py: apply_rotary,          rope_cpu.py               rope_triton.py
                rope_kv_write_ref
    logits      logits.py: logits_ref,          logits_cpu.py             (the reference)
                linear_ref
    greedy      (the logits' argmax)            greedy_cpu.py             -
    decode step (the layer-by-layer forward)    decode_cpu.py             -

Where the paths differ in what the model must do, not only in maths, the difference is here:
`rope_inputs` / `rope_qkv` (the fused RoPE + KV write of the Triton set reads whole cos/sin
tables and stores k and v itself) and `dense_experts` (the CPU set holds the experts
dequantized). Triton modules are imported only inside `choose_kernels`, so importing
gptoss_serve never imports triton.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gptoss_serve.errors import StartupError
from gptoss_serve.formats.rope import Rotary
from gptoss_serve.kernels.attention import paged_attention_ref
from gptoss_serve.kernels.logits import linear_ref, logits_ref
from gptoss_serve.kernels.moe import DenseExperts, moe_ref
from gptoss_serve.kernels.norm import rms_norm_ref
from gptoss_serve.kernels.rope import (
    apply_rotary,
    rope_kv_write_ref,
    rotate_qkv,
    rotate_qkv_and_write,
)

MIN_CAPABILITY = (8, 0)  # Ampere: bf16 tensor cores, what the Triton kernels are written for
PREFERENCES = ("auto", "triton", "reference")


@dataclass(frozen=True)
class KernelSet:
    attention: Callable  # same signature as paged_attention_ref
    moe: Callable  # same signature as moe_ref
    description: str  # logged at start-up: which path and why
    rms_norm: Callable = rms_norm_ref  # same signature as rms_norm_ref
    rope_kv_write: Callable = rope_kv_write_ref  # same signature as rope_kv_write_ref
    is_triton: bool = False  # the Triton set: fused RoPE + KV write (`rope_qkv`), CUDA graphs
    dense_experts: DenseExperts | None = None  # the model holds its experts dequantized so
    # (the CPU set, within a memory budget); None: as the checkpoint has them
    logits: Callable = logits_ref  # same signature as logits_ref
    unembedding_dtype: torch.dtype | None = None  # keep the unembedding in this dtype (else the
    # model's): the CPU set keeps the checkpoint's bf16 and accumulates in float32
    linear: Callable = linear_ref  # attention qkv/out projections, same signature
    rotary: Callable = apply_rotary  # RoPE of the unfused path (`rope_qkv`), same signature
    projection_dtype: torch.dtype | None = None  # keep those weights in this dtype (else the
    # model's): the CPU set keeps the checkpoint's bf16, read by `linear`
    argmax_index: Callable | None = None  # unembedding -> a `step.ArgmaxFinder` whose
    # .argmax(h) is logits(h, unembedding).argmax(-1) exactly, or None; greedy steps then skip
    # the logits
    decode_step: Callable | None = None  # (StepWeights, KVCache) -> a `step.DecodeStepKernel`:
    # a whole decode step of a few one-token sequences in one call, or None: layer by layer

    def rope_inputs(self, rotary: Rotary, positions: torch.Tensor, dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (cos, sin) one step's `rope_qkv` calls read: per token [T, D/2] for the unfused
        path; for the fused RoPE + KV write the whole [max_position_embeddings, D/2] tables,
        built once (the same values: row p is `cos_sin(p)`), indexed by position inside the
        kernel, so a decode step computes no angles and can be graph-captured."""
        return rotary.tables(dtype) if self.is_triton else rotary.cos_sin(positions, dtype)

    def rope_qkv(self, qkv: torch.Tensor, n_q: int, n_kv: int, head_dim: int,
                 positions: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                 k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """A layer's fused qkv projection [T, (n_q + 2 n_kv) D] -> (q, k, v) for `attention`,
        q and k rotated (`rope` from `rope_inputs`). The fused set stores k and v in the cache
        here and gives k = v = None (`rope.rotate_qkv_and_write`); the others leave the write
        to attention (`rope.rotate_qkv`)."""
        if self.is_triton:
            return rotate_qkv_and_write(qkv, n_q, n_kv, head_dim, positions, *rope, k_cache,
                                        v_cache, slot_mapping, self.rope_kv_write)
        return rotate_qkv(qkv, n_q, n_kv, head_dim, *rope, self.rotary)


def reference_kernels(reason: str = "") -> KernelSet:
    why = f": {reason}" if reason else ""
    return KernelSet(paged_attention_ref, moe_ref,
                     f"plain-torch reference attention, MoE, RMSNorm and RoPE{why}")


def triton_kernels(why: str) -> KernelSet:
    """The Triton set; raises ImportError when triton (or a kernel module) cannot be imported."""
    from gptoss_serve.kernels.attention_triton import paged_attention_triton
    from gptoss_serve.kernels.moe_triton import moe_triton
    from gptoss_serve.kernels.norm_triton import rms_norm_triton
    from gptoss_serve.kernels.rope_triton import rope_kv_write_triton

    return KernelSet(paged_attention_triton, moe_triton,
                     f"Triton paged attention, MXFP4 MoE, RMSNorm and RoPE+KV write{why}",
                     rms_norm_triton, rope_kv_write_triton, is_triton=True)


def cpu_kernels(why: str) -> KernelSet:
    """The CPU set: batched-decode/SDPA attention, grouped MoE over experts dequantized to bf16
    (exact for MXFP4; decode steps read the packed MXFP4 copy kept beside it, one C call per
    layer), logits and attention projections from bf16 weights (the checkpoint's), RMSNorm and
    RoPE of decode rows in C; all accumulate in float32. Greedy steps find the argmax through
    an int8 screen of the unembedding (`greedy_cpu`), exactly. Decode steps of up to 4
    sequences run every layer in one C call (`decode_cpu`, the same kernels' code)."""
    from gptoss_serve.kernels.attention_cpu import paged_attention_cpu
    from gptoss_serve.kernels.decode_cpu import DecodeStep
    from gptoss_serve.kernels.greedy_cpu import ArgmaxIndex
    from gptoss_serve.kernels.logits_cpu import bf16_logits_status, linear_cpu, logits_cpu
    from gptoss_serve.kernels.moe_cpu import dequantize_lut, keep_dense_experts, moe_cpu
    from gptoss_serve.kernels.norm_cpu import rms_norm_cpu
    from gptoss_serve.kernels.rope_cpu import rotary_cpu

    return KernelSet(paged_attention_cpu, moe_cpu,
                     "CPU attention (batched decode, SDPA prefill), grouped MoE (experts "
                     "dequantized once to bf16 where memory allows), logits from the bf16 "
                     "unembedding and attention projections "
                     f"({bf16_logits_status()}), greedy steps through an exact int8 screen of "
                     f"the unembedding{why}",
                     dense_experts=DenseExperts(keep_dense_experts, torch.bfloat16, True,
                                                dequantize_lut),
                     logits=logits_cpu, unembedding_dtype=torch.bfloat16,
                     rms_norm=rms_norm_cpu, rotary=rotary_cpu,
                     linear=linear_cpu, projection_dtype=torch.bfloat16,
                     argmax_index=ArgmaxIndex.build, decode_step=DecodeStep)


def _check_cuda(device: torch.device, dtype: torch.dtype) -> str:
    """Names the GPU; raises StartupError for a GPU or dtype the Triton kernels cannot serve."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    name = torch.cuda.get_device_name(index)
    cap = torch.cuda.get_device_capability(index)
    if cap < MIN_CAPABILITY:
        raise StartupError(
            f"GPU {index} ({name}) has compute capability {cap[0]}.{cap[1]}; gptoss-serve needs "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (Ampere, Ada, Hopper, Blackwell)")
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise StartupError(f"dtype {dtype} is not supported on CUDA (use bfloat16)")
    return f"{name}, sm_{cap[0]}{cap[1]}"


def choose_kernels(device: torch.device | str, dtype: torch.dtype,
                   prefer: str = "auto") -> KernelSet:
    """Triton on CUDA (capability >= 8.0, triton importable), the CPU set on CPU, else the
    references.

    `prefer`: "auto" (the rule above), "triton" (a StartupError where Triton cannot run), or
    "reference" (debugging). The returned description says which path and why.
    """
    if prefer not in PREFERENCES:
        raise StartupError(f"unknown kernel preference {prefer!r}; one of {PREFERENCES}")
    device = torch.device(device)
    if prefer == "reference":
        return reference_kernels("requested")
    if device.type != "cuda":
        if prefer == "triton":
            raise StartupError(f"Triton kernels need a CUDA device, got {device}")
        return cpu_kernels(f": device is {device.type}")
    gpu = _check_cuda(device, dtype)
    try:
        return triton_kernels(f" on {gpu}")
    except ImportError as exc:
        if prefer == "triton":
            raise StartupError(f"Triton kernels requested but triton cannot be imported: "
                               f"{exc}; install the 'gpu' extra") from exc
        return reference_kernels(f"triton cannot be imported ({exc}); install the 'gpu' extra "
                                 f"for the fast path on {gpu}")
