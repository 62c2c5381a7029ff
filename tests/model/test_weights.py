"""Checkpoint loader: dtype resolution, hub names offline, one clear error per bad checkpoint."""

from __future__ import annotations

import json
import shutil

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file

from gptoss_serve.errors import CheckpointError, StartupError
from gptoss_serve.model.synthetic import write_checkpoint
from gptoss_serve.model.weights import load_model, resolve_checkpoint, resolve_dtype

SMALL_VOCAB = dict(preset="tiny", seed=5, vocab_size=512)
SHARD0, SHARD1 = "model-00000-of-00003.safetensors", "model-00001-of-00003.safetensors"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("good"), **SMALL_VOCAB)


@pytest.fixture
def bad(good, tmp_path):
    """A fresh copy of the good checkpoint, to be broken by the test."""
    return shutil.copytree(good, tmp_path / "ckpt")


def _rewrite_shard(folder, shard, edit) -> None:
    tensors = load_file(folder / shard)
    edit(tensors)
    save_file(tensors, folder / shard)


def test_resolve_dtype():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    assert resolve_dtype(torch.float32, torch.device("cuda")) == torch.float32
    with pytest.raises(StartupError, match="float8"):
        resolve_dtype("float8", torch.device("cpu"))


def test_good_checkpoint_loads_with_experts_packed(good):
    model = load_model(good, device="cpu", kernels="reference")  # the CPU set densifies at load
    assert model.config.vocab_size == 512 and model.dtype == torch.float32
    mlp = model.block[0].mlp
    assert mlp.mlp1_weight.blocks.dtype == torch.uint8 and mlp.mlp1_weight.weight is None
    stored = load_file(good / SHARD1)["model.layers.0.mlp.experts.gate_up_proj_blocks"]
    assert torch.equal(mlp.mlp1_weight.blocks, stored)


def test_hub_name_offline_says_pass_a_local_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="pass a local folder") as err:
        resolve_checkpoint("openai/gpt-oss-120b")
    assert "openai/gpt-oss-120b" in err.value.message


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        load_model(tmp_path / "nope", device="cpu")


def test_folder_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path, device="cpu")


def test_missing_tensor_is_named(bad):
    _rewrite_shard(bad, SHARD1, lambda t: t.pop("model.layers.0.self_attn.sinks"))
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.0\.self_attn\.sinks"):
        load_model(bad, device="cpu")


def test_wrong_shape_names_file_and_tensor(bad):
    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(3, 64, dtype=torch.bfloat16)

    _rewrite_shard(bad, SHARD1, edit)
    with pytest.raises(CheckpointError) as err:
        load_model(bad, device="cpu")
    msg = err.value.message
    assert SHARD1 in msg and "model.layers.0.self_attn.k_proj.weight" in msg
    assert "[3, 64]" in msg and "[32, 64]" in msg


def test_wrong_dtype_names_file_and_tensor(bad):
    def edit(t):
        key = "model.layers.0.mlp.experts.down_proj_blocks"
        t[key] = t[key].to(torch.bfloat16)

    _rewrite_shard(bad, SHARD1, edit)
    with pytest.raises(CheckpointError, match=f"{SHARD1}: tensor model.layers.0.mlp.experts"
                                              r".down_proj_blocks has dtype torch.bfloat16"):
        load_model(bad, device="cpu")


def test_truncated_file_is_named(bad):
    path = bad / SHARD0
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{SHARD0}: unreadable or truncated"):
        load_model(bad, device="cpu")


def test_shard_listed_in_index_but_absent(bad):
    (bad / SHARD1).unlink()
    with pytest.raises(CheckpointError, match=f"{SHARD1}: listed in model.safetensors.index.json"):
        load_model(bad, device="cpu")


@pytest.mark.parametrize("where", ["../outside.safetensors", "/etc/outside.safetensors",
                                   "sub/../../outside.safetensors", "link.safetensors"])
def test_index_names_outside_the_folder_are_refused(bad, where):
    """issue 14.8: a weight_map entry is never followed out of the checkpoint folder."""
    outside = bad.parent / "outside.safetensors"
    outside.write_bytes((bad / SHARD1).read_bytes())
    if where == "link.safetensors":
        (bad / where).symlink_to(outside)
    index = bad / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = {k: (where if v == SHARD1 else v) for k, v in data["weight_map"].items()}
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="points outside the checkpoint folder"):
        load_model(bad, device="cpu")


def test_unknown_architecture(bad):
    cfg = json.loads((bad / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown architecture 'llama'"):
        load_model(bad, device="cpu")


def test_config_missing_a_key(bad):
    cfg = json.loads((bad / "config.json").read_text())
    del cfg["hidden_size"]
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="config.json: missing key 'hidden_size'"):
        load_model(bad, device="cpu")


def test_errors_map_to_the_openai_shape(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path, device="cpu")
    body = err.value.to_openai()["error"]
    assert body["message"] == err.value.message and body["type"] == "server_error"


def test_original_layout_from_root_or_its_folder(good, tmp_path):
    orig = write_checkpoint(tmp_path / "orig", layout="original", **SMALL_VOCAB)
    want = load_model(good, device="cpu").state_dict()
    for folder in (orig, orig / "original"):
        got = load_model(folder, device="cpu").state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_bf16_experts_load_into_dense_fields_with_the_same_values(good, tmp_path):
    dense = load_model(write_checkpoint(tmp_path / "dense", experts="bf16", **SMALL_VOCAB),
                       device="cpu")
    packed = load_model(good, device="cpu")
    assert not dense.config.experts_mxfp4
    for a, b in zip(dense.block, packed.block, strict=True):
        assert a.mlp.mlp1_weight.blocks is None
        assert torch.equal(a.mlp.experts().expert_w1(1, torch.float32),
                           b.mlp.experts().expert_w1(1, torch.float32))
        assert torch.equal(a.mlp.experts().expert_w2(3, torch.float32),
                           b.mlp.experts().expert_w2(3, torch.float32))


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_cli_with_a_bad_checkpoint_is_a_message_not_a_traceback(tmp_path, capsys, command):
    """issue 14.12: `serve`/`chat --model` of a folder that cannot be loaded prints the
    CheckpointError's message and exits 2, as `make-checkpoint --preset bogus` does."""
    from gptoss_serve import cli

    missing = tmp_path / "no-such-checkpoint"
    assert cli.main([command, "--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "no such checkpoint folder" in err and str(missing) in err
    assert "Traceback" not in err
