"""Checkpoint reading: find the files (local folder or hub download), map names, stream tensors in.

Owns both layouts of docs/model-facts.md §3 (Hugging Face and `original/`), the name map between
them (q/k/v rows of the fused qkv, transposed dense experts), dtype/device resolution, the
kernel choice at load, the weights-vs-free-GPU-memory check and the checkpoint errors. Loading
goes tensor by tensor into the model's preallocated tensors, so the weights never exist twice.
Knows nothing of the forward pass beyond the model's tensor names.

Follows transformers' `convert_gpt_oss_weights_to_hf.py` (the name map) and openai/gpt-oss
`gpt_oss/torch/weights.py: Checkpoint`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from gptoss_serve.config import ModelConfig
from gptoss_serve.errors import CheckpointError, StartupError
from gptoss_serve.kernels.select import KernelSet, choose_kernels
from gptoss_serve.model.gpt_oss import GptOssModel

log = logging.getLogger(__name__)

GIB = 1 << 30
HF_INDEX = "model.safetensors.index.json"
HF_ARCHITECTURE = "GptOssForCausalLM"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16}

# our (original-layout) name suffix under `block.N.` -> HF suffix under `model.layers.N.`
_LAYER_NAMES = {
    "attn.norm.scale": "input_layernorm.weight",
    "attn.sinks": "self_attn.sinks",
    "attn.out.weight": "self_attn.o_proj.weight",
    "attn.out.bias": "self_attn.o_proj.bias",
    "mlp.norm.scale": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.router.weight",
    "mlp.gate.bias": "mlp.router.bias",
    "mlp.mlp1_weight.blocks": "mlp.experts.gate_up_proj_blocks",
    "mlp.mlp1_weight.scales": "mlp.experts.gate_up_proj_scales",
    "mlp.mlp1_bias": "mlp.experts.gate_up_proj_bias",
    "mlp.mlp2_weight.blocks": "mlp.experts.down_proj_blocks",
    "mlp.mlp2_weight.scales": "mlp.experts.down_proj_scales",
    "mlp.mlp2_bias": "mlp.experts.down_proj_bias",
}
# dense (bf16) experts: HF stores them transposed, [E, in, out]
_TRANSPOSED = {"mlp.mlp1_weight.weight": "mlp.experts.gate_up_proj",
               "mlp.mlp2_weight.weight": "mlp.experts.down_proj"}
_GLOBAL_NAMES = {"embedding.weight": "model.embed_tokens.weight", "norm.scale": "model.norm.weight",
                 "unembedding.weight": "lm_head.weight"}


# ---- dtype, device, location ---------------------------------------------------------------------
def resolve_device(device: str | torch.device) -> torch.device:
    """"auto": cuda when available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto": bfloat16 on cuda, float32 elsewhere; else float32 / bfloat16 / float16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise StartupError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def resolve_checkpoint(name_or_path: str) -> Path:
    """A local folder as is; a hub name (`owner/name`) downloaded with huggingface_hub."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path}: a checkpoint is a folder, not a file")
        return path
    if name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") != 1:
        raise CheckpointError(f"{name_or_path}: no such checkpoint folder (and not a hub name "
                              "of the form owner/name)")
    return _download(name_or_path)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, ignore_patterns=["original/*", "metal/*"]))
    except Exception as e:  # every hub failure (offline, not found, network) means the same here
        raise CheckpointError(
            f"cannot get checkpoint {repo_id!r} from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Without a network "
            "(or with HF_HUB_OFFLINE=1) pass a local folder instead: download it on a machine with "
            f"a network (`hf download {repo_id} --local-dir DIR`) and give DIR as the model."
        ) from e


# ---- layout --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointFiles:
    """Where one checkpoint's config and tensors are."""

    config_path: Path
    files: tuple[Path, ...]
    layout: str  # "hf" or "original"


def find_checkpoint(folder: Path) -> CheckpointFiles:
    """HF layout at the root wins; else `original/`; else a folder that is itself `original/`."""
    root_cfg, orig_cfg = folder / "config.json", folder / "original" / "config.json"
    if root_cfg.exists() and _is_hf_config(_read_json(root_cfg)):
        return CheckpointFiles(root_cfg, _hf_files(folder), "hf")
    for cfg in (orig_cfg, root_cfg):
        if cfg.exists():
            return CheckpointFiles(cfg, _safetensors_in(cfg.parent), "original")
    raise CheckpointError(f"{folder}: no config.json (nor original/config.json) in this folder")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read JSON ({e})") from e


