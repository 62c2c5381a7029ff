"""The model runner: owns the weights and the KV tensors; a SchedulerOutput in, sampled tokens out.

KV sizing (`plan_kv_cache`): the budget is `kv_cache_memory_gib`, else on CUDA the part of free
memory that keeps total use under `gpu_memory_utilization` minus a reserve for activations and
logits, else on CPU `cpu_kv_cache_gib`. Pool split: the sliding pool gets what every running
sequence needs for its window plus one full prefill chunk
(`max_num_seqs * (ceil(window / block_size) + 1) + ceil(max_num_batched_tokens / block_size)`
blocks, at most half the budget); the full pool gets the rest. Blocks of the two pools cost
`block bytes * number of layers of that kind`.

Decode-only steps go through `static_decode.PaddedDecode` (static buffers, CUDA graphs) when the
device is CUDA, the model runs the Triton kernels and graphs are not switched off
(`cuda_graphs=False`, `--enforce-eager`); `static_decode=True` forces the padded path without
graphs (the CPU tests). Prefill and mixed steps run eagerly. On CPU a small step runs torch's
operators on one thread (`kernels/cpu_threads.py`). `plan_for_gpu` is the same sizing
as a pure function of the card's size, for the 120b-on-80-GB memory plan.

The step's inputs come from `persistent_batch.PersistentBatch` (block tables kept between steps,
updated incrementally; one asynchronous copy per dtype to the device).

Owns torch tensors of the cache, the step's inputs and the call of the sampler; knows nothing
of request queues, HTTP or harmony.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from gptoss_serve.config import CacheConfig, ModelConfig, SchedulerConfig
from gptoss_serve.engine.persistent_batch import PersistentBatch
from gptoss_serve.engine.sampler import Sampler, SamplingRow, noise_key
from gptoss_serve.engine.scheduler import SchedulerOutput
from gptoss_serve.engine.sequence import SampledToken, Sequence
from gptoss_serve.engine.static_decode import PaddedDecode, decode_batch_sizes
from gptoss_serve.errors import StartupError
from gptoss_serve.formats.forward_batch import KVCache
from gptoss_serve.kernels.cpu_threads import step_threads

log = logging.getLogger(__name__)
GIB = 1 << 30
CAPACITY_LENGTHS = (131072, 8192)  # start-up prints how many sequences of these lengths fit


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
    return gpu_kv_budget(free, total, cache, sched, config)


def gpu_kv_budget(free: int, total: int, cache: CacheConfig, sched: SchedulerConfig,
                  config: ModelConfig) -> int:
    """KV bytes on a GPU with `free` of `total` bytes left after the weights."""
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


def sequences_fitting(plan: KVPlan, length: int, block_size: int) -> int:
    """How many sequences of `length` tokens the full-attention pool holds at once (the
    sliding pool is sized for max_num_seqs windows)."""
    return plan.num_full_blocks // -(-length // block_size)


@dataclass(frozen=True)
class MemoryPlan:
    """Weights plus KV on one GPU."""

    gpu_bytes: int
    weights_bytes: int
    kv: KVPlan
    block_size: int

    def sequences(self, length: int) -> int:
        return sequences_fitting(self.kv, length, self.block_size)


def plan_for_gpu(config: ModelConfig, dtype: torch.dtype, gpu_bytes: int, weights_bytes: int,
                 cache: CacheConfig, sched: SchedulerConfig) -> MemoryPlan:
    """The start-up sizing on a card of `gpu_bytes` that holds only this model's weights."""
    budget = gpu_kv_budget(gpu_bytes - weights_bytes, gpu_bytes, cache, sched, config)
    kv = plan_kv_cache(config, cache, sched, dtype, budget)
    return MemoryPlan(gpu_bytes, weights_bytes, kv, cache.block_size)


