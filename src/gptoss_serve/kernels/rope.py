"""The rope op's references: the half-split rotation (docs/model-facts.md §2.4.1), written once,
and the rotation fused with the KV-cache write.

Owns `apply_rotary`, the oracle of `rope_cpu.rotary_cpu` (computed in x's dtype, as the
reference model does), and `rope_kv_write_ref`, the oracle of `rope_triton.rope_kv_write_triton`
(the same rotation in float32, rounded once to the activation dtype). The cos/sin tables come
from `formats/rope.py` (YaRN, concentration folded in): per token [T, D/2], or whole [P, D/2]
with row p for position p. Also the two ways a layer turns its fused qkv projection into the
attention inputs (`rotate_qkv`, `rotate_qkv_and_write`); `KernelSet.rope_qkv` picks one. Knows
nothing of how the tables are built or of block allocation.

Follows openai/gpt-oss `gpt_oss/torch/model.py: RotaryEmbedding, _apply_rotary_emb` (the
rotation) and vLLM's `reshape_and_cache` (the slot write).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gptoss_serve.kernels.attention import write_kv


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate dim k with dim k + D/2: x [T, H, D], cos/sin [T, D/2], in x's dtype.
    out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin."""
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def rope_kv_write_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                      cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, slot_mapping: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q [T, Hq, D] and k [T, Hkv, D] at `positions` (cos/sin: whole tables [P, D/2]) in
    float32, store rotated k and v at their slots (a slot < 0 stores nothing: padding rows),
    and return (q_rot, k_rot) in q's and k's dtypes."""
    c, s = cos[positions].float(), sin[positions].float()
    q_rot = apply_rotary(q.float(), c, s).to(q.dtype)
    k_rot = apply_rotary(k.float(), c, s).to(k.dtype)
    write_kv(k_rot, v, k_cache, v_cache, slot_mapping)  # skips slots < 0 itself
    return q_rot, k_rot


def rotate_qkv(qkv: torch.Tensor, n_q: int, n_kv: int, head_dim: int, cos: torch.Tensor,
               sin: torch.Tensor, rotary: Callable = apply_rotary
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """qkv [T, (n_q + 2 n_kv) D] -> (q, k rotated by per-token cos/sin [T, D/2], v). The q and
    k heads are adjacent in a qkv row, so one `rotary` call (same signature as
    `apply_rotary`) rotates both; attention then writes k and v into the cache."""
    t, d = qkv.shape[0], head_dim
    qk = qkv[:, :(n_q + n_kv) * d].view(t, n_q + n_kv, d)
    q, k = rotary(qk, cos, sin).split([n_q, n_kv], dim=1)
    return q, k, qkv[:, (n_q + n_kv) * d:].view(t, n_kv, d)


def rotate_qkv_and_write(qkv: torch.Tensor, n_q: int, n_kv: int, head_dim: int,
                         positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         k_cache: torch.Tensor, v_cache: torch.Tensor,
                         slot_mapping: torch.Tensor, write: Callable = rope_kv_write_ref
                         ) -> tuple[torch.Tensor, None, None]:
    """qkv [T, (n_q + 2 n_kv) D] -> (q rotated, None, None): `write` (same signature as
    `rope_kv_write_ref`, whole tables) rotates q and k and stores k and v at their slots, so
    attention gets k = v = None (the cache already holds them)."""
    t, d = qkv.shape[0], head_dim
    q, k, v = qkv.split([n_q * d, n_kv * d, n_kv * d], dim=-1)
    q, k, v = q.view(t, n_q, d), k.view(t, n_kv, d), v.view(t, n_kv, d)
    q, _ = write(q, k, v, positions, cos, sin, k_cache, v_cache, slot_mapping)
    return q, None, None
