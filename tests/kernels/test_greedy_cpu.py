"""The int8 screen's argmax against the argmax of the full bf16 logits (`logits_cpu`), including
ties, rows the screen cannot separate, and the cases where it must decline."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from gptoss_serve.kernels.greedy_cpu import MAX_ROWS, ArgmaxIndex, _load
from gptoss_serve.kernels.logits_cpu import logits_cpu

pytestmark = pytest.mark.skipif(_load()[0] is None, reason="no C kernel here")


def _weight(v: int, h: int, seed: int, std: float = 0.02) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(v, h, generator=gen) * std).to(torch.bfloat16)


def _exact(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return logits_cpu(x, w).argmax(dim=-1)


@pytest.mark.parametrize("v,h", [(4099, 64), (20000, 256), (1027, 96)])
def test_argmax_matches_full_logits(v: int, h: int) -> None:
    w = _weight(v, h, seed=v)
    index = ArgmaxIndex.build(w)
    gen = torch.Generator().manual_seed(1)
    for rows in range(1, MAX_ROWS + 1):
        for scale in (0.01, 1.0, 30.0):
            x = torch.randn(rows, h, generator=gen) * scale
            assert torch.equal(index.argmax(x), _exact(x, w))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_ties_go_to_the_first_row(threads: int) -> None:
    """Copies of the best row before it in another slice, after it in its own and at the end."""
    w = _weight(3000, 128, seed=2)
    x = torch.randn(1, 128, generator=torch.Generator().manual_seed(3))
    w[2000] = w[int(_exact(x, w))]
    for at in (2001, 2999, 100):
        w[at] = w[2000]
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        found, computed = ArgmaxIndex.build(w).screen(x)
    finally:
        torch.set_num_threads(saved)
    assert int(found) == 100 == int(_exact(x, w))
    assert int(computed) >= 4  # the copies cannot be told apart without their exact sums


def test_rows_the_screen_cannot_separate() -> None:
    """Rows differing from the best in the last bits of bf16 quantize alike: the exact sums
    decide, whichever of them is largest."""
    gen = torch.Generator().manual_seed(4)
    w = _weight(5000, 256, seed=5)
    x = torch.randn(2, 256, generator=gen)
    for trial in range(5):
        base = w[int(_exact(x[:1], w))].float()
        for at in torch.randint(0, 5000, (40,), generator=gen).tolist():
            noise = torch.randn(256, generator=gen) * base.abs() * 2 ** -7
            w[at] = (base + noise).to(torch.bfloat16)
        found, computed = ArgmaxIndex.build(w).screen(x)
        assert torch.equal(found, _exact(x, w)), trial
        assert int(computed[0]) > 1


def test_large_and_tiny_rows_of_one_matrix() -> None:
    """Per-row scales: a row of huge weights next to rows of tiny ones (and a zero row)."""
    w = _weight(2048, 64, seed=6)
    w[7] *= 1000
    w[9] *= 1e-6
    w[11] = 0
    w[13] = torch.randn(64) * 2.0 ** -128  # subnormal float32 values, down to bf16's 2^-133
    index = ArgmaxIndex.build(w)
    gen = torch.Generator().manual_seed(7)
    for _ in range(20):
        x = torch.randn(1, 64, generator=gen)
        assert torch.equal(index.argmax(x), _exact(x, w))
    x = torch.zeros(1, 64)  # every logit 0: the first row
    assert int(index.argmax(x)) == int(_exact(x, w)) == 0


def test_declines_what_it_cannot_answer_exactly() -> None:
    w = _weight(512, 64, seed=8)
    index = ArgmaxIndex.build(w)
    assert index.argmax(torch.full((1, 64), float("nan"))) is None
    assert index.argmax(torch.tensor([[float("inf")] + [0.0] * 63])) is None
    assert index.argmax(torch.randn(MAX_ROWS + 1, 64)) is None
    assert index.argmax(torch.randn(0, 64)) is None
    bad = w.clone()
    bad[3, 3] = float("inf")
    assert ArgmaxIndex.build(bad) is None
    assert ArgmaxIndex.build(_weight(512, 48, seed=9)) is None  # hidden size not a multiple of 32
    assert ArgmaxIndex.build(w.float()) is None


def _near_copies(best: torch.Tensor, n: int, step: torch.Tensor, gen: torch.Generator
                 ) -> torch.Tensor:
    """n copies of `best` [H], each moved by +-step at a few random positions."""
    rows = best.repeat(n, 1)
    for r in rows:
        at = torch.randint(0, best.numel(), (3,), generator=gen)
        r[at] += step[at] * (torch.randint(0, 2, (3,), generator=gen) * 2 - 1)
    return rows


def _weight_rounding_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Activations the screen quantizes without error (integers, the largest 127) and two
    copies of the best row: one truly better by 0.41 * 100 quantization steps that quantizes
    like the original (row 20), one better by 0.59 steps that quantizes one step up (row 30).
    The screen ranks row 30 first; only the bound on the weights' rounding keeps row 20 in."""
    gen = torch.Generator().manual_seed(10)
    x = torch.randint(-20, 21, (1, 64), generator=gen).float()
    x[0, :3] = torch.tensor([127.0, 100.0, 1.0])
    w = torch.randint(-8, 9, (300, 64), generator=gen).float() * 2 ** -10
    w[:, 0] = 127 * 2 ** -10  # every row's scale 2^-10
    w[:, 1:3] = 3 * 2 ** -10
    best = w[int(_exact(x, w.bfloat16()))].clone()
    w[10], w[20], w[30] = best, best, best
    w[20, 1] = 3.40625 * 2 ** -10  # -> q 3: screen +0, true +40.6 steps
    w[30, 2] = 3.59375 * 2 ** -10  # -> q 4: screen +1, true +0.59
    return w.bfloat16(), x


