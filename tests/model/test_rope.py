"""YaRN RoPE: docs/model-facts.md §2.4.1 values, transformers' YaRN, the half-split rotation."""

from __future__ import annotations

import math

import torch
from transformers import GptOssConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.gpt_oss.modeling_gpt_oss import _apply_rotary_emb

from gptoss_serve.config import ModelConfig
from gptoss_serve.formats.rope import Rotary, yarn_inv_freq
from gptoss_serve.kernels.rope import apply_rotary

FACTS_INV_FREQ = [
    1, 0.689044, 0.474782, 0.327146, 0.225418, 0.155323, 0.107024, 0.0737446, 0.0508133,
    0.0317057, 0.019335, 0.011592, 0.00679496, 0.00386036, 0.00209379, 0.0010526, 0.000456484,
    0.000129319, 3.83088e-05, 2.63965e-05, 1.81883e-05, 1.25326e-05, 8.6355e-06, 5.95024e-06,
    4.09998e-06, 2.82507e-06, 1.9466e-06, 1.34129e-06, 9.24209e-07, 6.36821e-07, 4.38798e-07,
    3.02351e-07,
]


def test_inv_freq_equals_the_32_values_of_the_facts():
    inv_freq, concentration = yarn_inv_freq(ModelConfig())
    assert inv_freq.dtype == torch.float32 and inv_freq.shape == (32,)
    assert torch.allclose(inv_freq.double(), torch.tensor(FACTS_INV_FREQ, dtype=torch.float64),
                          rtol=1e-5, atol=0)
    assert math.isclose(concentration, 1.3465735902799727, rel_tol=1e-12)


def test_matches_transformers_yarn_with_truncate_false():
    theirs, factor = ROPE_INIT_FUNCTIONS["yarn"](GptOssConfig())
    ours, concentration = yarn_inv_freq(ModelConfig())
    assert torch.allclose(ours, theirs.float(), rtol=1e-6, atol=0)
    assert math.isclose(concentration, factor, rel_tol=1e-12)


def test_rotation_is_half_split_and_scaled():
    config = ModelConfig(head_dim=16)
    rot = Rotary(config, "cpu")
    pos = torch.tensor([0, 5, 1000])
    cos, sin = rot.cos_sin(pos, torch.float32)
    assert torch.allclose(cos[0], torch.full((8,), rot.concentration))  # position 0: no rotation
    x = torch.randn(3, 2, 16)
    theirs = _apply_rotary_emb(x.transpose(0, 1), cos, sin).transpose(0, 1)
    assert torch.allclose(apply_rotary(x, cos, sin), theirs)
    # dim k pairs with dim k + 8: the rotation keeps each pair's norm (times the concentration)
    out = apply_rotary(x, cos, sin)
    pair = lambda t: t[..., :8] ** 2 + t[..., 8:] ** 2
    assert torch.allclose(pair(out), pair(x) * rot.concentration**2, rtol=1e-5)
