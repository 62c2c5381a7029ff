"""Random gpt-oss checkpoints: tiny presets for tests, `small` for CPU benchmarks, 20b/120b shapes.

Owns the presets (HF config.json dicts), the random weight recipe (logits peaked so greedy decoding
is stable) and a streaming safetensors writer: one tensor is in memory at a time, so writing the
120b shapes needs about one expert tensor of RAM. Tensor names and shapes come from the model
(`GptOssModel` built on the meta device) and the HF name map of `weights.py`; nothing here
duplicates them. Knows nothing of loading or the forward pass.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from gptoss_serve.config import FULL, SLIDING, ModelConfig
from gptoss_serve.formats.mxfp4 import FP4_VALUES, SCALE_BIAS, dequantize
from gptoss_serve.model.gpt_oss import GptOssModel
from gptoss_serve.model.weights import HF_ARCHITECTURE, HF_INDEX, to_hf

_REAL = dict(hidden_size=2880, intermediate_size=2880, head_dim=64, num_attention_heads=64,
             num_key_value_heads=8, num_experts_per_tok=4, sliding_window=128, vocab_size=201088)
PRESETS: dict[str, dict[str, Any]] = {}  # filled below by _preset
RANDOM_MARKER = "gptoss_serve_random.json"  # written beside the weights: {"preset", "seed"}
_ST_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32",
              torch.uint8: "U8"}
_FP4_RMS = math.sqrt(sum(v * v for v in FP4_VALUES) / len(FP4_VALUES))
_CHUNK = 1 << 22  # elements drawn per call when filling a big tensor
LOGIT_STD = 12.0  # std of the logits of a random checkpoint: top-1 is well clear of top-2


def _preset(num_hidden_layers: int, num_local_experts: int, **fields: Any) -> dict[str, Any]:
    """A complete HF config.json of gpt-oss with the given sizes."""
    cfg: dict[str, Any] = {
        "architectures": [HF_ARCHITECTURE], "model_type": "gpt_oss", "attention_bias": True,
        "attention_dropout": 0.0, "eos_token_id": 200002, "pad_token_id": 199999,
        "hidden_act": "silu", "initializer_range": 0.02, "initial_context_length": 4096,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 150000,
        "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "original_max_position_embeddings": 4096, "truncate": False},
        "router_aux_loss_coef": 0.9, "output_router_logits": False, "swiglu_limit": 7.0,
        "tie_word_embeddings": False, "use_cache": True, "transformers_version": "4.55.0.dev0",
        "num_hidden_layers": num_hidden_layers, "num_local_experts": num_local_experts,
        "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
            "lm_head"]},
    }
    cfg.update(_REAL)
    cfg.update(fields)
    cfg["experts_per_token"] = cfg["num_experts_per_tok"]
    return _with_layer_types(cfg)


def _with_layer_types(cfg: dict[str, Any]) -> dict[str, Any]:
    cfg["layer_types"] = [SLIDING if i % 2 == 0 else FULL for i in range(cfg["num_hidden_layers"])]
    return cfg


PRESETS.update(
    tiny=_preset(2, 4, hidden_size=64, intermediate_size=64, head_dim=16, num_attention_heads=4,
                 num_key_value_heads=2, num_experts_per_tok=2),
    small=_preset(6, 16, hidden_size=512, intermediate_size=512, head_dim=64,
                  num_attention_heads=8, num_key_value_heads=2),
    **{"20b": _preset(24, 32), "120b": _preset(36, 128)},
)


def preset_config(preset: str = "tiny", **overrides: Any) -> dict[str, Any]:
    """The HF config.json dict of a preset with `overrides` applied (layer_types follow)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    cfg = json.loads(json.dumps(PRESETS[preset]))
    cfg.update(overrides)
    if "num_experts_per_tok" in overrides:
        cfg["experts_per_token"] = overrides["num_experts_per_tok"]
    return cfg if "layer_types" in overrides else _with_layer_types(cfg)


