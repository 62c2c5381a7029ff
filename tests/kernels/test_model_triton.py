"""The whole tiny gpt-oss forward with the Triton kernel set against the reference set.

A mixed batch (a prefill, a chunked prefill over cached blocks, decodes) through both sets on
the same random weights and fresh caches: logits must agree. Interpreter on CPU.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from gptoss_serve.config import ModelConfig  # noqa: E402
from gptoss_serve.kernels.select import reference_kernels, triton_kernels  # noqa: E402
from gptoss_serve.model.synthetic import preset_config  # noqa: E402
from random_model import random_model, run_two_steps  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def test_tiny_model_logits_match_reference_kernels():
    config = ModelConfig.from_hf_dict(preset_config("tiny", sliding_window=2))
    model = random_model(config, DEV)
    logits = []
    for ks in (reference_kernels(), triton_kernels("")):
        model.kernels = ks
        logits.append(run_two_steps(model, config, DEV))
    assert logits[1].shape == (3, config.vocab_size)
    torch.testing.assert_close(logits[1], logits[0], atol=2e-4, rtol=2e-4)
