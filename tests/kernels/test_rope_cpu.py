"""The C RoPE rotation of decode rows against `apply_rotary`, bit for bit (strided rows as the
model passes them: the q and k heads of a qkv row)."""

from __future__ import annotations

import pytest
import torch

from gptoss_serve.kernels import rope_cpu
from gptoss_serve.kernels.rope import apply_rotary


@pytest.mark.parametrize("t,heads,d", [(1, 12, 64), (3, 5, 8), (rope_cpu.C_ROWS, 2, 128)])
def test_rotary_cpu_equals_apply_rotary(t, heads, d):
    if rope_cpu._load()[0] is None:
        pytest.skip("no C kernel here")
    g = torch.Generator().manual_seed(t * heads)
    qkv = torch.randn(t, (heads + 3) * d, generator=g) * 4
    x = qkv[:, :heads * d].view(t, heads, d)  # rows (heads + 3) * d apart
    angle = torch.rand(t, d // 2, generator=g) * 100
    cos, sin = angle.cos(), angle.sin()
    got = rope_cpu.rotary_cpu(x, cos, sin)
    assert got.shape == (t, heads, d)
    assert torch.equal(got, apply_rotary(x, cos, sin))


def test_more_rows_or_other_dtypes_are_the_reference():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(rope_cpu.C_ROWS + 1, 2, 16, generator=g)
    cos, sin = torch.rand(x.shape[0], 8, generator=g), torch.rand(x.shape[0], 8, generator=g)
    assert torch.equal(rope_cpu.rotary_cpu(x, cos, sin), apply_rotary(x, cos, sin))
    xb = x[:2].bfloat16()
    got = rope_cpu.rotary_cpu(xb, cos[:2].bfloat16(), sin[:2].bfloat16())
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, apply_rotary(xb, cos[:2].bfloat16(), sin[:2].bfloat16()))
