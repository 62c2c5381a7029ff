"""Small helpers shared by the Triton kernel wrappers: dot precision, tile sizes, SM count.

Triton-free on purpose (importing it never imports triton). Knows nothing of any one kernel.
"""

from __future__ import annotations

import functools

import torch


def next_pow2(n: int) -> int:
    """Smallest power of two >= max(n, 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def dot_in_float32(t: torch.Tensor) -> bool:
    """Whether `tl.dot` operands should be float32 rather than the tensor's 16-bit dtype.

    On CUDA, bf16/fp16 operands with float32 accumulation are what the tensor cores want. On
    the CPU the Triton interpreter computes 16-bit dot products wrongly, so every operand is
    float32 there (and float32 inputs stay float32 everywhere).
    """
    return t.device.type != "cuda" or t.dtype == torch.float32


@functools.cache
def sm_count(device_index: int) -> int:
    """Streaming multiprocessors of a CUDA device (1 elsewhere, so heuristics stay small)."""
    if not torch.cuda.is_available():
        return 1
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def device_sms(t: torch.Tensor) -> int:
    return sm_count(t.device.index or 0) if t.device.type == "cuda" else 1
