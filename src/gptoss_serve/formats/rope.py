"""YaRN rotary position embedding of gpt-oss: the tables (docs/model-facts.md §2.4.1).

Owns the inverse frequencies (unrounded ramp bounds), the concentration factor that scales both
cos and sin, and the cos/sin of any positions (or of every position, built once). The rotation
that applies them is the rope op's (`kernels/rope.py: apply_rotary`). Knows nothing of
attention, caches, kernels or checkpoints.

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
    """cos/sin [T, head_dim/2] for arbitrary absolute positions, or for every position."""

    def __init__(self, config: ModelConfig, device: torch.device | str) -> None:
        super().__init__()
        inv_freq, self.concentration = yarn_inv_freq(config)
        self.register_buffer("inv_freq", inv_freq.to(device), persistent=False)
        self.max_positions = config.max_position_embeddings
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """positions [T] -> (cos, sin) [T, head_dim/2] in `dtype`, concentration applied."""
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        c = self.concentration
        return (angles.cos() * c).to(dtype), (angles.sin() * c).to(dtype)

    def tables(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) [max_position_embeddings, head_dim/2] in `dtype`, contiguous, built once
        per dtype: row p is `cos_sin(p)` (the same values), so a step that indexes them
        computes no angles."""
        if self._tables is None or self._tables[0].dtype != dtype:
            every = torch.arange(self.max_positions, device=self.inv_freq.device)
            cos, sin = self.cos_sin(every, dtype)
            self._tables = cos.contiguous(), sin.contiguous()
        return self._tables
