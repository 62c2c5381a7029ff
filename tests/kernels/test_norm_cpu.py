"""The C RMSNorm (+ residual) of decode rows against `rms_norm_ref` and float64."""

from __future__ import annotations

import pytest
import torch

from gptoss_serve.kernels import norm_cpu
from gptoss_serve.kernels.norm import rms_norm_ref


def _exact(h: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    hd = h.double()
    return (hd * torch.rsqrt(hd.pow(2).mean(-1, keepdim=True) + eps) * w.double()).float()


@pytest.mark.parametrize("rows,dim", [(1, 512), (3, 72), (8, 2880), (norm_cpu.C_ROWS + 2, 64)])
def test_rms_norm_cpu_matches_reference(rows, dim):
    if norm_cpu._load()[0] is None:
        pytest.skip("no C kernel here")
    g = torch.Generator().manual_seed(rows * dim)
    x, res = torch.randn(rows, dim, generator=g) * 3, torch.randn(rows, dim, generator=g)
    w = torch.rand(dim, generator=g) + 0.5
    y = norm_cpu.rms_norm_cpu(x, w, 1e-5)
    torch.testing.assert_close(y, rms_norm_ref(x, w, 1e-5), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, _exact(x, w, 1e-5), atol=1e-5, rtol=1e-5)
    y, h = norm_cpu.rms_norm_cpu(x, w, 1e-5, residual=res)
    want_y, want_h = rms_norm_ref(x, w, 1e-5, residual=res)
    assert torch.equal(h, want_h)  # one float32 add: exact
    torch.testing.assert_close(y, want_y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, _exact(x + res, w, 1e-5), atol=1e-5, rtol=1e-5)


def test_other_dtypes_and_shapes_are_the_reference():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 12, generator=g), torch.rand(12, generator=g)  # 12 % 8: reference
    assert torch.equal(norm_cpu.rms_norm_cpu(x, w, 1e-5), rms_norm_ref(x, w, 1e-5))
    xb, res = torch.randn(2, 16, generator=g).bfloat16(), torch.randn(2, 16).bfloat16()
    y, h = norm_cpu.rms_norm_cpu(xb, w[:8].repeat(2), 1e-5, residual=res)
    want_y, want_h = rms_norm_ref(xb, w[:8].repeat(2), 1e-5, residual=res)
    assert y.dtype == torch.bfloat16 and torch.equal(y, want_y) and torch.equal(h, want_h)
