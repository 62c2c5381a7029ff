"""Triton paged attention (prefill, chunked prefill, split-K decode) against paged_attention_ref.

Runs under the Triton interpreter on CPU (compiled on CUDA when a GPU is present). Inputs are
random and fresh each run (the seed is in every failure message); outputs and every cache slot
no query may see are NaN-poisoned, so unwritten outputs and stray reads both show.
"""

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from gptoss_serve.kernels.attention import paged_attention_ref  # noqa: E402
from gptoss_serve.kernels.attention_triton import paged_attention_triton  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
STALE: list[int] = []


def make_case(seqs, *, bs=4, hq=6, hkv=2, d=16, window=0, dtype=torch.float32, sink_scale=1.0):
    """seqs: list of (cached tokens, new tokens). Returns (seed, kwargs for the attention call).

    Slots below a sequence's window but inside a present block hold old finite keys (as a real
    cache does); their flat ids go to `STALE` for tests that poison them too."""
    seed = random.SystemRandom().randrange(2**31)
    STALE.clear()
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    nblocks = sum(-(-(c + n) // bs) for c, n in seqs) + 3
    perm = torch.randperm(nblocks, generator=g).tolist()
    kc = torch.full((nblocks, bs, hkv, d), float("nan"))
    vc = torch.full((nblocks, bs, hkv, d), float("nan"))
    width = max(-(-(c + n) // bs) for c, n in seqs)
    table = torch.full((len(seqs), width), -1, dtype=torch.int32)
    slots, qsl = [], [0]
    for i, (cached, new) in enumerate(seqs):
        total = cached + new
        see_lo = max(0, cached - window + 1) if window > 0 else 0
        for j in range(-(-total // bs)):
            if (j + 1) * bs <= see_lo:
                continue  # left the window: absent from the table, slots stay NaN
            blk = perm.pop()
            table[i, j] = blk
            for off in range(bs):
                pos = j * bs + off
                if pos < cached:  # cached keys (visible or stale) get real values
                    kc[blk, off], vc[blk, off] = r(hkv, d), r(hkv, d)
                    if pos < see_lo:
                        STALE.append(blk * bs + off)
                elif cached <= pos < total:
                    slots.append(blk * bs + off)
        qsl.append(qsl[-1] + new)
    t = qsl[-1]
    kwargs = dict(
        q=r(t, hq, d).to(dtype), k=r(t, hkv, d).to(dtype), v=r(t, hkv, d).to(dtype),
        k_cache=kc.to(dtype), v_cache=vc.to(dtype),
        slot_mapping=torch.tensor(slots, dtype=torch.int64),
        block_tables=table, query_start_loc=torch.tensor(qsl, dtype=torch.int32),
        seq_lens=torch.tensor([c + n for c, n in seqs], dtype=torch.int32),
        sinks=(r(hq) * sink_scale).to(dtype), sm_scale=d ** -0.5, window=window)
    return seed, {k: v.to(DEV) if torch.is_tensor(v) else v for k, v in kwargs.items()}


def run_both(case, **opts):
    """(reference output, Triton output into a NaN-poisoned buffer, caches after each)."""
    ref_kw = {k: v.clone() if torch.is_tensor(v) else v for k, v in case.items()}
    ref = paged_attention_ref(**ref_kw)
    out = torch.full_like(case["q"], float("nan"))
    got = paged_attention_triton(**case, out=out, **opts)
    assert got.data_ptr() == out.data_ptr()
    return ref, got, ref_kw, case


def check(seed, ref, got, tol=2e-5):
    assert not torch.isnan(got).any(), f"seed {seed}: unwritten or NaN outputs"
    torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol,
                               msg=lambda m: f"seed {seed}: {m}")


MIXED = [(0, 7), (5, 1), (9, 6), (0, 1), (13, 1), (3, 0)]


@pytest.mark.parametrize("splits", [1, 3])
def test_mixed_prefill_chunked_and_decode_full_causal(splits):
    seed, case = make_case(MIXED)
    ref, got, ref_kw, kw = run_both(case, num_splits=splits, block_n=16)
    check(seed, ref, got)
    # the KV write landed in the same slots as the reference's (NaN elsewhere on both sides)
    torch.testing.assert_close(kw["k_cache"], ref_kw["k_cache"], equal_nan=True)
    torch.testing.assert_close(kw["v_cache"], ref_kw["v_cache"], equal_nan=True)


@pytest.mark.parametrize("window", [1, 5, 8])
def test_sliding_window_with_absent_blocks(window):
    seed, case = make_case([(23, 1), (0, 11), (17, 5), (2, 3)], window=window)
    assert (case["block_tables"] < 0).any() or window > 17
    ref = paged_attention_ref(**{k: v.clone() if torch.is_tensor(v) else v
                                 for k, v in case.items()})
    for cache in (case["k_cache"], case["v_cache"]):  # the kernel must not even read them
        cache.view(-1, *cache.shape[2:])[STALE] = float("nan")
    got = paged_attention_triton(**case, block_q=2, block_n=16)
    check(seed, ref, got)


@pytest.mark.parametrize("splits", [2, 5])
def test_split_decode_long_context_many_blocks(splits):
    seed, case = make_case([(61, 1), (30, 1), (1, 1)], bs=2, hq=4, hkv=1, d=32)
    ref, got, _, _ = run_both(case, num_splits=splits, block_n=16)
    check(seed, ref, got)


def test_split_decode_with_window_leaves_empty_splits():
    seed, case = make_case([(40, 1), (6, 1)], window=6)
    ref, got, _, _ = run_both(case, num_splits=4, block_n=16)
    check(seed, ref, got)


@pytest.mark.parametrize("sink_scale", [30.0, -30.0])
def test_dominant_and_negligible_sinks(sink_scale):
    seed, case = make_case([(10, 3), (4, 1)], sink_scale=sink_scale)
    case["sinks"] = torch.sign(torch.tensor(sink_scale)) * (25 + case["sinks"].abs())
    ref, got, _, _ = run_both(case, num_splits=2, block_n=16)
    check(seed, ref, got)
    if sink_scale > 0:  # the sink takes nearly all the mass: outputs shrink towards zero
        assert got.abs().max() < 1e-3


def test_single_token_sequence():
    seed, case = make_case([(0, 1)], hq=2, hkv=2)
    ref, got, _, _ = run_both(case)
    check(seed, ref, got)


def test_bfloat16_inputs_match_within_rounding():
    seed, case = make_case([(6, 5), (11, 1)], dtype=torch.bfloat16, window=4)
    ref, got, _, _ = run_both(case, block_n=16)
    check(seed, ref, got, tol=2e-2)


def test_keys_already_written_are_not_rewritten():
    seed, case = make_case([(3, 4), (8, 1)])
    ref = paged_attention_ref(**{k: v.clone() if torch.is_tensor(v) else v
                                 for k, v in case.items()})
    paged_attention_ref(**case)  # fills the new slots of case's caches
    before = case["k_cache"].clone()
    got = paged_attention_triton(**{**case, "k": None, "v": None}, block_n=16)
    check(seed, ref, got)
    torch.testing.assert_close(case["k_cache"], before, equal_nan=True)


def test_heuristic_tiles_on_default_call():
    seed, case = make_case([(70, 1), (3, 1)], bs=8, hq=8, hkv=1, d=16)
    ref, got, _, _ = run_both(case)
    check(seed, ref, got)
