"""Frozen configuration dataclasses: the model (from config.json) and the engine's knobs.

Owns parsing of both checkpoint config layouts (Hugging Face and `original/`).
Knows nothing of torch, files beyond config.json, or HTTP.

Follows transformers' `configuration_gpt_oss.py: GptOssConfig` and openai/gpt-oss
`gpt_oss/torch/model.py: ModelConfig`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SLIDING = "sliding_attention"
FULL = "full_attention"


@dataclass(frozen=True)
class ModelConfig:
    """gpt-oss hyper-parameters (docs/model-facts.md §1). Defaults are gpt-oss-120b's."""

    num_hidden_layers: int = 36
    hidden_size: int = 2880
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    head_dim: int = 64
    num_experts: int = 128
    experts_per_token: int = 4
    intermediate_size: int = 2880
    vocab_size: int = 201088
    sliding_window: int = 128
    layer_types: tuple[str, ...] = ()
    max_position_embeddings: int = 131072
    initial_context_length: int = 4096
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_ntk_alpha: float = 1.0  # beta_slow
    rope_ntk_beta: float = 32.0  # beta_fast
    rms_norm_eps: float = 1e-5
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    eos_token_ids: tuple[int, ...] = (200002, 200012)
    pad_token_id: int = 199999
    experts_mxfp4: bool = True  # False when the checkpoint stores bf16 experts

    def __post_init__(self) -> None:
        if not self.layer_types:
            types = tuple(SLIDING if i % 2 == 0 else FULL for i in range(self.num_hidden_layers))
            object.__setattr__(self, "layer_types", types)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries, "
                f"num_hidden_layers is {self.num_hidden_layers}"
            )
        bad = set(self.layer_types) - {SLIDING, FULL}
        if bad:
            raise ValueError(f"unknown layer_types {sorted(bad)}")

    # ---- derived ---------------------------------------------------------------------------
    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    @property
    def sliding_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == SLIDING]

    @property
    def full_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == FULL]

    # ---- parsing ---------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Parse a Hugging Face config.json (`rope_scaling` or transformers-5 `rope_parameters`)."""
        rope = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
        theta = rope.get("rope_theta", d.get("rope_theta", 150000.0))
        eos = d.get("eos_token_id", 200002)
        eos_ids = tuple(eos) if isinstance(eos, list) else (eos,)
        quant = d.get("quantization_config") or {}
        return cls(
            num_hidden_layers=d["num_hidden_layers"],
            hidden_size=d["hidden_size"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d["num_key_value_heads"],
            head_dim=d.get("head_dim", d["hidden_size"] // d["num_attention_heads"]),
            num_experts=d.get("num_local_experts", d.get("num_experts", 128)),
            experts_per_token=d.get("num_experts_per_tok", d.get("experts_per_token", 4)),
            intermediate_size=d["intermediate_size"],
            vocab_size=d["vocab_size"],
            sliding_window=d.get("sliding_window") or 128,
            layer_types=tuple(d.get("layer_types") or ()),
            max_position_embeddings=d.get("max_position_embeddings", 131072),
            initial_context_length=rope.get(
                "original_max_position_embeddings", d.get("initial_context_length", 4096)
            ),
            rope_theta=float(theta),
            rope_scaling_factor=float(rope.get("factor", 32.0)),
            rope_ntk_alpha=float(rope.get("beta_slow", 1.0)),
            rope_ntk_beta=float(rope.get("beta_fast", 32.0)),
            rms_norm_eps=d.get("rms_norm_eps", 1e-5),
            swiglu_limit=d.get("swiglu_limit", 7.0),
            swiglu_alpha=d.get("swiglu_alpha", 1.702),
            eos_token_ids=tuple(sorted(set(eos_ids) | {200002, 200012})),
            pad_token_id=d.get("pad_token_id", 199999) or 199999,
            experts_mxfp4=quant.get("quant_method") == "mxfp4",
        )

    @classmethod
    def from_original_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Parse an `original/config.json` (the reference ModelConfig fields)."""
        n = d["num_hidden_layers"]
        return cls(
            num_hidden_layers=n,
            hidden_size=d["hidden_size"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d["num_key_value_heads"],
            head_dim=d["head_dim"],
            num_experts=d["num_experts"],
            experts_per_token=d["experts_per_token"],
            intermediate_size=d["intermediate_size"],
            vocab_size=d["vocab_size"],
            sliding_window=d["sliding_window"],
            initial_context_length=d["initial_context_length"],
            max_position_embeddings=int(d["initial_context_length"] * d["rope_scaling_factor"]),
            rope_theta=float(d["rope_theta"]),
            rope_scaling_factor=float(d["rope_scaling_factor"]),
            rope_ntk_alpha=float(d["rope_ntk_alpha"]),
            rope_ntk_beta=float(d["rope_ntk_beta"]),
            swiglu_limit=d.get("swiglu_limit", 7.0),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        """Read a config.json; an `original/` config is recognised by its `num_experts` key."""
        d = json.loads(Path(path).read_text())
        if "num_local_experts" in d or "model_type" in d:
            return cls.from_hf_dict(d)
        return cls.from_original_dict(d)


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache."""

    block_size: int = 16
    kv_cache_memory_gib: float | None = None  # explicit budget; None: fraction of free memory
    gpu_memory_utilization: float = 0.90
    cpu_kv_cache_gib: float = 1.0  # CPU default when no budget is given
    enable_prefix_caching: bool = True


@dataclass(frozen=True)
class SchedulerConfig:
    """Batching limits of one engine step."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    debug_invariants: bool = False  # check block-manager invariants after every step


@dataclass(frozen=True)
class ServerConfig:
    """What the HTTP layer needs to know."""

    served_model_names: tuple[str, ...] = ("gpt-oss",)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    current_date: str | None = "today"  # "today" (UTC), "YYYY-MM-DD", or None for no date
    reasoning_content_alias: bool = True
    max_queue: int = 1024  # requests admitted and not yet started before new ones get a 429
    default_max_tokens: int = 1024
    max_body_bytes: int = 16 << 20  # larger request bodies get a 413
    public_metrics: bool = False  # /metrics without the API key (/health never needs it)
    responses_db: str | None = ":memory:"  # SQLite file of /v1/responses; None: --no-store
    max_tool_turns: int = 8  # built-in tool calls the server runs per response
    default_max_reasoning_tokens: int | None = None  # chat requests without max_reasoning_tokens
    extra: dict[str, Any] = field(default_factory=dict)