@pytest.mark.parametrize("scale", [0, -70])
def test_weight_rounding_alone_decides(scale: int) -> None:
    """Also with the weights scaled by 2^-70 and x by 2^70 (the same float32 logits; the
    rounding statistics would underflow if computed in float32)."""
    w, x = _weight_rounding_case()
    w, x = (w.float() * 2.0 ** scale).bfloat16(), x * 2.0 ** -scale
    index = ArgmaxIndex.build(w)
    q, s = index.q.double(), index.scale.double()
    assert int((s[:, None] * q @ x[0].double()).argmax()) == 30  # the screen alone
    assert int(_exact(x, w)) == 20 == int(index.argmax(x))


def test_activation_rounding_alone_decides() -> None:
    """Weights the screen holds without error (scale * int8, scale a power of two): only the
    bound on the activations' rounding separates the near-copies of the best row."""
    gen = torch.Generator().manual_seed(12)
    q = torch.randint(-127, 128, (3000, 128), generator=gen).float()
    q[:, 0] = 127
    x = torch.randn(1, 128, generator=gen)
    best = q[int(_exact(x, (q * 2 ** -10).bfloat16()))]
    step = torch.ones(128)
    q[:1500] = _near_copies(best, 1500, step, gen).clamp(-127, 127)
    q[:, 0] = 127
    w = (q * 2 ** -10).bfloat16()
    assert torch.equal(w.float(), q * 2 ** -10)  # exactly representable
    found, computed = ArgmaxIndex.build(w).screen(x)
    assert torch.equal(found, _exact(x, w))
    assert int(computed) > 1


def test_values_below_float32_normal_range() -> None:
    """Products and sums under 2^-126 round on an absolute grid: a tie of two smallest
    subnormals, the first row wins."""
    w = torch.zeros(3, 32)
    w[:, 1] = 1.0
    w[:, 0] = torch.tensor([1.0, 1.3984375, -1.0])
    x = torch.zeros(1, 32)
    x[0, 0] = 2.0 ** -149
    w = w.bfloat16()
    assert int(ArgmaxIndex.build(w).argmax(x)) == int(_exact(x, w)) == 0


def test_a_smaller_thread_team_than_asked_for() -> None:
    """OMP_THREAD_LIMIT / OMP_DYNAMIC can give fewer threads than slices: every slice still
    runs (a fresh process: libgomp reads these at start)."""
    code = ("import torch; from gptoss_serve.kernels.greedy_cpu import ArgmaxIndex;"
            "from gptoss_serve.kernels.logits_cpu import logits_cpu;"
            "torch.set_num_threads(4); g = torch.Generator().manual_seed(0);"
            "w = (torch.randn(4096, 64, generator=g) * 0.02).bfloat16();"
            "i = ArgmaxIndex.build(w); xs = [torch.randn(2, 64, generator=g) for _ in range(20)];"
            "print(all(torch.equal(i.argmax(x), logits_cpu(x, w).argmax(-1)) for x in xs))")
    for env in ({"OMP_THREAD_LIMIT": "1"}, {"OMP_DYNAMIC": "true"}):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == "True", (env, out.stderr[-500:])
