"""LLMEngine through the real ModelRunner, ForwardBatch and sampler, on a fake model that keeps its
state in the paged KV cache (tests/engine/fakes.py): batching, prefix hits, preemption and
sibling sequences must not change a single token. Also KV sizing and the offline LLM."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch
from fakes import KVEchoModel, next_token, tiny_config

from gptoss_serve.config import CacheConfig, SchedulerConfig
from gptoss_serve.engine.engine import LLMEngine
from gptoss_serve.engine.model_runner import ModelRunner, plan_kv_cache
from gptoss_serve.engine.request import SamplingParams
from gptoss_serve.errors import StartupError
from gptoss_serve.llm import LLM, split_engine_kwargs

CONFIG = tiny_config(layers=3, window=8, max_position_embeddings=4096)  # sliding, full, sliding
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)


def make_llm(full_blocks: int = 1000, budget: int = 32, max_seqs: int = 16,
             caching: bool = True) -> LLM:
    """An engine whose full pool has `full_blocks` blocks of 4 tokens."""
    cache = CacheConfig(block_size=4, enable_prefix_caching=caching)
    sched = SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget,
                            debug_invariants=True)
    plan = replace(plan_kv_cache(CONFIG, cache, sched, torch.float32, budget=1 << 30),
                   num_full_blocks=full_blocks)
    runner = ModelRunner(KVEchoModel(CONFIG), CONFIG, plan, 4, torch.float32,
                         torch.device("cpu"))
    return LLM.from_engine(LLMEngine(runner, CONFIG, cache, sched, num_full_blocks=full_blocks,
                                     num_sliding_blocks=plan.num_sliding_blocks))


def prompts_with_shared_prefixes(count: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    heads = [[rng.randrange(90) for _ in range(rng.randrange(5, 30))] for _ in range(3)]
    return [rng.choice(heads + [[]]) + [rng.randrange(90) for _ in range(rng.randrange(1, 25))]
            for _ in range(count)]


def reference(prompt: list[int], n: int) -> list[int]:
    ctx, out = list(prompt), []
    for _ in range(n):
        out.append(next_token(ctx))
        ctx.append(out[-1])
    return out


def test_batched_greedy_equals_each_prompt_alone():
    prompts = prompts_with_shared_prefixes(14)
    llm = make_llm()
    batched = [o.token_ids for o in llm.generate(prompts, GREEDY)]
    alone = [make_llm().generate([p], GREEDY)[0].token_ids for p in prompts[:4]]
    assert batched[:4] == alone
    assert batched == [reference(p, 16) for p in prompts]
    assert llm.engine.stats().prefix_cache_hit_tokens > 0


def test_tiny_kv_cache_forces_preemption_without_changing_tokens():
    prompts = prompts_with_shared_prefixes(10, seed=1)
    llm = make_llm(full_blocks=24, budget=16)
    got = [o.token_ids for o in llm.generate(prompts, GREEDY)]
    assert llm.engine.stats().num_preemptions > 0
    assert got == [reference(p, 16) for p in prompts]
    assert llm.engine.stats().full_blocks_used == 0


def test_seeded_sampling_survives_preemption_and_prefix_caching_settings():
    prompts = prompts_with_shared_prefixes(8, seed=2)
    params = [SamplingParams(temperature=5.0, seed=i, max_tokens=12, ignore_eos=True)
              for i in range(len(prompts))]
    roomy = [o.token_ids for o in make_llm().generate(prompts, params)]
    small = make_llm(full_blocks=20, budget=8, caching=False)
    cramped = [o.token_ids for o in small.generate(prompts, params)]
    assert small.engine.stats().num_preemptions > 0
    assert roomy == cramped
    assert roomy != [reference(p, 12) for p in prompts]  # really sampled


def test_n_siblings_share_the_prompt_and_sample_independently():
    llm = make_llm()
    params = SamplingParams(temperature=5.0, seed=3, max_tokens=10, n=3, ignore_eos=True,
                            logprobs=2)
    out = llm.generate([list(range(30))], params)[0]
    seqs = [s.token_ids for s in out.outputs]
    assert len({tuple(s) for s in seqs}) == 3
    assert all(len(s.logprobs) == 10 and s.finish_reason == "length" for s in out.outputs)
    assert llm.engine.stats().prefix_cache_hit_tokens == 2 * 28  # 7 blocks each, twice
    again = make_llm().generate([list(range(30))], params)[0]
    assert [s.token_ids for s in again.outputs] == seqs


def test_stop_on_eos_reports_stop():
    prompt = next(p for p in prompts_with_shared_prefixes(200, seed=4)
                  if CONFIG.vocab_size - 1 in reference(p, 30))
    out = make_llm().generate([prompt], SamplingParams(temperature=0.0, max_tokens=30))[0]
    assert out.outputs[0].finish_reason == "stop"
    assert out.token_ids[-1] == CONFIG.vocab_size - 1
    assert out.token_ids == reference(prompt, len(out.token_ids))


def test_engine_from_model_sizes_the_cache_from_the_budget():
    cache = CacheConfig(block_size=4, kv_cache_memory_gib=100_000 / (1 << 30))
    engine = LLMEngine.from_model(KVEchoModel(CONFIG), cache, SchedulerConfig(max_num_seqs=4,
                                  max_num_batched_tokens=16))
    assert engine.runner.kv_cache.k[0].shape[0] == engine.runner.plan.num_sliding_blocks
    assert engine.runner.kv_cache.k[1].shape[0] == engine.runner.plan.num_full_blocks
    assert engine.max_model_len == engine.runner.plan.num_full_blocks * 4


def test_kv_plan_splits_pools_and_refuses_a_budget_too_small():
    cache = CacheConfig(block_size=4)
    sched = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=16)
    plan = plan_kv_cache(CONFIG, cache, sched, torch.float32, budget=100_000)
    assert plan.num_sliding_blocks == 4 * (2 + 1) + 4
    assert plan.bytes_per_sliding_block == 2 * plan.bytes_per_full_block  # 2 sliding, 1 full
    assert plan.total_bytes <= 100_000 < plan.total_bytes + plan.bytes_per_full_block
    with pytest.raises(StartupError, match="too small"):
        plan_kv_cache(CONFIG, cache, sched, torch.float32, budget=2_000)


def test_engine_kwargs_split_into_cache_and_scheduler_configs():
    cache, sched = split_engine_kwargs({"block_size": 8, "max_num_seqs": 3})
    assert cache.block_size == 8 and sched.max_num_seqs == 3
    with pytest.raises(TypeError, match="bogus"):
        split_engine_kwargs({"bogus": 1})