def original_config(hf: dict[str, Any]) -> dict[str, Any]:
    """The `original/config.json` fields (exactly the reference ModelConfig's) of an HF config."""
    rope = hf["rope_scaling"]
    return {
        "num_hidden_layers": hf["num_hidden_layers"], "num_experts": hf["num_local_experts"],
        "experts_per_token": hf["num_experts_per_tok"], "vocab_size": hf["vocab_size"],
        "hidden_size": hf["hidden_size"], "intermediate_size": hf["intermediate_size"],
        "swiglu_limit": hf["swiglu_limit"], "head_dim": hf["head_dim"],
        "num_attention_heads": hf["num_attention_heads"],
        "num_key_value_heads": hf["num_key_value_heads"], "sliding_window": hf["sliding_window"],
        "initial_context_length": rope["original_max_position_embeddings"],
        "rope_theta": hf["rope_theta"], "rope_scaling_factor": rope["factor"],
        "rope_ntk_alpha": rope["beta_slow"], "rope_ntk_beta": rope["beta_fast"],
    }


# ---- tensors -------------------------------------------------------------------------------------
def meta_tensors(config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our tensor names -> meta tensors with the checkpoint's shapes and dtypes (bf16 or uint8)."""
    model = GptOssModel(config, torch.bfloat16, "meta")
    return {n: t if t.dtype == torch.uint8 else t.to(torch.bfloat16)
            for n, t in model.state_dict().items()}


def parameter_count(config: ModelConfig) -> int:
    """Model parameters: packed bytes count two each, MXFP4 scales none."""
    total = 0
    for name, t in meta_tensors(config).items():
        if not name.endswith(".scales"):
            total += t.numel() * (2 if name.endswith(".blocks") else 1)
    return total


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))


def _normal(shape: torch.Size, std: float, g: torch.Generator, mean: float = 0.0) -> torch.Tensor:
    """bf16 normals, drawn in chunks so that no float32 copy of a big tensor exists."""
    out = torch.empty(shape, dtype=torch.bfloat16).view(-1)
    for start in range(0, out.numel(), _CHUNK):
        part = out[start:start + _CHUNK]
        part.copy_(torch.randn(part.numel(), generator=g).mul_(std).add_(mean))
    return out.view(shape)


def _fp4_scales(shape: torch.Size, rms: float, g: torch.Generator) -> torch.Tensor:
    """E8M0 bytes whose random E2M1 blocks have about `rms` (one octave of jitter per block)."""
    center = SCALE_BIAS + round(math.log2(rms / _FP4_RMS))
    return torch.randint(center - 1, center + 1, shape, generator=g, dtype=torch.uint8)


