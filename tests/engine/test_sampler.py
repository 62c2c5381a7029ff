"""Sampler properties: seeds reproducible whatever the batch, greedy at temperature 0, truncation
never picks a masked token, penalties and biases move logits as the OpenAI formula says, sampled
frequencies follow softmax(logits / T), logprobs match log_softmax."""

from __future__ import annotations

import math

import pytest
import torch

from gptoss_serve.engine.request import SamplingParams
from gptoss_serve.engine.sampler import Sampler, SamplingRow, greedy, noise_key

V = 50


def rows(n: int, seed0: int = 0, **params) -> list[SamplingRow]:
    p = SamplingParams(**params)
    return [SamplingRow(p, noise_key(seed0 + i, 0, 0)) for i in range(n)]


def random_logits(n: int, seed: int = 0, scale: float = 2.0) -> torch.Tensor:
    return torch.randn(n, V, generator=torch.Generator().manual_seed(seed)) * scale


def test_same_seed_same_tokens_whatever_the_batch():
    logits = random_logits(1)
    mine = [SamplingRow(SamplingParams(temperature=1.0, seed=5), noise_key(5, 0, t))
            for t in range(20)]
    alone = [Sampler().sample(logits, [r])[0].token_id for r in mine]
    batched = []
    for t, r in enumerate(mine):
        others = rows(3, seed0=100 + t, temperature=0.8, top_p=0.9)
        batch = torch.cat([random_logits(2, seed=t), logits, random_logits(1, seed=99)])
        got = Sampler().sample(batch, others[:2] + [r] + others[2:])
        batched.append(got[2].token_id)
    assert alone == batched
    assert len(set(alone)) > 1  # it is really sampling


def test_temperature_zero_is_argmax_and_deterministic():
    logits = random_logits(8)
    greedy = rows(8, temperature=0.0)
    first = [t.token_id for t in Sampler().sample(logits, greedy)]
    again = [t.token_id for t in Sampler().sample(logits, rows(8, seed0=7, temperature=0.0))]
    assert first == again == logits.argmax(dim=-1).tolist()


def draws(logits_row: torch.Tensor, n: int, **params) -> list[int]:
    logits = logits_row.expand(n, V).clone()
    return [t.token_id for t in Sampler().sample(logits, rows(n, **params))]


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_never_picks_outside_the_k_best(k):
    logits = random_logits(1, seed=k)[0]
    allowed = set(logits.topk(k).indices.tolist())
    got = draws(logits, 600, temperature=1.5, top_k=k)
    assert set(got) <= allowed and (k == 1 or len(set(got)) > 1)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.8])
def test_top_p_never_picks_outside_the_nucleus(p):
    logits = random_logits(1, seed=3)[0]
    probs = torch.softmax(logits, dim=-1).tolist()
    order = sorted(range(V), key=lambda i: -probs[i])
    nucleus, mass = set(), 0.0
    for i in order:  # smallest set of best tokens whose mass reaches p (at least one)
        nucleus.add(i)
        mass += probs[i]
        if mass >= p:
            break
    assert set(draws(logits, 600, temperature=1.0, top_p=p)) <= nucleus


def test_min_p_never_picks_a_token_below_the_threshold():
    logits = random_logits(1, seed=4)[0]
    probs = torch.softmax(logits, dim=-1)
    allowed = set(torch.nonzero(probs >= 0.2 * probs.max()).flatten().tolist())
    got = draws(logits, 600, temperature=1.0, min_p=0.2)
    assert set(got) <= allowed and len(set(got)) > 1


def empirical(tokens: list[int]) -> torch.Tensor:
    return torch.bincount(torch.tensor(tokens), minlength=V).float() / len(tokens)


def test_sampled_frequencies_follow_softmax_of_logits_over_temperature():
    logits = random_logits(1, seed=5, scale=1.0)[0]
    got = empirical(draws(logits, 6000, temperature=0.7))
    want = torch.softmax(logits / 0.7, dim=-1)
    assert (got - want).abs().max() < 0.03