class ModelRunner:
    """Runs one step: SchedulerOutput -> ForwardBatch -> model -> logits -> sampler."""

    def __init__(self, model: torch.nn.Module, config: ModelConfig, plan: KVPlan,
                 block_size: int, dtype: torch.dtype, device: torch.device, *,
                 max_num_seqs: int = 256, max_model_len: int | None = None,
                 cuda_graphs: bool = True, static_decode: bool | None = None):
        self.model = model
        self.config = config
        self.plan = plan
        self.block_size = block_size
        self.device = device
        self.sampler = Sampler()
        self.inputs = PersistentBatch(block_size, device, rows=max_num_seqs)
        self.kv_cache = KVCache.allocate(
            [config.is_sliding(i) for i in range(config.num_hidden_layers)],
            plan.num_full_blocks, plan.num_sliding_blocks, block_size,
            config.num_key_value_heads, config.head_dim, dtype, device)
        log.debug("KV cache: %d full blocks, %d sliding blocks of %d tokens, %.3f GiB",
                  plan.num_full_blocks, plan.num_sliding_blocks, block_size,
                  plan.total_bytes / GIB)  # the server's start-up summary says it once
        self.capacity_description = "KV capacity: " + ", ".join(
            f"{sequences_fitting(plan, n, block_size)} sequence(s) of {n} tokens"
            for n in CAPACITY_LENGTHS)
        log.debug(self.capacity_description)
        decode, how = self._decode_path(max_num_seqs, max_model_len, cuda_graphs, static_decode)
        self.decode: PaddedDecode | None = decode
        self.decode_description = f"decode step: {how}"
        log.debug(self.decode_description)

    def _decode_path(self, max_num_seqs: int, max_model_len: int | None, cuda_graphs: bool,
                     static_decode: bool | None) -> tuple[PaddedDecode | None, str]:
        """The padded decode path and a line saying whether graphs run, and why not."""
        kernels = getattr(self.model, "kernels", None)
        why_not = ("switched off (--enforce-eager)" if not cuda_graphs
                   else f"need CUDA, device is {self.device.type}" if self.device.type != "cuda"
                   else "need the Triton kernels" if not getattr(kernels, "is_triton", False)
                   else "")
        graphs = not why_not
        if not (graphs if static_decode is None else static_decode):
            return None, f"eager (CUDA graphs {why_not})"
        max_len = min(max_model_len or self.config.max_position_embeddings,
                      self.plan.num_full_blocks * self.block_size)
        sizes = decode_batch_sizes(max_num_seqs)
        path = PaddedDecode(self.model, self.kv_cache, self.block_size,
                            -(-max_len // self.block_size), sizes, self.device, graphs=graphs)
        path.capture()
        how = f"CUDA graphs for batch sizes {sizes}" if graphs else \
            f"padded to batch sizes {sizes}, eager (CUDA graphs {why_not})"
        return path, how

    @classmethod
    def create(cls, model: torch.nn.Module, config: ModelConfig, cache: CacheConfig,
               sched: SchedulerConfig, *, cuda_graphs: bool = True,
               static_decode: bool | None = None) -> ModelRunner:
        """Size the KV cache for `model` (its floating dtype and device) and allocate it."""
        param = next(p for p in model.parameters() if p.is_floating_point())
        budget = kv_budget_bytes(cache, sched, config, param.device)
        plan = plan_kv_cache(config, cache, sched, param.dtype, budget)
        return cls(model, config, plan, cache.block_size, param.dtype, param.device,
                   max_num_seqs=sched.max_num_seqs, max_model_len=sched.max_model_len,
                   cuda_graphs=cuda_graphs, static_decode=static_decode)

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> list[SampledToken]:
        """Compute the step's new tokens; logits only where a token is sampled."""
        host = self.inputs.host_batch(out.scheduled)
        tokens = host.input_ids.shape[0] if self.device.type == "cpu" else 0
        with step_threads(tokens) if tokens else contextlib.nullcontext():
            rows = [sampling_row(s.seq) for s in out.sampling]
            if self.decode is not None and self.decode.accepts_batch(host):
                logits = self.decode.run_batch(host)
            else:
                batch = self.inputs.to_device(host)
                if not (Sampler.argmax_only(rows) and hasattr(self.model, "greedy_tokens")):
                    logits = self.model.forward(batch, self.kv_cache)
                else:  # a greedy step: the model may find the tokens without every logit
                    h = self.model.hidden(batch, self.kv_cache)
                    ids = self.model.greedy_tokens(h)
                    if ids is not None:
                        return [SampledToken(t) for t in ids.tolist()]
                    logits = self.model.logits(h)
            masks = out.token_masks
            return self.sampler.sample(logits.float(), rows,
                                       None if masks is None else (masks.rows, masks.wait()))


def sampling_row(seq: Sequence) -> SamplingRow:
    """What the sampler needs to know about the next token of `seq`."""
    params = seq.params
    k = seq.num_output_tokens
    penalised = params.frequency_penalty or params.presence_penalty
    banned = tuple(seq.group.stop_ids) if k < params.min_tokens else ()
    key = noise_key(seq.group.sample_seed, seq.index, k) if params.temperature > 0 else 0
    return SamplingRow(params, key,
                       seq.output_token_ids if penalised else [], banned,
                       constrained=params.constraint is not None)
