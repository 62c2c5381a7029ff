"""The model runner: owns the weights and the KV tensors; a SchedulerOutput in, sampled tokens out.

KV sizing (`plan_kv_cache`): the budget is `kv_cache_memory_gib`, else on CUDA the part of free
memory that keeps total use under `gpu_memory_utilization` minus a reserve for activations and
logits, else on CPU `cpu_kv_cache_gib`. Pool split: the sliding pool gets what every running
sequence needs for its window plus one full prefill chunk
(`max_num_seqs * (ceil(window / block_size) + 1) + ceil(max_num_batched_tokens / block_size)`
blocks, at most half the budget); the full pool gets the rest. Blocks of the two pools cost
`block bytes * number of layers of that kind`.

Owns torch tensors of the cache, the ForwardBatch build and the call of the sampler; knows nothing
of request queues, HTTP or harmony.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from gptoss_serve.config import CacheConfig, ModelConfig, SchedulerConfig
from gptoss_serve.engine.forward_batch import ForwardBatch, KVCache, SeqSlice
from gptoss_serve.engine.sampler import Sampler, SamplingRow, noise_key
from gptoss_serve.engine.scheduler import SchedulerOutput
from gptoss_serve.engine.sequence import SampledToken, Sequence
from gptoss_serve.errors import StartupError

log = logging.getLogger(__name__)
GIB = 1 << 30


@dataclass(frozen=True)
class KVPlan:
    """How many blocks each pool gets, and what they cost."""

    num_full_blocks: int
    num_sliding_blocks: int
    bytes_per_full_block: int  # one block across all full-attention layers (K and V)
    bytes_per_sliding_block: int  # one block across all sliding-window layers
    budget_bytes: int

    @property
    def total_bytes(self) -> int:
        return (self.num_full_blocks * self.bytes_per_full_block
                + self.num_sliding_blocks * self.bytes_per_sliding_block)


def kv_budget_bytes(cache: CacheConfig, sched: SchedulerConfig, config: ModelConfig,
                    device: torch.device) -> int:
    if cache.kv_cache_memory_gib is not None:
        return int(cache.kv_cache_memory_gib * GIB)
    if device.type != "cuda":
        return int(cache.cpu_kv_cache_gib * GIB)
    free, total = torch.cuda.mem_get_info(device)
    # activations of one chunk plus float32 logits and a sort buffer for every sequence
    reserve = GIB + sched.max_num_batched_tokens * config.hidden_size * 64 \
        + sched.max_num_seqs * config.vocab_size * 4 * 6
    return int(free - total * (1 - cache.gpu_memory_utilization) - reserve)


def plan_kv_cache(config: ModelConfig, cache: CacheConfig, sched: SchedulerConfig,
                  dtype: torch.dtype, budget: int) -> KVPlan:
    """Split `budget` bytes between the two pools (see the module docstring)."""
    bs = cache.block_size
    per = KVCache.bytes_per_block(bs, config.num_key_value_heads, config.head_dim, dtype)
    per_full, per_slide = per * len(config.full_layers), per * len(config.sliding_layers)
    want_slide = sched.max_num_seqs * (-(-config.sliding_window // bs) + 1) \
        + -(-sched.max_num_batched_tokens // bs)
    slide = want_slide if per_slide == 0 else min(want_slide, budget // 2 // per_slide)
    max_len = sched.max_model_len or config.max_position_embeddings
    if per_full == 0:
        full = -(-max_len // bs) * sched.max_num_seqs
    else:
        full = (budget - slide * per_slide) // per_full
    plan = KVPlan(full, slide, per_full, per_slide, budget)
    min_slide = -(-(config.sliding_window - 1 + sched.max_num_batched_tokens) // bs) + 1
    if full < 2 or slide < min_slide:
        raise StartupError(
            f"KV budget of {budget / GIB:.3f} GiB is too small: {full} full blocks and {slide} "
            f"sliding blocks (one sequence needs {min_slide} sliding blocks); raise the KV "
            "memory or lower max_num_batched_tokens")
    return plan


class ModelRunner:
    """Runs one step: SchedulerOutput -> ForwardBatch -> model -> logits -> sampler."""

    def __init__(self, model: torch.nn.Module, config: ModelConfig, plan: KVPlan,
                 block_size: int, dtype: torch.dtype, device: torch.device):
        self.model = model
        self.config = config
        self.plan = plan
        self.block_size = block_size
        self.device = device
        self.sampler = Sampler()
        self.kv_cache = KVCache.allocate(
            [config.is_sliding(i) for i in range(config.num_hidden_layers)],
            plan.num_full_blocks, plan.num_sliding_blocks, block_size,
            config.num_key_value_heads, config.head_dim, dtype, device)
        log.info("KV cache: %d full blocks, %d sliding blocks of %d tokens, %.3f GiB",
                 plan.num_full_blocks, plan.num_sliding_blocks, block_size,
                 plan.total_bytes / GIB)

    @classmethod
    def create(cls, model: torch.nn.Module, config: ModelConfig, cache: CacheConfig,
               sched: SchedulerConfig) -> ModelRunner:
        """Size the KV cache for `model` (its floating dtype and device) and allocate it."""
        param = next(p for p in model.parameters() if p.is_floating_point())
        budget = kv_budget_bytes(cache, sched, config, param.device)
        plan = plan_kv_cache(config, cache, sched, param.dtype, budget)
        return cls(model, config, plan, cache.block_size, param.dtype, param.device)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> list[SampledToken]:
        """Compute the step's new tokens; logits only where a token is sampled."""
        slices = [SeqSlice(s.seq.token_ids[s.start_pos:s.start_pos + s.num_new_tokens],
                           s.start_pos, s.seq.full_blocks, s.seq.sliding_blocks, s.sample)
                  for s in out.scheduled]
        batch = ForwardBatch.build(slices, self.block_size, self.device)
        logits = self.model.forward(batch, self.kv_cache)
        return self.sampler.sample(logits.float(), [sampling_row(s.seq) for s in out.sampling])


def sampling_row(seq: Sequence) -> SamplingRow:
    """What the sampler needs to know about the next token of `seq`."""
    params = seq.params
    k = seq.num_output_tokens
    penalised = params.frequency_penalty or params.presence_penalty
    banned = tuple(seq.group.stop_ids) if k < params.min_tokens else ()
    return SamplingRow(params, noise_key(seq.group.sample_seed, seq.index, k),
                       seq.output_token_ids if penalised else [], banned)
