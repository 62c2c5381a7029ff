"""Triton RoPE fused with the KV-cache write, against rope_kv_write_ref and the model's rotary.

Interpreter on CPU, compiled on CUDA. q/k/v are strided views of one fused qkv tensor, as the
model produces them; the caches start NaN-filled so that only the written slots change.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from gptoss_serve.kernels.rope import rope_kv_write_ref  # noqa: E402
from gptoss_serve.kernels.rope_triton import rope_kv_write_triton, write_kv_triton  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def make(t, hq, hkv, d, nblocks=6, bs=4, dtype=torch.float32):
    qkv = torch.randn(t, (hq + 2 * hkv) * d, device=DEV).to(dtype)
    q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    positions = torch.randint(0, 50, (t,), device=DEV)
    angles = torch.arange(64, device=DEV)[:, None] * torch.rand(d // 2, device=DEV)
    cos, sin = (angles.cos() * 1.3).to(dtype), (angles.sin() * 1.3).to(dtype)
    slots = torch.randperm(nblocks * bs, device=DEV)[:t]
    caches = [torch.full((nblocks, bs, hkv, d), float("nan"), device=DEV, dtype=dtype)
              for _ in range(2)]
    return (q.view(t, hq, d), k.view(t, hkv, d), v.view(t, hkv, d), positions, cos, sin,
            *caches, slots)


@pytest.mark.parametrize("t,hq,hkv", [(1, 2, 1), (9, 6, 2), (5, 8, 8)])
def test_rotation_and_cache_write_match_reference(t, hq, hkv):
    args = make(t, hq, hkv, 16)
    ref_args = [a.clone() for a in args]
    q_ref, k_ref = rope_kv_write_ref(*ref_args)
    q_got, k_got = rope_kv_write_triton(*args)
    torch.testing.assert_close(q_got, q_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_got, k_ref, atol=1e-5, rtol=1e-5)
    for got, ref in ((args[6], ref_args[6]), (args[7], ref_args[7])):
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_rotation_matches_model_rotary():
    from gptoss_serve.formats import rope
    from gptoss_serve.kernels.rope import apply_rotary

    class Cfg:  # the ModelConfig fields Rotary reads, at gpt-oss values
        head_dim, rope_theta, rope_scaling_factor = 32, 150000.0, 32.0
        initial_context_length, rope_ntk_alpha, rope_ntk_beta = 4096, 1.0, 32.0
        max_position_embeddings = 131072

    rot = rope.Rotary(Cfg(), DEV)
    q, k, v, _, _, _, kc, vc, slots = make(6, 4, 2, 32)
    positions = torch.tensor([0, 1, 7, 4095, 4096, 131071], device=DEV)
    cos, sin = rot.tables(torch.float32)
    q_got, k_got = rope_kv_write_triton(q, k, v, positions, cos, sin, kc, vc, slots)
    c, s = rot.cos_sin(positions, torch.float32)
    torch.testing.assert_close(q_got, apply_rotary(q, c, s), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k_got, apply_rotary(k, c, s), atol=1e-5, rtol=1e-5)


def test_negative_slots_write_nothing():
    q, k, v, pos, cos, sin, kc, vc, slots = make(4, 2, 2, 16)
    slots[1:3] = -1
    write_kv_triton(k, v, kc, vc, slots)
    flat_k, flat_v = kc.view(-1, 2, 16), vc.view(-1, 2, 16)
    assert int((~torch.isnan(flat_k[:, 0, 0])).sum()) == 2
    torch.testing.assert_close(flat_k[slots[[0, 3]]], k[[0, 3]])
    torch.testing.assert_close(flat_v[slots[[0, 3]]], v[[0, 3]])


def test_bfloat16_within_one_rounding():
    args = make(7, 4, 2, 16, dtype=torch.bfloat16)
    ref_args = [a.clone() for a in args]
    q_ref, _ = rope_kv_write_ref(*ref_args)
    q_got, _ = rope_kv_write_triton(*args)
    torch.testing.assert_close(q_got.float(), q_ref.float(), atol=3e-2, rtol=1.6e-2)
    torch.testing.assert_close(args[6].float(), ref_args[6].float(), atol=3e-2, rtol=1.6e-2,
                               equal_nan=True)
