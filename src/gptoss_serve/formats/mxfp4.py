"""MXFP4 (OCP microscaling FP4): E2M1 values, low nibble first, E8M0 scales with bias 127,
blocks of 32 along the input (last) dimension. Pack, unpack, quantize, dequantize.

Layouts (docs/model-facts.md §3.3): blocks [..., G, 16] uint8 and scales [..., G] uint8 hold a
weight [..., G * 32]. Owns the number format only; knows nothing of checkpoints or experts.

Follows openai/gpt-oss `gpt_oss/torch/weights.py: Checkpoint._get_mxfp4_tensor` and
transformers' `integrations/mxfp4.py: convert_moe_packed_tensors`.
"""

from __future__ import annotations

import torch

BLOCK = 32
BYTES_PER_BLOCK = BLOCK // 2
SCALE_BIAS = 127

# value of each 4-bit E2M1 code
FP4_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
              -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)


def fp4_table(device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(FP4_VALUES, dtype=dtype, device=device)


def unpack_codes(blocks: torch.Tensor) -> torch.Tensor:
    """[..., G, 16] uint8 -> [..., G, 32] uint8 codes (even element = low nibble)."""
    lo = blocks & 0x0F
    hi = blocks >> 4
    return torch.stack([lo, hi], dim=-1).reshape(*blocks.shape[:-1], BLOCK)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """[..., G, 32] codes (0..15) -> [..., G, 16] uint8."""
    pairs = codes.to(torch.uint8).reshape(*codes.shape[:-1], BYTES_PER_BLOCK, 2)
    return pairs[..., 0] | (pairs[..., 1] << 4)


def dequantize(blocks: torch.Tensor, scales: torch.Tensor,
               dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """blocks [..., G, 16] + scales [..., G] -> dense [..., G * 32] in `dtype` (exact in bf16)."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != BYTES_PER_BLOCK:
        raise ValueError(f"MXFP4 shapes do not match: blocks {tuple(blocks.shape)}, "
                         f"scales {tuple(scales.shape)}")
    values = fp4_table(blocks.device)[unpack_codes(blocks).long()]
    exp = scales.to(torch.int32) - SCALE_BIAS
    out = torch.ldexp(values, exp.unsqueeze(-1).to(torch.float32))
    return out.reshape(*blocks.shape[:-2], -1).to(dtype)


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense [..., K] (K a multiple of 32) -> (blocks [..., K/32, 16], scales [..., K/32]).

    Each block gets the smallest power-of-two scale with max|x| <= 6 * scale (E8M0 range
    permitting), then every element rounds to the nearest E2M1 value, ties to the even code
    (mantissa bit 0), as IEEE round-to-nearest-even does; magnitudes above 6 saturate.
    """
    if w.shape[-1] % BLOCK:
        raise ValueError(f"last dimension {w.shape[-1]} is not a multiple of {BLOCK}")
    x = w.float().reshape(*w.shape[:-1], -1, BLOCK)
    amax = x.abs().amax(dim=-1)
    # smallest exponent e with amax <= 6 * 2^e
    e = torch.ceil(torch.log2(torch.clamp(amax, min=1e-30) / 6.0))
    e = torch.where(amax > 0, e, torch.full_like(e, -SCALE_BIAS))
    e = torch.clamp(e, -SCALE_BIAS, 255 - SCALE_BIAS - 1)
    scaled = x / torch.ldexp(torch.ones_like(e), e.to(torch.int32)).unsqueeze(-1)
    codes = _round_magnitude(scaled.abs())
    sign = (scaled < 0) & (codes > 0)
    codes = codes + 8 * sign.to(codes.dtype)
    return pack_codes(codes), (e + SCALE_BIAS).to(torch.uint8)


def _round_magnitude(mag: torch.Tensor) -> torch.Tensor:
    """Code 0..7 of the E2M1 magnitude nearest to `mag`, ties to the even code, saturating."""
    table = fp4_table(mag.device)[:8]
    lower = (torch.searchsorted(table, mag.contiguous(), right=True) - 1).clamp(0, 6)
    below, above = mag - table[lower], table[lower + 1] - mag
    up = (above < below) | ((above == below) & (lower % 2 == 1))
    return lower + up.to(lower.dtype)