def test_penalties_follow_the_openai_formula():
    logits = random_logits(1, seed=6, scale=1.0)
    history = [3, 3, 3, 7, 11, 11]
    params = SamplingParams(temperature=1.0, frequency_penalty=0.4, presence_penalty=0.7)
    row = SamplingRow(params, 0, history)
    counts = torch.bincount(torch.tensor(history), minlength=V).float()
    want = logits[0] - 0.4 * counts - 0.7 * (counts > 0).float()
    got = Sampler()._process(logits, [row])[0]
    torch.testing.assert_close(got, want)
    n = 6000
    batch = logits.expand(n, V).clone()
    sampled = Sampler().sample(batch, [SamplingRow(params, noise_key(i, 0, 0), history)
                                       for i in range(n)])
    freq = empirical([t.token_id for t in sampled])
    assert (freq - torch.softmax(want, dim=-1)).abs().max() < 0.03


def test_logit_bias_and_banned_ids():
    logits = random_logits(4, seed=8)
    target = int(logits[0].argmin())
    biased = [SamplingRow(SamplingParams(temperature=t, logit_bias=((target, 100.0),)), i)
              for i, t in enumerate([0.0, 0.5, 1.0, 2.0])]
    assert [t.token_id for t in Sampler().sample(logits, biased)] == [target] * 4
    best = logits.argmax(dim=-1).tolist()
    banned = [SamplingRow(SamplingParams(temperature=0.0), 0, banned_ids=(b,)) for b in best]
    got = [t.token_id for t in Sampler().sample(logits, banned)]
    assert all(g != b for g, b in zip(got, best, strict=True))


def test_logprobs_match_log_softmax():
    logits = random_logits(3, seed=9)
    params = [SamplingParams(temperature=1.0, logprobs=5), SamplingParams(temperature=0.0),
              SamplingParams(temperature=0.0, logprobs=0)]
    out = Sampler().sample(logits, [SamplingRow(p, i) for i, p in enumerate(params)])
    ref = torch.log_softmax(logits.double(), dim=-1)
    first = out[0].logprob
    assert math.isclose(first.logprob, float(ref[0, first.token_id]), abs_tol=1e-5)
    assert [t for t, _ in first.top] == ref[0].topk(5).indices.tolist()
    assert all(math.isclose(lp, float(ref[0, t]), abs_tol=1e-5) for t, lp in first.top)
    assert sum(math.exp(lp) for _, lp in first.top) <= 1.0 + 1e-6
    assert out[1].logprob is None
    assert out[2].logprob.top == () and out[2].token_id == int(logits[2].argmax())


