"""RoPE (half-split, docs/model-facts.md §2.4.1) fused with the KV-cache write: the torch reference.

Oracle for `rope_triton.rope_kv_write_triton` (same signature). The cos/sin tables come from the
model (YaRN, concentration already folded in): [P, D/2], row p for position p. The rotation is
computed in float32 and rounded once to the activation dtype. Knows nothing of how the tables
are built or of block allocation.

Follows openai/gpt-oss `gpt_oss/torch/model.py: RotaryEmbedding` (the rotation) and vLLM's
`reshape_and_cache` (the slot write).
"""

from __future__ import annotations

import torch

from gptoss_serve.kernels.attention import write_kv


def rotate_half_split(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D]; cos/sin [T, D/2]. out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos.float()[:, None, :], sin.float()[:, None, :]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)


def rope_kv_write_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                      cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, slot_mapping: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] at `positions`, store rotated k and v at their
    slots (a slot < 0 stores nothing: padding rows), and return (q_rot, k_rot)."""
    q_rot = rotate_half_split(q, cos[positions], sin[positions])
    k_rot = rotate_half_split(k, cos[positions], sin[positions])
    write_kv(k_rot, v, k_cache, v_cache, slot_mapping)  # skips slots < 0 itself
    return q_rot, k_rot
