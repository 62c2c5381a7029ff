"""CPU MoE (tokens grouped per expert, dense or packed experts) and the byte-table MXFP4
dequantizer against the references `moe_ref` and `mxfp4.dequantize`."""

from __future__ import annotations

import pytest
import torch

from gptoss_serve.formats.mxfp4 import dequantize
from gptoss_serve.kernels.moe import ExpertWeights, moe_ref
from gptoss_serve.kernels.moe_cpu import dense_experts_fit, dequantize_lut, moe_cpu

E, H, INTER = 7, 96, 64


def _experts(g: torch.Generator, dense: bool) -> ExpertWeights:
    def packed(rows, cols):
        return (torch.randint(0, 256, (E, rows, cols // 32, 16), generator=g, dtype=torch.uint8),
                torch.randint(121, 127, (E, rows, cols // 32), generator=g, dtype=torch.uint8))
    (b1k, b1s), (b2k, b2s) = packed(2 * INTER, H), packed(H, INTER)
    biases = dict(w1_bias=torch.randn(E, 2 * INTER, generator=g),
                  w2_bias=torch.randn(E, H, generator=g) * 0.1)
    if dense:
        return ExpertWeights(w1=dequantize(b1k, b1s, torch.float32),
                             w2=dequantize(b2k, b2s, torch.float32), **biases)
    return ExpertWeights(w1_blocks=b1k, w1_scales=b1s, w2_blocks=b2k, w2_scales=b2s, **biases)


@pytest.mark.parametrize("tokens,top_k,dense", [(1, 4, True), (1, 4, False), (5, 2, True),
                                                (33, 4, False), (70, 3, True), (2, 1, False)])
def test_moe_cpu_matches_reference(tokens, top_k, dense):
    g = torch.Generator().manual_seed(tokens * 10 + top_k)
    experts = _experts(g, dense)
    x = torch.randn(tokens, H, generator=g)
    rw, rb = torch.randn(E, H, generator=g), torch.randn(E, generator=g)
    want = moe_ref(x, rw, rb, experts, top_k, 7.0, 1.702)
    got = moe_cpu(x, rw, rb, experts, top_k, 7.0, 1.702)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_moe_cpu_bfloat16_close_to_reference():
    g = torch.Generator().manual_seed(3)
    experts = _experts(g, True)
    x = torch.randn(9, H, generator=g).bfloat16()
    rw, rb = torch.randn(E, H, generator=g).bfloat16(), torch.randn(E, generator=g).bfloat16()
    want = moe_ref(x, rw, rb, experts, 4)
    got = moe_cpu(x, rw, rb, experts, 4)
    assert got.dtype == torch.bfloat16
    scale = want.float().abs().max()
    assert (got.float() - want.float()).abs().max() <= 0.03 * scale


def test_dequantize_lut_is_exact():
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 5, 4, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(0, 255, (3, 5, 4), generator=g, dtype=torch.uint8)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(dequantize_lut(blocks, scales, dtype), dequantize(blocks, scales, dtype))


def test_dense_experts_budget(monkeypatch):
    monkeypatch.setenv("GPTOSS_CPU_DENSE_EXPERTS_GIB", "1")
    assert dense_experts_fit(100 << 20)
    assert not dense_experts_fit(2 << 30)
    monkeypatch.setenv("GPTOSS_CPU_DENSE_EXPERTS_GIB", "0")
    assert not dense_experts_fit(1)


@pytest.mark.parametrize("tokens", [1, 7, 40])  # 40 * top-2 / 7 experts: some above 8 rows
def test_moe_cpu_with_bf16_dense_experts(tokens, monkeypatch):
    """The CPU set's experts: MXFP4 values held exactly in bf16, float32 accumulation (the bf16
    kernel for few rows per expert, an upcast matmul for many)."""
    from gptoss_serve.kernels import logits_cpu

    monkeypatch.setattr(logits_cpu, "BF16_KERNEL_ROWS", 8)
    g = torch.Generator().manual_seed(tokens)
    packed = _experts(g, dense=False)
    w1 = dequantize(packed.w1_blocks, packed.w1_scales, torch.bfloat16)
    w2 = dequantize(packed.w2_blocks, packed.w2_scales, torch.bfloat16)
    assert torch.equal(w1.float(), dequantize(packed.w1_blocks, packed.w1_scales, torch.float32))
    dense = ExpertWeights(w1=w1, w2=w2, w1_bias=packed.w1_bias, w2_bias=packed.w2_bias)
    x = torch.randn(tokens, H, generator=g)
    rw, rb = torch.randn(E, H, generator=g), torch.randn(E, generator=g)
    want = moe_ref(x, rw, rb, packed, 2, 7.0, 1.702)
    scale = want.abs().max().item()  # float32 sums in another order: relative to the output
    torch.testing.assert_close(moe_cpu(x, rw, rb, dense, 2, 7.0, 1.702), want,
                               atol=2e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("tokens,top_k", [(1, 4), (3, 2), (4, 4)])
def test_pair_kernel_path_equals_per_expert_path(tokens, top_k, monkeypatch):
    """A decode step's few pairs go through one pair-kernel call per projection: the same sums
    as the per-expert loop, so the same output bit for bit (greedy outputs cannot change)."""
    from gptoss_serve.kernels import moe_cpu as mod

    g = torch.Generator().manual_seed(40 + tokens)
    packed = _experts(g, dense=False)
    dense = ExpertWeights(w1=dequantize(packed.w1_blocks, packed.w1_scales, torch.bfloat16),
                          w2=dequantize(packed.w2_blocks, packed.w2_scales, torch.bfloat16),
                          w1_bias=packed.w1_bias, w2_bias=packed.w2_bias)
    x = torch.randn(tokens, H, generator=g)
    rw, rb = torch.randn(E, H, generator=g), torch.randn(E, generator=g)
    calls, real = [], mod.bf16_pairs
    monkeypatch.setattr(mod, "bf16_pairs", lambda *a: calls.append(1) or real(*a))
    fast = moe_cpu(x, rw, rb, dense, top_k, 7.0, 1.702)
    if not calls:
        pytest.skip("no C kernel here")
    monkeypatch.setattr(mod, "PAIRS_MAX", 0)
    assert torch.equal(fast, moe_cpu(x, rw, rb, dense, top_k, 7.0, 1.702))
    want = moe_ref(x, rw, rb, packed, top_k, 7.0, 1.702)
    torch.testing.assert_close(fast, want, atol=2e-5 * want.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("tokens,fused", [(1, False), (4, False), (1, True), (40, True)])
def test_packed_copy_beside_dense_experts(tokens, fused, monkeypatch):
    """The CPU set keeps the packed experts beside the bf16 copy: a decode step reads the packed
    ones (the fused layer `moe_decode`, or else `mxfp4_pairs`: then bit for bit the output of
    the bf16 copy alone), larger steps the copy; all close to `moe_ref`."""
    from gptoss_serve.kernels import moe_cpu as mod

    monkeypatch.setattr(mod, "FUSED_DECODE", fused)
    g = torch.Generator().manual_seed(70 + tokens)
    packed = _experts(g, dense=False)
    w1 = dequantize(packed.w1_blocks, packed.w1_scales, torch.bfloat16)
    w2 = dequantize(packed.w2_blocks, packed.w2_scales, torch.bfloat16)
    dense = ExpertWeights(w1=w1, w2=w2, w1_bias=packed.w1_bias, w2_bias=packed.w2_bias)
    both = ExpertWeights(w1=w1, w2=w2, w1_bias=packed.w1_bias, w2_bias=packed.w2_bias,
                         w1_blocks=packed.w1_blocks, w1_scales=packed.w1_scales,
                         w2_blocks=packed.w2_blocks, w2_scales=packed.w2_scales)
    x = torch.randn(tokens, H, generator=g)
    rw, rb = torch.randn(E, H, generator=g), torch.randn(E, generator=g)
    calls = []
    for name in ("mxfp4_pairs", "moe_decode"):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, n=name, f=real: calls.append(n) or f(*a))
    got = moe_cpu(x, rw, rb, both, 4, 7.0, 1.702)
    if tokens * 4 > mod.PAIRS_MAX:
        assert not calls
    elif fused:
        assert calls == ["moe_decode"]
    else:
        assert calls == ["mxfp4_pairs"] * 2
    if not fused or tokens * 4 > mod.PAIRS_MAX:
        assert torch.equal(got, moe_cpu(x, rw, rb, dense, 4, 7.0, 1.702))
    want = moe_ref(x, rw, rb, packed, 4, 7.0, 1.702)
    torch.testing.assert_close(got, want, atol=2e-5 * want.abs().max().item(), rtol=1e-4)
