"""Triton MXFP4 (and dense) grouped-matmul MoE against moe_ref.

Interpreter on CPU, compiled on CUDA. Fresh random weights each run (the seed is in each failure
message), widths that are not multiples of the tiles, experts that no token picks, one token,
an expert that takes every token (several row tiles), both tile configurations; the output
buffer is NaN-poisoned before the call.
"""

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from gptoss_serve.formats.mxfp4 import quantize  # noqa: E402
from gptoss_serve.kernels.moe import ExpertWeights, moe_ref, route  # noqa: E402
from gptoss_serve.kernels.moe_gemv_triton import GemvTiles, moe_gemv  # noqa: E402
from gptoss_serve.kernels.moe_triton import (  # noqa: E402
    DECODE,
    GEMV_MAX_PAIRS,
    PREFILL,
    MoETiles,
    expert_tiles,
    moe_triton,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = MoETiles(block_m=16, block_n=32, block_k=64)


def make(t, h=96, inter=64, n_exp=5, mxfp4=True, dtype=torch.float32):
    seed = random.SystemRandom().randrange(2**31)
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    w1, w2 = r(n_exp, 2 * inter, h) * 0.3, r(n_exp, h, inter) * 0.3
    b1, b2 = r(n_exp, 2 * inter), r(n_exp, h)
    if mxfp4:
        (q1, s1), (q2, s2) = quantize(w1), quantize(w2)
        ew = ExpertWeights(b1, b2, w1_blocks=q1, w1_scales=s1, w2_blocks=q2, w2_scales=s2)
    else:
        ew = ExpertWeights(b1, b2, w1=w1.to(dtype), w2=w2.to(dtype))
    ew = ExpertWeights(**{k: v.to(DEV) if v is not None else None for k, v in vars(ew).items()})
    x = (r(t, h) * 2).to(dtype).to(DEV)
    return seed, x, r(n_exp, h).to(dtype).to(DEV), r(n_exp).to(dtype).to(DEV), ew


def run(seed, x, rw, rb, ew, top_k, tol=2e-4, **opts):
    out = torch.full_like(x, float("nan"))
    got = moe_triton(x, rw, rb, ew, top_k, 7.0, 1.702, out=out, **opts)
    ref = moe_ref(x, rw, rb, ew, top_k, 7.0, 1.702)
    assert got.data_ptr() == out.data_ptr()
    assert not torch.isnan(got).any(), f"seed {seed}: unwritten rows"
    torch.testing.assert_close(got.float(), ref.float(), atol=tol, rtol=tol,
                               msg=lambda m: f"seed {seed}: {m}")


@pytest.mark.parametrize("t,top_k,h,inter", [(1, 2, 96, 64), (13, 2, 160, 96), (6, 4, 96, 64)])
def test_mxfp4_matches_reference(t, top_k, h, inter):
    run(*make(t, h=h, inter=inter), top_k, tiles=SMALL)


def test_prefill_tiles_and_heuristic_default():
    seed, x, rw, rb, ew = make(9)
    run(seed, x, rw, rb, ew, 2, tiles=MoETiles(block_m=32, block_n=64, block_k=64))
    run(seed, x, rw, rb, ew, 2)  # DECODE or PREFILL, whichever the heuristic picks


def test_one_expert_takes_every_token_and_others_stay_empty():
    seed, x, rw, rb, ew = make(37, n_exp=6)
    rb = torch.tensor([0, 0, 500.0, 0, 600.0, 0], device=DEV)  # experts 4 and 2 always win
    ids, _ = route(x, rw, rb, 2)
    assert set(ids.unique().tolist()) == {2, 4}
    run(seed, x, rw, rb, ew, 2, tiles=SMALL)  # 37 rows per expert: three 16-row tiles each


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # sigmoid of a very low gate
def test_clamp_is_exercised():
    seed, x, rw, rb, ew = make(5)
    ew.w1_bias.mul_(20)  # pre-activations far beyond the +-7 limit on both sides
    run(seed, x * 4, rw, rb, ew, 2, tiles=SMALL, tol=5e-4)


def test_dense_expert_weights():
    run(*make(7, mxfp4=False), 2, tiles=SMALL)


def test_bfloat16_activations():
    """The grouped path keeps bf16 activations between its matmuls on CUDA (the reference keeps
    float32), so errors scale with the output's magnitude rather than each element's."""
    seed, x, rw, rb, ew = make(8, dtype=torch.bfloat16)
    ref = moe_ref(x, rw, rb, ew, 2, 7.0, 1.702).float()
    got = moe_triton(x, rw, rb, ew, 2, 7.0, 1.702, tiles=SMALL).float()
    scale = ref.abs().max().item()
    torch.testing.assert_close(got, ref, atol=1e-2 * scale, rtol=3e-2,
                               msg=lambda m: f"seed {seed}: {m}")


# ---- the matrix-vector path for a few tokens (moe_gemv_triton.py) ----------------------------
GEMV_SMALL = GemvTiles(block_n=16, block_k=32)  # several input steps and output blocks


@pytest.mark.parametrize("t,top_k,h,inter,mxfp4", [(1, 4, 96, 64, True), (3, 2, 160, 96, True),
                                                   (16, 4, 96, 64, True), (5, 2, 96, 64, False)])
def test_gemv_path_matches_reference(t, top_k, h, inter, mxfp4):
    run(*make(t, h=h, inter=inter, mxfp4=mxfp4), top_k, gemv=GEMV_SMALL)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # sigmoid of a very low gate
def test_gemv_path_is_the_default_for_few_pairs_and_clamps(monkeypatch):
    import gptoss_serve.kernels.moe_triton as mt

    calls = []
    monkeypatch.setattr(mt, "moe_gemv", lambda *a: calls.append(a[0].shape[0]) or moe_gemv(*a))
    seed, x, rw, rb, ew = make(3)
    ew.w1_bias.mul_(20)  # pre-activations beyond the +-7 limit on both sides
    run(seed, x * 4, rw, rb, ew, 2, tol=5e-4)  # 6 pairs
    many = GEMV_MAX_PAIRS // 2 + 1
    run(*make(many), 2)  # just over the limit: the grouped matmul
    assert calls == [3]


def test_gemv_bfloat16_activations_stay_float32_inside():
    run(*make(4, dtype=torch.bfloat16), 4, gemv=GEMV_SMALL, tol=2e-2)


def test_zero_tokens():
    seed, x, rw, rb, ew = make(1)
    assert moe_triton(x[:0], rw, rb, ew, 2).shape == (0, x.shape[1])


def test_expert_tiles_cover_every_pair_once():
    n_exp, bm = 7, 4
    ids = torch.randint(0, n_exp, (11, 3))
    pairs, expert, lo, hi = expert_tiles(ids, n_exp, bm)
    assert len(expert) == min(n_exp, 33) + -(-33 // bm)
    seen = []
    for e, a, b in zip(expert.tolist(), lo.tolist(), hi.tolist(), strict=True):
        if e < 0:
            continue
        rows = pairs[a:min(a + bm, b)].long()
        assert (ids.reshape(-1)[rows] == e).all()
        seen += rows.tolist()
    assert sorted(seen) == list(range(33))


def test_tile_presets_fit_the_real_shapes():
    for cfg in (DECODE, PREFILL):
        assert cfg.block_k % 32 == 0 and cfg.block_m >= 16 and cfg.block_n >= 16
