"""RMSNorm with the fused residual add on CPU for the few rows of a decode step, in C.

Same signature and maths as `kernels/norm.py: rms_norm_ref` (its oracle): h = x + residual,
y = h / sqrt(mean(h^2) + eps) * weight, float32 statistics. A batch-1 step on the layer path
runs 13 of these; in torch each is ~8 small operators, here one ctypes call. The sum of
squares runs in an 8-lane accumulator, so results match the reference to float32 rounding,
not bit for bit. Rows above `C_ROWS`, other dtypes, or no C kernel: the reference.

Knows nothing of layers or weights loading.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from gptoss_serve.kernels import cpu_c
from gptoss_serve.kernels.norm import rms_norm_ref

C_ROWS = 8  # rows up to which the C function runs (decode steps); more: the torch reference


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str]:
    """(the C library of csrc/rms_norm.c, how) or (None, why not); see `cpu_c.load`."""
    return cpu_c.load("rms_norm.c")


def rms_norm_cpu(x: torch.Tensor, weight: torch.Tensor, eps: float,
                 residual: torch.Tensor | None = None
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`rms_norm_ref`: y, or (y, x + residual) with `residual`; C for a few float32 rows."""
    lib = _load()[0]
    operands = (x, weight) if residual is None else (x, weight, residual)
    if (lib is None or x.dim() != 2 or x.shape[0] > C_ROWS or x.shape[1] % 8
            or any(t.dtype != torch.float32 or t.device.type != "cpu" for t in operands)
            or (residual is not None and residual.shape != x.shape)):
        return rms_norm_ref(x, weight, eps, residual)
    x, weight = x.contiguous(), weight.contiguous()
    y = torch.empty_like(x)
    if residual is None:
        lib.rms_norm(x.data_ptr(), None, weight.data_ptr(), y.data_ptr(), None, *x.shape, eps)
        return y
    residual, h = residual.contiguous(), torch.empty_like(x)
    lib.rms_norm(x.data_ptr(), residual.data_ptr(), weight.data_ptr(), y.data_ptr(),
                 h.data_ptr(), *x.shape, eps)
    return y, h
