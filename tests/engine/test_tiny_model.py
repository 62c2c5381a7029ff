"""The engine on the real gpt-oss forward pass (tiny random checkpoint, window 8, blocks of 4):
batched greedy generation with shared prefixes equals each prompt alone, also under a KV cache
small enough to force preemption, and equals transformers' GptOssForCausalLM.generate."""

from __future__ import annotations

import random

import pytest
import torch

from gptoss_serve import LLM, SamplingParams

pytest.importorskip("gptoss_serve.model.synthetic")
from gptoss_serve.model.synthetic import write_checkpoint  # noqa: E402

NEW = 10
GREEDY = SamplingParams(temperature=0.0, max_tokens=NEW)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("engine-tiny"), preset="tiny", seed=11,
                            sliding_window=8)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    rng = random.Random(0)
    head = [rng.randrange(1000, 5000) for _ in range(13)]
    return [head + [rng.randrange(1000, 5000) for _ in range(n)] if i % 2 else
            [rng.randrange(1000, 5000) for _ in range(n)]
            for i, n in enumerate([1, 3, 9, 17, 22, 5, 30, 2])]


def make_llm(path, **kw) -> LLM:
    kw.setdefault("kv_cache_memory_gib", 1 / 1024)  # ~500 blocks: the invariant check stays cheap
    return LLM(path, dtype="float32", device="cpu", block_size=4, debug_invariants=True,
               max_num_seqs=8, max_num_batched_tokens=16, **kw)


def test_batched_equals_alone_and_survives_preemption(checkpoint, prompts):
    llm = make_llm(checkpoint)
    batched = [o.token_ids for o in llm.generate(prompts, GREEDY)]
    assert llm.engine.stats().prefix_cache_hit_tokens > 0
    alone = [llm.generate([p], GREEDY)[0].token_ids for p in prompts]
    assert batched == alone
    assert all(len(t) == NEW for t in batched)
    # full pool: 1 full layer x 4 tokens x 2 kv heads x 16 dims x 4 bytes x 2 (K, V) per block
    small = make_llm(checkpoint, kv_cache_memory_gib=56 * 1024 / (1 << 30))
    cramped = [o.token_ids for o in small.generate(prompts, GREEDY)]
    assert small.engine.stats().num_preemptions > 0
    assert cramped == batched


def test_greedy_equals_transformers_generate(checkpoint, prompts):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GptOssForCausalLM.from_pretrained(
        checkpoint, dtype=torch.float32,
        quantization_config=transformers.Mxfp4Config(dequantize=True)).eval()
    ours = make_llm(checkpoint).generate(prompts[2:5], GREEDY)
    for prompt, out in zip(prompts[2:5], ours, strict=True):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False)
        assert out.token_ids == ref[0, len(prompt):].tolist()


def test_greedy_screen_steps_equal_the_logits_steps(checkpoint, prompts):
    """Greedy steps of the CPU set take the screen (`greedy_tokens`) instead of the logits; the
    tokens are those of the same engine computing every logit."""
    import dataclasses

    llm = make_llm(checkpoint)
    model = llm.engine.runner.model
    if model.kernels.argmax_index is None or model._argmax is None:
        pytest.skip("no C kernel for the greedy screen here")
    found, calls = model.greedy_tokens, []

    def counted(h):
        ids = found(h)
        calls.append(0 if ids is None else len(ids))
        return ids

    model.greedy_tokens = counted
    screened = [o.token_ids for o in llm.generate(prompts, GREEDY)]
    assert sum(calls) > 0 and 0 in calls  # steps of more than MAX_ROWS rows take the logits
    model.kernels = dataclasses.replace(model.kernels, argmax_index=None)
    calls.clear()
    plain = [o.token_ids for o in llm.generate(prompts, GREEDY)]
    assert screened == plain and not any(calls)


def test_greedy_rows_that_need_logits_get_them(checkpoint, prompts):
    """A temperature-0 request with logprobs or a logit_bias is not answered by the screen:
    every token has its logprobs, and the bias is applied."""
    llm = make_llm(checkpoint)
    with_logprobs = SamplingParams(temperature=0.0, max_tokens=4, logprobs=2, ignore_eos=True)
    (out,) = llm.generate(prompts[:1], with_logprobs)
    seq = out.outputs[0]
    assert len(seq.logprobs) == len(seq.token_ids) == 4
    assert [lp.token_id for lp in seq.logprobs] == seq.token_ids
    assert seq.token_ids == llm.generate(prompts[:1], GREEDY)[0].token_ids[:4]
    biased = SamplingParams(temperature=0.0, max_tokens=3, logit_bias=((4242, 100.0),))
    assert llm.generate(prompts[:1], biased)[0].token_ids == [4242] * 3