def _is_hf_config(d: dict) -> bool:
    return "model_type" in d or "architectures" in d or "num_local_experts" in d


def _safetensors_in(folder: Path) -> tuple[Path, ...]:
    files = tuple(sorted(folder.glob("*.safetensors")))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors files")
    return files


def _hf_files(folder: Path) -> tuple[Path, ...]:
    index = folder / HF_INDEX
    if not index.exists():
        return _safetensors_in(folder)
    names = sorted(set(_read_json(index).get("weight_map", {}).values()))
    for name in names:
        _check_inside(folder, name, index)
        if not (folder / name).exists():
            raise CheckpointError(f"{folder / name}: listed in {HF_INDEX} but missing")
    return tuple(folder / n for n in names)


def _check_inside(folder: Path, name: object, index: Path) -> None:
    """A shard named by the index must be a plain file name of this folder: `../x`, absolute
    paths and links out of the folder are refused, not followed."""
    bad = not isinstance(name, str) or not name or Path(name).is_absolute() \
        or ".." in Path(name).parts
    if bad or not (folder / str(name)).resolve().is_relative_to(folder.resolve()):
        raise CheckpointError(f"{index}: shard name {name!r} points outside the checkpoint folder")


def read_config(ckpt: CheckpointFiles) -> ModelConfig:
    """ModelConfig of a checkpoint; unknown architectures and missing keys are CheckpointErrors."""
    d = _read_json(ckpt.config_path)
    if ckpt.layout == "hf":
        arch = d.get("architectures") or []
        if d.get("model_type") != "gpt_oss" and HF_ARCHITECTURE not in arch:
            found = d.get("model_type") or arch or "none"
            raise CheckpointError(f"{ckpt.config_path}: unknown architecture {found!r}; "
                                  f"gptoss-serve runs model_type 'gpt_oss' ({HF_ARCHITECTURE})")
    try:
        if ckpt.layout == "hf":
            return ModelConfig.from_hf_dict(d)
        return ModelConfig.from_original_dict(d)
    except KeyError as e:
        raise CheckpointError(f"{ckpt.config_path}: missing key {e.args[0]!r}") from e
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt.config_path}: {e}") from e


# ---- name map ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """Where one checkpoint tensor goes: our tensor `target`, rows [row0, row1), transposed."""

    target: str
    rows: tuple[int, int] | None = None
    transpose: bool = False


def hf_names(name: str, config: ModelConfig) -> list[tuple[str, Placement]]:
    """HF tensor(s) that make up our tensor `name` (q/k/v for the fused qkv)."""
    if name in _GLOBAL_NAMES:
        return [(_GLOBAL_NAMES[name], Placement(name))]
    _, layer, suffix = name.split(".", 2)
    prefix = f"model.layers.{layer}."
    if suffix in ("attn.qkv.weight", "attn.qkv.bias"):
        kind = suffix.rsplit(".", 1)[1]
        d = config.head_dim
        widths = {"q": config.num_attention_heads * d, "k": config.num_key_value_heads * d,
                  "v": config.num_key_value_heads * d}
        out, row = [], 0
        for part, width in widths.items():
            rows = (row, row + width)
            out.append((f"{prefix}self_attn.{part}_proj.{kind}", Placement(name, rows)))
            row += width
        return out
    if suffix in _TRANSPOSED:
        return [(prefix + _TRANSPOSED[suffix], Placement(name, transpose=True))]
    return [(prefix + _LAYER_NAMES[suffix], Placement(name))]


