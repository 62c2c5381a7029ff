"""The packed-MXFP4 decode kernels on CPU: the pair products against the bf16 copy's kernel
(bit for bit) and float64, the fused MoE layer against `moe_ref` and across thread counts."""

from __future__ import annotations

import pytest
import torch

from gptoss_serve.formats.mxfp4 import dequantize
from gptoss_serve.kernels import logits_cpu as lc
from gptoss_serve.kernels import mxfp4_cpu as mc
from gptoss_serve.kernels.moe import ExpertWeights, moe_ref


@pytest.fixture(params=[1, 2])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("pairs,n,h,scale_range", [
    (4, 1024, 64, (118, 130)), (3, 67, 96, (0, 8)), (1, 1, 32, (120, 127)),
    (16, 130, 160, (90, 160))])
def test_mxfp4_pairs_equals_bf16_pairs_on_the_dequantized_copy(threads, pairs, n, h,
                                                              scale_range):
    """Decoding the packed experts in the kernel gives the very sums of the bf16 copy that
    `mxfp4.dequantize` makes (every code, odd row counts, subnormal scales), bit for bit."""
    g = torch.Generator().manual_seed(pairs * n + h)
    experts = 5
    blocks = torch.randint(0, 256, (experts, n, h // 32, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(*scale_range, (experts, n, h // 32), generator=g, dtype=torch.uint8)
    bias = torch.randn(experts, n, generator=g)
    x = torch.randn(pairs, h, generator=g)
    ids = torch.randint(0, experts, (pairs,), generator=g)
    got = mc.mxfp4_pairs(x, blocks, scales, bias, ids)
    if got is None:
        pytest.skip("no C kernel here")
    dense = dequantize(blocks, scales, torch.bfloat16)
    assert torch.equal(dense.float(), dequantize(blocks, scales, torch.float32))  # exact copy
    assert torch.equal(got, lc.bf16_pairs(x, dense, bias, ids))
    exact = torch.einsum("ph,pnh->pn", x.double(), dense[ids].double()) + bias[ids].double()
    torch.testing.assert_close(got, exact.float(), atol=1e-5 * exact.abs().max().item(),
                               rtol=1e-5)


def test_mxfp4_pairs_declines_what_it_cannot_run():
    if mc._load()[0] is None:
        pytest.skip("no C kernel here: everything declines")
    blocks = torch.zeros(2, 8, 2, 16, dtype=torch.uint8)
    scales, bias = torch.zeros(2, 8, 2, dtype=torch.uint8), torch.zeros(2, 8)
    ids = torch.zeros(1, dtype=torch.int64)
    assert mc.mxfp4_pairs(torch.zeros(1, 64, dtype=torch.bfloat16), blocks, scales, bias,
                          ids) is None
    assert mc.mxfp4_pairs(torch.zeros(1, 32), blocks, scales, bias, ids) is None
    assert mc.mxfp4_pairs(torch.zeros(1, 64), blocks, scales[:, :, :1], bias, ids) is None
    assert mc.mxfp4_pairs(torch.zeros(1, 64), blocks, scales, bias.double(), ids) is None



def _packed(g: torch.Generator, e: int, h: int, inter: int) -> ExpertWeights:
    def proj(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randint(0, 256, (e, rows, cols // 32, 16), generator=g, dtype=torch.uint8),
                torch.randint(119, 127, (e, rows, cols // 32), generator=g, dtype=torch.uint8))
    (b1, s1), (b2, s2) = proj(2 * inter, h), proj(h, inter)
    return ExpertWeights(w1_blocks=b1, w1_scales=s1, w2_blocks=b2, w2_scales=s2,
                         w1_bias=torch.randn(e, 2 * inter, generator=g),
                         w2_bias=torch.randn(e, h, generator=g) * 0.1)


@pytest.mark.parametrize("tokens,top_k,e,h,inter", [(1, 4, 16, 128, 64), (4, 4, 8, 64, 96),
                                                    (3, 2, 5, 96, 32), (1, 1, 3, 32, 160)])
def test_moe_decode_matches_reference(threads, tokens, top_k, e, h, inter):
    """The whole layer in one C call: the same experts and weights as `moe_ref` (float32
    rounding apart), and limit/alpha honoured (a large activation clamps)."""
    g = torch.Generator().manual_seed(tokens * 100 + e)
    experts = _packed(g, e, h, inter)
    x = torch.randn(tokens, h, generator=g) * 2
    rw, rb = torch.randn(e, h, generator=g), torch.randn(e, generator=g)
    got = mc.moe_decode(x, rw, rb, experts, top_k, 3.0, 1.5)
    if got is None:
        pytest.skip("no C kernel here")
    want = moe_ref(x, rw, rb, experts, top_k, 3.0, 1.5)
    torch.testing.assert_close(got, want, atol=2e-5 * want.abs().max().item(), rtol=1e-4)


def test_moe_decode_same_bits_at_any_thread_count():
    g = torch.Generator().manual_seed(5)
    experts = _packed(g, 8, 96, 64)
    x, rw, rb = torch.randn(2, 96, generator=g), torch.randn(8, 96, generator=g), torch.randn(8)
    before, outs = torch.get_num_threads(), []
    for n in (1, 2):
        torch.set_num_threads(n)
        outs.append(mc.moe_decode(x, rw, rb, experts, 4, 7.0, 1.702))
    torch.set_num_threads(before)
    if outs[0] is None:
        pytest.skip("no C kernel here")
    assert torch.equal(outs[0], outs[1])


def test_moe_decode_declines_what_it_cannot_run():
    if mc._load()[0] is None:
        pytest.skip("no C kernel here: everything declines")
    g = torch.Generator().manual_seed(6)
    experts = _packed(g, 4, 64, 32)
    x, rw, rb = torch.randn(1, 64), torch.randn(4, 64), torch.randn(4)
    dense = ExpertWeights(w1=torch.zeros(4, 64, 64), w2=torch.zeros(4, 64, 32),
                          w1_bias=experts.w1_bias, w2_bias=experts.w2_bias)
    assert mc.moe_decode(x, rw, rb, dense, 2, 7.0, 1.7) is None
    assert mc.moe_decode(x.bfloat16(), rw, rb, experts, 2, 7.0, 1.7) is None
    assert mc.moe_decode(x, rw.bfloat16(), rb, experts, 2, 7.0, 1.7) is None
    assert mc.moe_decode(x, rw, rb, experts, 5, 7.0, 1.7) is None
