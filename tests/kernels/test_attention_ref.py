"""Reference attention: paged == dense (random block tables, mixed prefill/decode batches, windows
with out-of-window blocks marked -1), and dense == transformers' eager attention with sinks."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

from gptoss_serve.kernels.attention import dense_attention_ref, paged_attention_ref

HQ, HKV, D, BS = 4, 2, 8, 4
SCALE = D**-0.5


def _seq(t: int, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    return (torch.randn(t, HQ, D, generator=g), torch.randn(t, HKV, D, generator=g),
            torch.randn(t, HKV, D, generator=g))


def _eager(q, k, v, sinks, window):
    """transformers' eager attention with an additive causal (+window) mask."""
    t = q.shape[0]
    pos = torch.arange(t)
    allowed = pos[None, :] <= pos[:, None]
    if window:
        allowed &= pos[None, :] > pos[:, None] - window
    mask = torch.zeros(t, t).masked_fill(~allowed, float("-inf"))[None, None]
    module = SimpleNamespace(num_key_value_groups=HQ // HKV, sinks=sinks, training=False)
    out, _ = eager_attention_forward(module, q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                     v.transpose(0, 1)[None], mask, scaling=SCALE)
    return out[0]


@pytest.mark.parametrize("window", [0, 3, 8])
def test_dense_matches_transformers_eager(window):
    g = torch.Generator().manual_seed(window)
    q, k, v = _seq(13, g)
    sinks = torch.randn(HQ, generator=g) * 2
    ours = dense_attention_ref(q, k, v, sinks, SCALE, window)
    assert torch.allclose(ours, _eager(q, k, v, sinks, window), atol=1e-5, rtol=1e-5)


def test_sink_only_lowers_the_weights():
    g = torch.Generator().manual_seed(0)
    q, k, v = _seq(5, g)
    v = torch.ones_like(v)  # output = sum of probabilities
    out = dense_attention_ref(q, k, v, torch.full((HQ,), 3.0), SCALE, 0)
    assert bool((out < 1).all()) and bool((out > 0).all())
    no_sink = dense_attention_ref(q, k, v, torch.full((HQ,), -1e9), SCALE, 0)
    assert torch.allclose(no_sink, torch.ones_like(no_sink))


def _run_paged(seqs, window, g, rng):
    """Feed each sequence in steps (list of chunk lengths per step); compare with dense."""
    total = sum(len(s[0]) for s in seqs)
    blocks = list(range(total // BS + 4 * len(seqs)))
    rng.shuffle(blocks)  # random physical placement
    tables, at = [], 0
    for q, _, _ in seqs:
        n = -(-len(q) // BS)
        tables.append(blocks[at:at + n])
        at += n
    kc = torch.zeros(len(blocks), BS, HKV, D)
    vc = torch.zeros_like(kc)
    sinks = torch.randn(HQ, generator=g)
    done = [0] * len(seqs)
    out = [torch.empty_like(s[0]) for s in seqs]
    while any(d < len(s[0]) for d, s in zip(done, seqs, strict=True)):
        live = [i for i in range(len(seqs)) if done[i] < len(seqs[i][0])]
        step = [(i, rng.choice([1, 1, 2, 5])) for i in live]
        _paged_step(seqs, tables, step, done, out, kc, vc, sinks, window)
    for (q, k, v), o in zip(seqs, out, strict=True):
        assert torch.allclose(o, dense_attention_ref(q, k, v, sinks, SCALE, window), atol=1e-5)


def _paged_step(seqs, tables, step, done, out, kc, vc, sinks, window):
    qs, ks, vs, slots, qsl, lens, rows = [], [], [], [], [0], [], []
    for i, n in step:
        q, k, v = seqs[i]
        lo, hi = done[i], min(done[i] + n, len(q))
        qs.append(q[lo:hi]), ks.append(k[lo:hi]), vs.append(v[lo:hi])
        slots += [tables[i][p // BS] * BS + p % BS for p in range(lo, hi)]
        qsl.append(qsl[-1] + hi - lo)
        lens.append(hi)
        first_key = lo - window + 1 if window else 0  # blocks wholly before it left the window
        rows.append([b if (j + 1) * BS > first_key else -1 for j, b in enumerate(tables[i])])
    width = max(len(r) for r in rows)
    table = torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.int32)
    o = paged_attention_ref(torch.cat(qs), torch.cat(ks), torch.cat(vs), kc, vc,
                            torch.tensor(slots), table, torch.tensor(qsl, dtype=torch.int32),
                            torch.tensor(lens, dtype=torch.int32), sinks, SCALE, window)
    for (i, _), a, b in zip(step, qsl, qsl[1:], strict=False):
        out[i][done[i]:done[i] + b - a] = o[a:b]
        done[i] += b - a


@pytest.mark.parametrize("window,seed", [(0, 0), (0, 1), (5, 2), (8, 3), (4, 4)])
def test_paged_equals_dense_mixed_batches(window, seed):
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    seqs = [_seq(rng.randint(1, 23), g) for _ in range(4)]
    _run_paged(seqs, window, g, rng)


def test_missing_block_inside_window_is_an_error():
    g = torch.Generator().manual_seed(0)
    q, k, v = _seq(6, g)
    kc, vc = torch.zeros(4, BS, HKV, D), torch.zeros(4, BS, HKV, D)
    table = torch.tensor([[-1, 1]], dtype=torch.int32)  # keys 0..3 absent, yet needed (no window)
    with pytest.raises(ValueError, match="absent"):
        paged_attention_ref(q[4:], k[4:], v[4:], kc, vc, torch.tensor([4, 5]), table,
                            torch.tensor([0, 2], dtype=torch.int32),
                            torch.tensor([6], dtype=torch.int32), torch.zeros(HQ), SCALE, 0)