def to_hf(name: str, tensor: torch.Tensor,
          config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """Our tensor as the HF layout stores it (used by the synthetic checkpoint writer)."""
    for hf_name, place in hf_names(name, config):
        t = tensor[place.rows[0]:place.rows[1]] if place.rows else tensor
        yield hf_name, (t.transpose(1, 2) if place.transpose else t).contiguous()


def expected_tensors(model: GptOssModel, layout: str) -> dict[str, Placement]:
    """Checkpoint tensor name -> placement, for every tensor the model needs."""
    names = list(model.state_dict(keep_vars=True))
    if layout == "original":
        return {n: Placement(n) for n in names}
    return dict(pair for n in names for pair in hf_names(n, model.config))


# ---- loading -------------------------------------------------------------------------------------
def load_model(name_or_path: str | Path, dtype: str | torch.dtype = "auto",
               device: str | torch.device = "auto", kernels: KernelSet | str = "auto"
               ) -> GptOssModel:
    """Read a checkpoint (folder or hub name) into a GptOssModel on `device`.

    `kernels`: a KernelSet, or a preference for `choose_kernels` ("auto", "triton",
    "reference"), decided once here and logged. On CUDA the weights' bytes are checked against
    the free memory before anything is allocated; the model is then allocated on the device
    and every checkpoint tensor is copied straight into its device tensor (one tensor at a
    time on the host, never a full host copy).
    """
    folder = resolve_checkpoint(str(name_or_path))
    ckpt = find_checkpoint(folder)
    config = read_config(ckpt)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if isinstance(kernels, str):
        kernels = choose_kernels(dev, dt, kernels)
    log.info("kernels: %s", kernels.description)
    if dev.type == "cuda":
        check_fits(model_bytes(config, dt), torch.cuda.mem_get_info(dev)[0], dev)
    model = GptOssModel(config, dt, dev, kernels)
    load_weights(model, ckpt)
    model.prepare_greedy()  # first: the dense-experts budget then sees its memory taken
    model.prepare_experts()
    log.info("loaded %s (%s layout) as %s on %s", folder, ckpt.layout, model.dtype, dev)
    return model.eval()


def model_bytes(config: ModelConfig, dtype: torch.dtype) -> int:
    """Bytes of every tensor GptOssModel(config, dtype) holds (experts packed when the
    checkpoint packs them), counted on the meta device without allocating anything."""
    model = GptOssModel(config, dtype, "meta")
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def check_fits(needed: int, free: int, device: torch.device) -> None:
    """StartupError naming both sizes when the weights cannot fit in the free memory."""
    if needed > free:
        raise StartupError(
            f"not enough memory on {device} for the weights: they need {needed / GIB:.2f} GiB "
            f"({needed} bytes), {free / GIB:.2f} GiB ({free} bytes) are free; use a GPU with "
            "more memory, stop other processes on it, or serve a smaller model")


def load_weights(model: GptOssModel, ckpt: CheckpointFiles) -> None:
    """Stream every tensor of `ckpt` into `model`; every expected tensor must appear once."""
    expected = expected_tensors(model, ckpt.layout)
    targets = model.state_dict(keep_vars=True)
    pending = set(expected)
    with tqdm(total=len(expected), desc=f"loading {ckpt.config_path.parent.name}",
              unit="tensor") as bar:
        for path in ckpt.files:
            for key, tensor in _read_file(path):
                if key not in expected:
                    log.warning("%s: ignoring unexpected tensor %s", path, key)
                    continue
                _place(path, key, tensor, targets[expected[key].target], expected[key])
                pending.discard(key)
                bar.update()
    if pending:
        names = sorted(pending)
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        raise CheckpointError(f"{ckpt.config_path.parent}: missing tensor {names[0]}{more} "
                              f"in {', '.join(p.name for p in ckpt.files)}")


def _read_file(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of one safetensors file, one tensor in memory at a time."""
    try:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                yield key, _get(f, path, key)
    except SafetensorError as e:
        raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({e})") from e


def _get(f, path: Path, key: str) -> torch.Tensor:
    try:
        return f.get_tensor(key)
    except (SafetensorError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read tensor {key} ({e})") from e


def _place(path: Path, key: str, src: torch.Tensor, dst: torch.Tensor, place: Placement) -> None:
    """Check shape and dtype of `src`, then copy it into its rows of `dst`."""
    if place.rows:
        dst = dst[place.rows[0]:place.rows[1]]
    if place.transpose:
        dst = dst.transpose(1, 2)
    if tuple(src.shape) != tuple(dst.shape):
        raise CheckpointError(f"{path}: tensor {key} has shape {list(src.shape)}, "
                              f"expected {list(dst.shape)}")
    packed = dst.dtype == torch.uint8
    if (src.dtype == torch.uint8) != packed or not (packed or src.dtype.is_floating_point):
        want = "uint8 (packed MXFP4)" if packed else "a floating-point dtype"
        raise CheckpointError(f"{path}: tensor {key} has dtype {src.dtype}, expected {want}")
    dst.copy_(src)
