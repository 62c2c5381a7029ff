"""RMSNorm (+ residual add) as one Triton kernel: one program per row, float32 statistics.

Same signature and results as `kernels/norm.py: rms_norm_ref`. Imports triton at module level:
only `kernels/select.py` (lazily) and tests import this file. Knows nothing of the model.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gptoss_serve.kernels.triton_util import next_pow2


@triton.jit
def _rms_norm_kernel(x_ptr, r_ptr, w_ptr, y_ptr, h_ptr, stride_x, stride_r, stride_y, stride_h,
                     n_cols, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    h = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        h += tl.load(r_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        # the residual stream keeps the activation dtype: round once, norm the rounded value
        h_act = h.to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + row * stride_h + cols, h_act, mask=mask)
        h = h_act.to(tl.float32)
    inv = tl.rsqrt(tl.sum(h * h, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_y + cols, (h * inv * w).to(y_ptr.dtype.element_ty), mask=mask)


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float,
                    residual: torch.Tensor | None = None
                    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """See `rms_norm_ref`. x (and residual) [..., H] with a contiguous last dim."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    r2 = x2 if residual is None else residual.reshape(-1, shape[-1])
    h = y if residual is None else torch.empty_like(y)
    if x2.shape[0] > 0:
        block = next_pow2(shape[-1])
        _rms_norm_kernel[(x2.shape[0],)](
            x2, r2, weight, y, h, x2.stride(0), r2.stride(0), y.stride(0), h.stride(0),
            shape[-1], eps, HAS_RES=residual is not None, BLOCK=block,
            num_warps=min(16, max(1, block // 256)))
    if residual is None:
        return y.view(shape)
    return y.view(shape), h.view(shape)
