"""A GptOssModel with random in-memory weights, for tests that compare kernel sets."""

from __future__ import annotations

import math

import torch

from gptoss_serve.config import ModelConfig
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
