"""Synthetic checkpoints: presets, parameter counts, the streaming writer, make-checkpoint CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptoss_serve.config import ModelConfig
from gptoss_serve.formats.forward_batch import ForwardBatch, KVCache, SeqSlice
from gptoss_serve.model.synthetic import (
    PRESETS,
    original_config,
    parameter_count,
    write_checkpoint,
    write_safetensors,
)
from gptoss_serve.model.weights import load_model

CLI = Path(sys.executable).with_name("gptoss-serve")


def test_120b_preset_is_the_published_config():
    cfg = PRESETS["120b"]
    expected = dict(num_hidden_layers=36, num_local_experts=128, num_experts_per_tok=4,
                    hidden_size=2880, intermediate_size=2880, head_dim=64, num_attention_heads=64,
                    num_key_value_heads=8, vocab_size=201088, sliding_window=128,
                    rope_theta=150000, max_position_embeddings=131072, swiglu_limit=7.0)
    assert {k: cfg[k] for k in expected} == expected
    assert cfg["rope_scaling"]["factor"] == 32.0 and cfg["rope_scaling"]["truncate"] is False
    assert cfg["quantization_config"]["quant_method"] == "mxfp4"
    assert cfg["layer_types"][:2] == ["sliding_attention", "full_attention"]
    assert parameter_count(ModelConfig.from_hf_dict(cfg)) == 116_829_156_672


def test_20b_parameter_count_and_original_config():
    cfg = PRESETS["20b"]
    assert parameter_count(ModelConfig.from_hf_dict(cfg)) == 20_914_757_184
    # the reference ModelConfig fields and values of the published original/config.json
    assert list(original_config(cfg).values()) == [24, 32, 4, 201088, 2880, 2880, 7.0, 64, 64, 8,
                                                    128, 4096, 150000, 32.0, 1, 32]


def test_streaming_writer_reads_back_with_safetensors(tmp_path):
    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.uint8),
               "c": torch.randn(2, 2, 2)}
    metas = {k: t.to("meta") for k, t in tensors.items()}
    write_safetensors(tmp_path / "x.safetensors", metas, iter(tensors.items()))
    back = load_file(tmp_path / "x.safetensors")
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[k], t) for k, t in tensors.items())


def test_overrides_and_layer_types(tmp_path):
    folder = write_checkpoint(tmp_path, "tiny", seed=0, vocab_size=256, num_hidden_layers=3,
                              sliding_window=8)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["sliding_window"] == 8 and len(cfg["layer_types"]) == 3
    gen = json.loads((folder / "generation_config.json").read_text())
    assert 200002 in gen["eos_token_id"] and 200012 in gen["eos_token_id"]
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 5  # embedding, 3 layers, norm+unembedding


def _last_logits(model, prompt):
    cfg = model.config
    kv = KVCache.allocate([cfg.is_sliding(n) for n in range(cfg.num_hidden_layers)], 4, 4, 16,
                          cfg.num_key_value_heads, cfg.head_dim, model.dtype, "cpu")
    batch = ForwardBatch.build([SeqSlice(prompt, 0, [0, 1, 2, 3], [0, 1, 2, 3])], 16, "cpu")
    return model(batch, kv)[0]


def test_make_checkpoint_cli_tiny(tmp_path):
    out = tmp_path / "cli"
    subprocess.run([str(CLI), "make-checkpoint", str(out), "--preset", "tiny", "--seed", "1"],
                   check=True, capture_output=True)
    model = load_model(out, device="cpu")
    assert model.config == ModelConfig.from_hf_dict(PRESETS["tiny"])
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert size < 60e6  # vocab 201088 x hidden 64 twice, in bf16, is most of it
    same = load_model(write_checkpoint(tmp_path / "again", "tiny", seed=1), device="cpu")
    prompt = [200006, 17360, 200008, 12194, 200007, 200006, 173781]
    logits = _last_logits(model, prompt)
    assert torch.equal(logits, _last_logits(same, prompt))  # the seed fixes every weight
    # peaked: the best token is clear of the runner-up by more than numerical noise
    top2 = logits.topk(2).values
    assert (top2[0] - top2[1]).item() > 0.1 and logits.std().item() > 5


def test_make_checkpoint_unknown_preset_is_a_message_not_a_traceback(tmp_path, capsys):
    from gptoss_serve import cli

    assert cli.main(["make-checkpoint", str(tmp_path / "x"), "--preset", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'bogus'" in err and "tiny" in err and "Traceback" not in err


def test_serving_a_random_checkpoint_warns(tmp_path, caplog, monkeypatch):
    """issue 14.12: `serve --model` of a make-checkpoint folder said nothing of random weights."""
    import logging

    from gptoss_serve.api import server
    from gptoss_serve.config import CacheConfig, SchedulerConfig, ServerConfig
    from gptoss_serve.engine import async_engine
    from gptoss_serve.model.synthetic import is_random_checkpoint

    folder = tmp_path / "rnd"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "gptoss_serve_random.json").write_text("{}")
    assert is_random_checkpoint(folder) and not is_random_checkpoint(tmp_path)

    class Stop(Exception):
        pass

    def no_engine(*_a, **_k):
        raise Stop

    opts = server.ServeOptions(str(folder), None, "auto", "cpu", ServerConfig(), CacheConfig(),
                               SchedulerConfig(), Path(tmp_path / "tiny"))
    monkeypatch.setattr(async_engine.AsyncEngine, "from_config", no_engine)
    with caplog.at_level(logging.WARNING), pytest.raises(Stop):
        server.run_server(opts)
    assert any("RANDOM" in r.getMessage() for r in caplog.records)
