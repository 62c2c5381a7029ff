"""Triton RMSNorm (+ fused residual add) against rms_norm_ref and the model's RMSNorm module.

Interpreter on CPU, compiled on CUDA. Fresh random inputs each run, odd widths, one row, many
rows; the outputs are checked to be fully written (no NaN) and to match within rounding.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from gptoss_serve.kernels.norm import rms_norm_ref  # noqa: E402
from gptoss_serve.kernels.norm_triton import rms_norm_triton  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("rows,width", [(1, 8), (5, 37), (3, 2880)])
def test_plain_norm_matches_reference(rows, width):
    x = torch.randn(rows, width, device=DEV) * 3 + 1
    w = torch.randn(width, device=DEV)
    got = rms_norm_triton(x, w, 1e-5)
    assert not torch.isnan(got).any()
    torch.testing.assert_close(got, rms_norm_ref(x, w, 1e-5), atol=1e-5, rtol=1e-5)


def test_matches_model_rmsnorm_module():
    gpt_oss = pytest.importorskip("gptoss_serve.model.gpt_oss")
    norm = gpt_oss.RMSNorm(48, 1e-5).to(DEV)
    with torch.no_grad():
        norm.scale.normal_()
    x = torch.randn(2, 3, 48, device=DEV)
    torch.testing.assert_close(rms_norm_triton(x, norm.scale, norm.eps), norm(x),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_residual_add(dtype):
    x = torch.randn(7, 40, device=DEV).to(dtype)
    res = torch.randn(7, 40, device=DEV).to(dtype)
    w = torch.rand(40, device=DEV) + 0.5
    y, h = rms_norm_triton(x, w, 1e-5, residual=res)
    y_ref, h_ref = rms_norm_ref(x, w, 1e-5, residual=res)
    # the interpreter rounds float32 -> bf16 towards zero, torch to nearest: one ulp apart
    tol = 1e-5 if dtype == torch.float32 else 1.6e-2
    for got, ref in ((y, y_ref), (h, h_ref)):
        assert got.dtype == dtype and not torch.isnan(got).any()
        torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol)


def test_zero_rows():
    x = torch.randn(0, 16, device=DEV)
    assert rms_norm_triton(x, torch.ones(16, device=DEV), 1e-5).shape == (0, 16)
