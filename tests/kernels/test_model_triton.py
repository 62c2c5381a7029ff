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
from gptoss_serve.engine.forward_batch import ForwardBatch, KVCache, SeqSlice  # noqa: E402
from gptoss_serve.kernels.select import reference_kernels, triton_kernels  # noqa: E402
from gptoss_serve.model.synthetic import preset_config  # noqa: E402
from random_model import random_model  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"




def test_tiny_model_logits_match_reference_kernels():
    config = ModelConfig.from_hf_dict(preset_config("tiny", sliding_window=2))
    model = random_model(config, DEV)
    tok = lambda n: torch.randint(0, 1000, (n,)).tolist()  # noqa: E731
    # sequence 1 has 6 tokens cached from an earlier step: run that step first on each set
    first = [SeqSlice(tok(6), 0, [0, 1], [0, 1])]
    second = [SeqSlice(tok(5), 0, [2, 3], [2, 3]), SeqSlice(tok(3), 6, [0, 1, 4], [-1, 1, 4]),
              SeqSlice(tok(1), 0, [5], [5])]
    logits = []
    for ks in (reference_kernels(), triton_kernels("")):
        model.kernels = ks
        kv = KVCache.allocate([config.is_sliding(n) for n in range(config.num_hidden_layers)],
                              6, 6, 4, config.num_key_value_heads, config.head_dim,
                              torch.float32, DEV)
        model(ForwardBatch.build(first, 4, DEV), kv)
        logits.append(model(ForwardBatch.build(second, 4, DEV), kv))
    assert logits[1].shape == (3, config.vocab_size)
    torch.testing.assert_close(logits[1], logits[0], atol=2e-4, rtol=2e-4)
