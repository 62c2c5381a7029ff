"""A GptOssModel with random in-memory weights, and a two-step mixed batch to run through it,
for tests that compare kernel sets."""

from __future__ import annotations

import math

import torch

from gptoss_serve.config import ModelConfig
from gptoss_serve.formats.forward_batch import ForwardBatch, KVCache, SeqSlice
from gptoss_serve.model.gpt_oss import GptOssModel


def random_model(config: ModelConfig, device: str = "cpu") -> GptOssModel:
    model = GptOssModel(config, torch.float32, device)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith("blocks"):
            t.random_(0, 256)
        elif name.endswith("scales"):
            t.random_(121, 124)
        elif not name.endswith("inv_freq"):
            t.normal_(1.0 if "norm" in name else 0.0, 1 / math.sqrt(t.shape[-1]))
    return model


def run_two_steps(model: GptOssModel, config: ModelConfig, device: str = "cpu") -> torch.Tensor:
    """A prefill, then a step mixing a chunk over cached blocks (window 2 drops block 0),
    a fresh prompt and a one-token decode, on fresh caches; returns the second step's logits."""
    gen = torch.Generator().manual_seed(0)
    tok = lambda n: torch.randint(0, config.vocab_size, (n,), generator=gen).tolist()  # noqa: E731
    kv = KVCache.allocate([config.is_sliding(n) for n in range(config.num_hidden_layers)],
                          8, 8, 4, config.num_key_value_heads, config.head_dim,
                          torch.float32, device)
    model(ForwardBatch.build([SeqSlice(tok(6), 0, [0, 1], [0, 1])], 4, device), kv)
    second = [SeqSlice(tok(3), 6, [0, 1, 4], [-1, 1, 4]), SeqSlice(tok(5), 0, [2, 3], [2, 3]),
              SeqSlice(tok(1), 0, [5], [5])]
    return model(ForwardBatch.build(second, 4, device), kv)
