"""The offline API as users call it: `LLM(model=..., dtype=..., device=...)`."""

from __future__ import annotations

import pytest

from gptoss_serve import LLM, SamplingParams
from gptoss_serve.model.synthetic import write_checkpoint


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> LLM:
    path = write_checkpoint(tmp_path_factory.mktemp("tiny"), preset="tiny", seed=3)
    return LLM(model=str(path), dtype="float32", device="cpu")


def test_keyword_generate_returns_ids_per_prompt(llm):
    prompts = [[200006, 17360, 200008, 3575], [200006, 1844, 31064, 25, 392, 4827]]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    assert len(outs) == len(prompts)
    for prompt, out in zip(prompts, outs, strict=True):
        assert out.prompt_token_ids == prompt
        assert len(out.token_ids) == 6 and all(0 <= t < 201088 for t in out.token_ids)
        assert list(out) == out.token_ids == out and out[0] == out.token_ids[0]
        assert out.outputs[0].finish_reason == "length"
    again = llm.generate(prompt_token_ids=prompts[1:], sampling_params=params)
    assert again[0] == outs[1].token_ids  # greedy is deterministic


def test_n_siblings_and_default_params(llm):
    (out,) = llm.generate(prompt_token_ids=[[200006, 17360, 200008]],
                          sampling_params=SamplingParams(n=3, max_tokens=4, seed=7,
                                                         ignore_eos=True))
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert all(len(o.token_ids) == 4 for o in out.outputs)
    (plain,) = llm.generate(prompt_token_ids=[[200006, 17360]])
    assert 1 <= len(plain.token_ids) <= SamplingParams().max_tokens
