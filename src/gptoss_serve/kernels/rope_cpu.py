"""RoPE rotation of a decode step's q and k heads on CPU in one C call.

Same signature and values as `kernels/rope.py: apply_rotary` (its oracle), bit for bit: each
output is the same two float32 products and one sum or difference, each rounded, as in torch
(the C source turns off the compiler's contraction into FMAs). In torch the rotation of a step
is ~8 small operators per layer; here one ctypes call. Rows above `C_ROWS`, other dtypes, or no
C kernel: the reference.

Knows nothing of layers or positions: cos and sin come per token from the caller.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from gptoss_serve.kernels import cpu_c
from gptoss_serve.kernels.rope import apply_rotary

C_ROWS = 8  # token rows up to which the C function runs (decode steps); more: the reference


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(the C library of csrc/rotary.c, how) or (None, why not); see `cpu_c.load`."""
    return cpu_c.load("rotary.c")


def rotary_cpu(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rotary`: x [T, H, D] (rows may be strided, heads contiguous), cos/sin [T, D/2]."""
    lib = _load()[0]
    t, h, d = x.shape
    if (lib is None or t > C_ROWS or d % 2 or x.stride(2) != 1 or x.stride(1) != d
            or any(v.dtype != torch.float32 or v.device.type != "cpu" for v in (x, cos, sin))
            or cos.shape != (t, d // 2) or sin.shape != (t, d // 2)):
        return apply_rotary(x, cos, sin)
    cos, sin = cos.contiguous(), sin.contiguous()
    out = torch.empty(t, h, d, dtype=torch.float32)
    lib.rotary(x.data_ptr(), x.stride(0), cos.data_ptr(), sin.data_ptr(), out.data_ptr(), t, h,
               d)
    return out