def random_tensor(name: str, shape: torch.Size, config: ModelConfig, seed: int) -> torch.Tensor:
    """The random value of tensor `name`: a pure function of (seed, name, shape)."""
    g = _generator(seed, name)
    h, i = config.hidden_size, config.intermediate_size
    leaf = name.rsplit(".", 2)[-2:]
    if name.endswith(".blocks"):
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    if name.endswith(".scales"):
        fan_in = h if "mlp1" in name else i
        return _fp4_scales(shape, (1.0 if "mlp1" in name else 0.5) / math.sqrt(fan_in), g)
    if name.endswith("_weight.weight"):  # dense experts: the MXFP4 values, dequantized
        blocks, scales = name[: -len("weight")] + "blocks", name[: -len("weight")] + "scales"
        packed = shape[:-1] + (shape[-1] // 32,)
        b = random_tensor(blocks, packed + (16,), config, seed)
        return dequantize(b, random_tensor(scales, packed, config, seed), torch.bfloat16)
    if leaf[-1] == "scale":
        return _normal(shape, 0.1, g, mean=1.0)
    if name == "embedding.weight":
        return _normal(shape, 1.0, g)
    if name == "unembedding.weight":
        return _normal(shape, LOGIT_STD / math.sqrt(h), g)
    if leaf[-1] == "sinks":
        return _normal(shape, 1.0, g)
    if leaf[-1] == "bias" or name.endswith("_bias"):
        return _normal(shape, 0.1, g)
    gain = 0.5 if leaf[0] == "out" else 1.0
    return _normal(shape, gain / math.sqrt(shape[-1]), g)


# ---- streaming safetensors writer ----------------------------------------------------------------
def write_safetensors(path: Path, metas: dict[str, torch.Tensor],
                      tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
    """Write a safetensors file whose header comes from `metas`; data arrives one tensor at a time.

    Returns the number of data bytes written.
    """
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, m in metas.items():
        size = m.numel() * m.element_size()
        header[name] = {"dtype": _ST_DTYPES[m.dtype], "shape": list(m.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for (name, m), (got, t) in zip(metas.items(), tensors, strict=True):
            if got != name or t.shape != m.shape or t.dtype != m.dtype:
                raise AssertionError(f"writer got {got} {tuple(t.shape)} {t.dtype} for {name}")
            f.write(t.contiguous().view(torch.uint8).numpy().data)
    return offset


# ---- checkpoints ---------------------------------------------------------------------------------
def write_checkpoint(out_dir: str | Path, preset: str = "tiny", seed: int = 0, layout: str = "hf",
                     *, experts: str = "mxfp4", **overrides: Any) -> Path:
    """Write a random checkpoint; `overrides` patch config.json fields (e.g. sliding_window=8).

    layout "hf": config.json, generation_config.json, shards + model.safetensors.index.json.
    layout "original": original/config.json + original/model.safetensors. experts "bf16" writes
    dense experts (HF layout only) holding exactly the values the MXFP4 ones would.
    """
    if layout not in ("hf", "original") or experts not in ("mxfp4", "bf16"):
        raise ValueError(f"layout must be hf|original, experts mxfp4|bf16: got {layout}, {experts}")
    hf_cfg = preset_config(preset, **overrides)
    if experts == "bf16":
        if layout == "original":
            raise ValueError("the original layout stores MXFP4 experts only")
        del hf_cfg["quantization_config"]
    config = ModelConfig.from_hf_dict(hf_cfg)
    out = Path(out_dir)
    if layout == "original":
        _write_original(out / "original", hf_cfg, config, seed)
    else:
        _write_hf(out, hf_cfg, config, seed)
    (out / RANDOM_MARKER).write_text(json.dumps({"preset": preset, "seed": seed}) + "\n")
    return out


def is_random_checkpoint(folder: str | Path) -> bool:
    """Whether `folder` was written by write_checkpoint (random weights: output is noise)."""
    return (Path(folder).expanduser() / RANDOM_MARKER).is_file()


def _units(metas: dict[str, torch.Tensor]) -> list[list[str]]:
    """Tensor names grouped into shards: embedding, one per layer, final norm + unembedding."""
    units: dict[str, list[str]] = {}
    for name in metas:
        key = ".".join(name.split(".")[:2]) if name.startswith("block.") else name
        key = "unembedding.weight" if key == "norm.scale" else key
        units.setdefault(key, []).append(name)
    return list(units.values())


def _generate(names: Iterable[str], metas: dict[str, torch.Tensor], config: ModelConfig,
              seed: int) -> Iterator[tuple[str, torch.Tensor]]:
    for name in names:
        yield name, random_tensor(name, metas[name].shape, config, seed)


def _write_original(folder: Path, hf_cfg: dict[str, Any], config: ModelConfig, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(original_config(hf_cfg), indent=2))
    metas = meta_tensors(config)
    write_safetensors(folder / "model.safetensors", metas, _generate(metas, metas, config, seed))


def _write_hf(folder: Path, hf_cfg: dict[str, Any], config: ModelConfig, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": 199998, "do_sample": True, "eos_token_id": [200002, 199999, 200012],
        "pad_token_id": 199999, "transformers_version": hf_cfg["transformers_version"]}, indent=2))
    metas = meta_tensors(config)
    units = _units(metas)
    weight_map: dict[str, str] = {}
    total = 0
    for n, names in enumerate(units):
        file = f"model-{n:05d}-of-{len(units) - 1:05d}.safetensors"
        hf_metas = {k: t for name in names for k, t in to_hf(name, metas[name], config)}
        hf_data = (pair for name, t in _generate(names, metas, config, seed)
                   for pair in to_hf(name, t, config))
        total += write_safetensors(folder / file, hf_metas, hf_data)
        weight_map.update(dict.fromkeys(hf_metas, file))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / HF_INDEX).write_text(json.dumps(index, indent=2))


def tiny_checkpoint(folder: Path) -> Path:
    """The tiny random checkpoint, written once (atomically) into `folder`."""
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=folder.parent))
    write_checkpoint(tmp, preset="tiny", seed=0)
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