def test_one_host_sync_per_batch(monkeypatch):
    calls = []
    for name in ("tolist", "item", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _name=name, _orig=original, **kw):
            calls.append(_name)
            return _orig(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    mixed = [
        SamplingParams(temperature=0.0, logit_bias=((3, 2.0),)),
        SamplingParams(temperature=0.9, top_p=0.8, top_k=5, min_p=0.05, seed=1, logprobs=3),
        SamplingParams(temperature=1.2, frequency_penalty=0.5, presence_penalty=0.3),
    ]
    rows_ = [SamplingRow(p, noise_key(i, 0, 0), [1, 2, 2], (4,)) for i, p in enumerate(mixed)]
    Sampler().sample(random_logits(3), rows_)
    assert calls == ["tolist"]


@pytest.mark.parametrize("scale", [0.3, 3.0, 8.0])
def test_candidate_truncation_equals_full_sort(monkeypatch, scale):
    """The CPU path over each row's best logits (exact, with a full-sort fallback) masks exactly
    what sorting the whole vocabulary masks, for every mix of top-k, top-p and min-p."""
    from gptoss_serve.engine import sampler as sampler_mod

    vocab = 4000
    scaled = torch.randn(12, vocab, generator=torch.Generator().manual_seed(7)) * scale
    scaled[3, 17] = float("-inf")  # a banned token
    mixes = [dict(top_p=0.9), dict(top_p=0.5, top_k=40), dict(top_k=7), dict(min_p=0.05),
             dict(min_p=0.2, top_p=0.95), dict(top_p=0.99), dict(), dict(top_k=3, min_p=0.5),
             dict(top_p=0.3), dict(top_p=1.0, min_p=0.01), dict(top_p=0.8, top_k=100),
             dict(top_p=0.999)]
    rows_ = [SamplingRow(SamplingParams(temperature=1.0, **m), 0) for m in mixes]
    calls = []
    original = sampler_mod._truncate_top

    def spy(scaled, width, limits):
        out, closed, reach = original(scaled, width, limits)
        calls.append((width, int(closed.sum())))
        return out, closed, reach

    monkeypatch.setattr(sampler_mod, "_truncate_top", spy)
    monkeypatch.setattr(sampler_mod, "TOP_CANDIDATES", 200)
    fast = Sampler()._truncate(scaled, rows_)
    monkeypatch.setattr(sampler_mod, "TOP_CANDIDATES", vocab)  # too wide: always sorts
    full = Sampler()._truncate(scaled, rows_)
    assert calls[0][0] == 200 and (scale != 8.0 or calls == [(200, 12)])
    assert scale != 0.3 or calls == [(200, 7)]  # flat rows: only top-k or no top-p are exact
    assert torch.equal(torch.isfinite(fast), torch.isfinite(full))
    assert torch.equal(fast[torch.isfinite(fast)], full[torch.isfinite(full)])
    monkeypatch.setattr(sampler_mod, "TOP_CANDIDATES", 200)
    for i in range(len(mixes)):  # each row alone: the candidate path where it can, same mask
        alone = Sampler()._truncate(scaled[i:i + 1], rows_[i:i + 1])
        assert torch.equal(torch.isfinite(alone[0]), torch.isfinite(full[i]))


def test_greedy_is_argmax_on_ties_and_nan():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(6, 201088, generator=g)
    logits[1, 7] = logits[1, 90000] = 50.0  # a tie: the first one wins
    logits[2, 3] = float("nan")  # NaN counts as the largest
    logits[3] = 0.0  # all equal
    assert torch.equal(greedy(logits), logits.argmax(dim=-1))
    assert greedy(logits)[1] == 7 and greedy(logits)[3] == 0


def test_argmax_only_exactly_when_sampling_is_the_plain_argmax():
    """`argmax_only` lets a model skip the logits: true for plain temperature-0 rows, false as
    soon as one row's result needs more than the argmax of the raw logits (each such setting
    is shown to change the result here)."""
    logits = random_logits(1, seed=3)
    top = int(logits.argmax())
    plain = SamplingRow(SamplingParams(temperature=0.0), noise_key(1, 0, 0))
    assert Sampler.argmax_only([plain, plain]) and Sampler.argmax_only([])
    other = (top + 1) % V
    changed = {
        "temperature": SamplingParams(temperature=1.0, seed=1),
        "logprobs": SamplingParams(temperature=0.0, logprobs=0),
        "logit_bias": SamplingParams(temperature=0.0, logit_bias=((other, 100.0),)),
        "frequency": SamplingParams(temperature=0.0, frequency_penalty=2.0),
        "presence": SamplingParams(temperature=0.0, presence_penalty=2.0),
    }
    for name, params in changed.items():
        row = SamplingRow(params, noise_key(1, 0, 0), output_token_ids=[top] * 5)
        assert not Sampler.argmax_only([plain, row]), name
        got = Sampler().sample(logits, [row])[0]
        if name == "temperature":
            draws = {Sampler().sample(logits, [SamplingRow(params, noise_key(1, 0, t))])[0]
                     .token_id for t in range(30)}
            assert draws != {top}
        elif name == "logprobs":
            assert got.logprob is not None and got.token_id == top
        else:
            assert got.token_id != top, name
    banned = SamplingRow(SamplingParams(temperature=0.0), noise_key(1, 0, 0), banned_ids=(top,))
    assert not Sampler.argmax_only([banned])
    assert Sampler().sample(logits, [banned])[0].token_id != top


@pytest.mark.parametrize("temperature", [5e-324, 1e-30, 1e-6])
def test_a_tiny_temperature_is_greedy(temperature):
    """5e-324 is 0 in float32: dividing by it gave inf/NaN logits and token 0 (issue 14.9)."""
    logits = random_logits(8) - 10  # argmax is never token 0 by accident of NaN handling
    logits[:, 0] = -50
    got = [t.token_id for t in Sampler().sample(logits, rows(8, temperature=temperature))]
    assert got == logits.argmax(dim=-1).tolist()
