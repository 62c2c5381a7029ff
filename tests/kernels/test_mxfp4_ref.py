"""MXFP4 pack, unpack, quantize, dequantize: docs/model-facts.md §3.3, transformers' dequantizer."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.mxfp4 import convert_moe_packed_tensors

from gptoss_serve.formats.mxfp4 import FP4_VALUES, dequantize, pack_codes, quantize, unpack_codes


def test_worked_example_of_the_facts():
    blocks = torch.zeros(1, 2, 16, dtype=torch.uint8)
    blocks[0, 0, :3] = torch.tensor([0x72, 0xB3, 0x00], dtype=torch.uint8)
    blocks[0, 1, 0] = 0xFF
    scales = torch.tensor([[125, 130]], dtype=torch.uint8)
    w = dequantize(blocks, scales, torch.float32)[0]
    assert w.shape == (64,)
    assert w[:6].tolist() == [0.25, 1.5, 0.375, -0.375, 0.0, 0.0]
    assert w[32:34].tolist() == [-48.0, -48.0]


def test_dequantize_matches_transformers():
    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 10, 4, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(110, 140, (3, 10, 4), generator=g, dtype=torch.uint8)
    theirs = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # [E, in, out]
    ours = dequantize(blocks, scales, torch.float32)  # [E, out, in]
    assert torch.equal(ours, theirs.transpose(1, 2))
    assert torch.equal(dequantize(blocks, scales, torch.bfloat16).float(), ours)  # exact in bf16


def test_pack_unpack_round_trip_low_nibble_first():
    codes = torch.randint(0, 16, (5, 3, 32), dtype=torch.uint8)
    packed = pack_codes(codes)
    assert packed.shape == (5, 3, 16)
    assert torch.equal(packed[..., 0] & 0x0F, codes[..., 0])
    assert torch.equal(packed[..., 0] >> 4, codes[..., 1])
    assert torch.equal(unpack_codes(packed), codes)


def _representable(shape, g):
    """Random blocks of E2M1 values times one power of two per block."""
    codes = torch.randint(0, 16, shape, generator=g)
    values = torch.tensor(FP4_VALUES)[codes]
    exps = torch.randint(-20, 20, shape[:-1] + (shape[-1] // 32, 1), generator=g)
    return (values.view(*shape[:-1], -1, 32) * torch.exp2(exps.float())).view(shape)


def test_quantize_round_trip_exact_for_representable_values():
    w = _representable((8, 128), torch.Generator().manual_seed(1))
    blocks, scales = quantize(w)
    assert torch.equal(dequantize(blocks, scales, torch.float32), w)
    # quantizing the dequantized values again gives the same values (codes may differ)
    again = dequantize(*quantize(dequantize(blocks, scales, torch.float32)), torch.float32)
    assert torch.equal(again, w)


def _brute_force(x: torch.Tensor) -> torch.Tensor:
    """Independent nearest-value rounding: smallest 2^e with max|x| <= 6*2^e, ties to even code."""
    out = torch.empty_like(x)
    table = torch.tensor(FP4_VALUES[:8], dtype=torch.float64)
    for i, block in enumerate(x.view(-1, 32).double()):
        amax = block.abs().max().item()
        e = -127
        while 6.0 * 2.0**e < amax:
            e += 1
        scaled = block.abs() / 2.0**e
        dist = (scaled[:, None] - table[None, :]).abs()
        best = dist.min(dim=1, keepdim=True).values
        tie_even = torch.where(dist == best, torch.arange(8) % 2, 9).argmin(dim=1)  # even first
        out.view(-1, 32)[i] = (table[tie_even] * 2.0**e * block.sign()).float()
    return out


def test_quantize_random_matrix_is_nearest_rounding():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(16, 256, generator=g) * torch.exp2(torch.randint(-8, 8, (16, 1), generator=g))
    deq = dequantize(*quantize(w), torch.float32)
    assert torch.equal(deq, _brute_force(w))
    # error bound of E2M1: a quarter of the block scale below 2, an eighth of |x| above
    scale = torch.exp2(torch.ceil(torch.log2(w.view(16, -1, 32).abs().amax(-1) / 6)))
    err = (deq - w).abs().view(16, -1, 32)
    bound = torch.maximum(0.25 * scale.unsqueeze(-1), w.abs().view(16, -1, 32) / 4)
    assert bool((err <= bound + 1e-12).all())


@pytest.mark.parametrize("value,expected", [(1.25, 1.0), (1.75, 2.0), (2.5, 2.0), (3.5, 4.0),
                                            (5.0, 4.0), (0.25, 0.0), (-0.75, -1.0)])
def test_quantize_ties_go_to_even_code(value, expected):
    w = torch.zeros(32)
    w[0], w[1] = value, 6.0  # 6.0 pins the block scale to 1
    assert dequantize(*quantize(w), torch.float32)[0].item() == expected


def test_quantize_rejects_bad_width():
    with pytest.raises(ValueError):
        quantize(torch.zeros(4, 33))
