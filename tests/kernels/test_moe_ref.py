"""Reference MoE against transformers' GptOssMLP (router + experts), dense and MXFP4 experts."""

from __future__ import annotations

import pytest
import torch
from transformers import GptOssConfig
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

from gptoss_serve.formats.mxfp4 import dequantize
from gptoss_serve.kernels.moe import ExpertWeights, moe_ref, route

E, H, INTER = 6, 64, 32


def _hf_mlp(top_k: int, w1, b1, w2, b2, rw, rb) -> GptOssMLP:
    cfg = GptOssConfig(num_local_experts=E, num_experts_per_tok=top_k, hidden_size=H,
                       intermediate_size=INTER, num_hidden_layers=1)
    mlp = GptOssMLP(cfg).eval()
    with torch.no_grad():
        mlp.router.weight.copy_(rw)
        mlp.router.bias.copy_(rb)
        mlp.experts.gate_up_proj.copy_(w1.transpose(1, 2))  # HF stores [E, in, out]
        mlp.experts.gate_up_proj_bias.copy_(b1)
        mlp.experts.down_proj.copy_(w2.transpose(1, 2))
        mlp.experts.down_proj_bias.copy_(b2)
    return mlp


def _packed(g, rows, cols):
    blocks = torch.randint(0, 256, (E, rows, cols // 32, 16), generator=g, dtype=torch.uint8)
    return blocks, torch.randint(122, 126, (E, rows, cols // 32), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_moe_matches_transformers(top_k):
    g = torch.Generator().manual_seed(top_k)
    (b1k, b1s), (b2k, b2s) = _packed(g, 2 * INTER, H), _packed(g, H, INTER)
    w1, w2 = dequantize(b1k, b1s, torch.float32), dequantize(b2k, b2s, torch.float32)
    b1, b2 = torch.randn(E, 2 * INTER, generator=g), torch.randn(E, H, generator=g) * 0.1
    rw, rb = torch.randn(E, H, generator=g), torch.randn(E, generator=g)
    x = torch.randn(11, H, generator=g) * 3  # large enough that the +-7 clamps engage
    with torch.no_grad():
        expected, _ = _hf_mlp(top_k, w1, b1, w2, b2, rw, rb)(x[None])
    packed = ExpertWeights(b1, b2, w1_blocks=b1k, w1_scales=b1s, w2_blocks=b2k, w2_scales=b2s)
    dense = ExpertWeights(b1, b2, w1=w1, w2=w2)
    for experts in (packed, dense):
        got = moe_ref(x, rw, rb, experts, top_k)
        assert torch.allclose(got, expected[0], atol=1e-4, rtol=1e-4)


def test_route_softmax_over_top_k_only():
    logits_w = torch.eye(4)
    x = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    ids, weights = route(x, logits_w, torch.zeros(4), 2)
    assert ids.tolist() == [[0, 2]]
    assert torch.allclose(weights, torch.softmax(torch.tensor([[3.0, 2.0]]), -1))
