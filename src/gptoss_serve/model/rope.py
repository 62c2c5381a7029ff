"""YaRN rotary position embedding of gpt-oss (docs/model-facts.md §2.4.1).

Owns the inverse frequencies (unrounded ramp bounds), the concentration factor that scales both
cos and sin, and the half-split rotation. Knows nothing of attention, caches or checkpoints.

Follows openai/gpt-oss `gpt_oss/torch/model.py: RotaryEmbedding` and transformers'
`modeling_rope_utils.py: _compute_yarn_parameters`.
"""

from __future__ import annotations

import math

import torch

from gptoss_serve.config import ModelConfig


def yarn_inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim/2] (float32) and the concentration factor.

    Computed in float64, rounded once to float32. The ramp bounds are not floored or ceiled
    (`truncate: false` in the published config).
    """
    dim, base, factor = config.head_dim, config.rope_theta, config.rope_scaling_factor
    half = dim // 2
    freq = base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    extrapolated, interpolated = 1.0 / freq, 1.0 / (factor * freq)

    def correction_dim(rotations: float) -> float:
        wavelengths = config.initial_context_length / (rotations * 2 * math.pi)
        return half * math.log(wavelengths) / math.log(base)

    low = max(correction_dim(config.rope_ntk_beta), 0.0)
    high = min(correction_dim(config.rope_ntk_alpha), dim - 1.0)
    if high == low:
        high += 1e-3
    ramp = ((torch.arange(half, dtype=torch.float64) - low) / (high - low)).clamp(0.0, 1.0)
    inv_freq = (1.0 - ramp) * extrapolated + ramp * interpolated
    concentration = 0.1 * math.log(factor) + 1.0 if factor > 1.0 else 1.0
    return inv_freq.to(torch.float32), concentration


class Rotary(torch.nn.Module):
    """cos/sin for arbitrary absolute positions, applied half-split to [T, heads, head_dim]."""

    def __init__(self, config: ModelConfig, device: torch.device | str) -> None:
        super().__init__()
        inv_freq, self.concentration = yarn_inv_freq(config)
        self.register_buffer("inv_freq", inv_freq.to(device), persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """positions [T] -> (cos, sin) [T, head_dim/2] in `dtype`, concentration applied."""
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        c = self.concentration
        return (angles.cos() * c).to(dtype), (angles.sin() * c).to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate dim k with dim k + D/2: x [T, H, D], cos/sin [T, D/2]."""
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)
