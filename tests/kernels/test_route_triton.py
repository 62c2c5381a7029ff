"""The fused routing kernel (router GEMV + top-k + softmax) against `moe.route`.

Interpreter on CPU, compiled on CUDA. Fresh random inputs each run (the seed is in each failure
message); expert counts that are and are not powers of two, hidden sizes that are not multiples
of the kernel's step, k from 1 to 4, float32 and bfloat16 activations, equal logits, and the
`moe_triton` decode path taking it.
"""

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from gptoss_serve.kernels.moe import route  # noqa: E402
from gptoss_serve.kernels.route_triton import route_triton  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(t: int, h: int, n_exp: int, dtype=torch.float32):
    seed = random.SystemRandom().randrange(2**31)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g).to(dtype).to(DEV)
    w = (torch.randn(n_exp, h, generator=g) * 0.2).to(dtype).to(DEV)
    b = torch.randn(n_exp, generator=g).to(dtype).to(DEV)
    return seed, x, w, b


@pytest.mark.parametrize("t,h,n_exp,top_k", [(1, 96, 32, 4), (3, 200, 5, 2), (7, 64, 128, 4),
                                             (2, 130, 12, 1), (4, 96, 6, 3)])
def test_matches_route(t, h, n_exp, top_k):
    seed, x, w, b = inputs(t, h, n_exp)
    ids, weights = route_triton(x, w, b, top_k, block_k=32)
    want_ids, want_w = route(x, w, b, top_k)
    assert ids.dtype == torch.int64 and weights.dtype == torch.float32
    assert torch.equal(ids, want_ids), f"seed {seed}"
    torch.testing.assert_close(weights, want_w, atol=1e-6, rtol=1e-5,
                               msg=lambda m: f"seed {seed}: {m}")


def test_bfloat16_logits_are_rounded_like_linear():
    """Picks on the bf16 logits `linear` returns; where two round to one value the kernel
    takes the lower id, so compare the picked logits and the weights, not the ids."""
    seed, x, w, b = inputs(5, 96, 32, torch.bfloat16)
    ids, weights = route_triton(x, w, b, 4)
    logits = torch.nn.functional.linear(x, w, b).float()
    want_ids, want_w = route(x, w, b, 4)
    torch.testing.assert_close(logits.gather(1, ids), logits.gather(1, want_ids), atol=0, rtol=0,
                               msg=lambda m: f"seed {seed}: {m}")
    torch.testing.assert_close(weights, want_w, atol=1e-6, rtol=1e-5,
                               msg=lambda m: f"seed {seed}: {m}")


def test_equal_logits_take_the_lower_id_first():
    x = torch.ones(1, 8, device=DEV)
    w = torch.zeros(6, 8, device=DEV)
    b = torch.tensor([0.0, 3.0, 1.0, 3.0, 2.0, 3.0], device=DEV)
    ids, weights = route_triton(x, w, b, 4)
    assert ids.tolist() == [[1, 3, 5, 4]]
    p = torch.softmax(torch.tensor([3.0, 3.0, 3.0, 2.0]), 0)
    torch.testing.assert_close(weights.cpu(), p[None, :])


@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract")  # inf - inf
def test_nan_logits_still_pick_real_experts():
    """A NaN router output must not become an out-of-range expert id (the MoE kernels would
    read outside the weights); like topk, NaN counts as the largest logit."""
    x = torch.ones(2, 8, device=DEV)
    w = torch.zeros(6, 8, device=DEV)
    b = torch.tensor([0.0, float("nan"), 1.0, 3.0, 2.0, float("nan")], device=DEV)
    ids, _ = route_triton(x, w, b, 4)
    assert torch.equal(ids, route(x, w, b, 4)[0])
    assert ids.tolist() == [[1, 5, 3, 4]] * 2


def test_zero_tokens_and_bad_arguments():
    _, x, w, b = inputs(2, 64, 8)
    ids, weights = route_triton(x[:0], w, b, 4)
    assert ids.shape == (0, 4) and weights.shape == (0, 4)
    with pytest.raises(ValueError, match="top_k"):
        route_triton(x, w, b, 9)
    with pytest.raises(ValueError, match="contiguous"):
        route_triton(x.t().contiguous().t(), w, b, 2)


def test_the_decode_path_routes_through_it(monkeypatch):
    from test_moe_triton import make, run

    import gptoss_serve.kernels.moe_triton as mt

    calls = []
    monkeypatch.setattr(mt, "route_triton",
                        lambda *a, **k: calls.append(a[0].shape[0]) or route_triton(*a, **k))
    seed, x, rw, rb, ew = make(3)
    run(seed, x, rw, rb, ew, 4)  # 12 pairs: the matrix-vector path
    run(*make(mt.GEMV_MAX_PAIRS), 2)  # the grouped matmul keeps `route`
    assert calls == [3]
