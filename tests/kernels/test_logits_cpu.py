"""CPU logits from a bf16 unembedding (C kernel and upcast-chunk fallback) against float64 and
against `logits_ref`; what the CPU kernel set does with the unembedding of a loaded model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from gptoss_serve.config import ModelConfig
from gptoss_serve.formats.mxfp4 import dequantize
from gptoss_serve.kernels import cpu_c
from gptoss_serve.kernels import logits_cpu as lc
from gptoss_serve.kernels.logits import logits_ref
from gptoss_serve.kernels.select import choose_kernels
from gptoss_serve.model.synthetic import write_checkpoint
from gptoss_serve.model.weights import load_model


def _inputs(v: int, h: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(v, h, generator=g) / h ** 0.5).bfloat16()
    return torch.randn(m, h, generator=g), weight


def _exact(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (x.double() @ weight.double().T).float()


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("v,h,m", [(4099, 64, 1), (8190, 96, 3), (4, 8, 2), (3, 16, 1),
                                   (5003, 72, 32), (1030, 40, 0), (2053, 20, 5)])
def test_logits_cpu_matches_float64(threads, v, h, m):
    x, weight = _inputs(v, h, m, v + m)
    got = lc.logits_cpu(x, weight)
    assert got.dtype == torch.float32 and got.shape == (m, v)
    torch.testing.assert_close(got, _exact(x, weight), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, logits_ref(x, weight), atol=1e-5, rtol=1e-5)


def test_row_does_not_depend_on_batch(threads):
    x, weight = _inputs(4101, 128, 7, 3)
    batch = lc.logits_cpu(x, weight)
    for i in (0, 3, 6):
        assert torch.equal(lc.logits_cpu(x[i:i + 1], weight)[0], batch[i])


def test_fallback_without_c_kernel(monkeypatch):
    x, weight = _inputs(lc.CHUNK_ROWS + 77, 64, 3, 5)
    monkeypatch.setattr(lc, "_load", lambda: (None, "test: no compiler"))
    torch.testing.assert_close(lc.logits_cpu(x, weight), _exact(x, weight), atol=1e-5, rtol=1e-5)
    assert "upcast chunks" in lc.bf16_logits_status()


def test_non_bf16_weight_is_the_reference():
    x, weight = _inputs(300, 64, 2, 9)
    assert torch.equal(lc.logits_cpu(x, weight.float()), logits_ref(x, weight.float()))
    assert logits_ref(x.bfloat16(), weight).dtype == torch.float32


def test_cpu_set_keeps_unembedding_bf16(tmp_path):
    write_checkpoint(tmp_path, "tiny", seed=1, vocab_size=3001)
    config = ModelConfig.from_file(tmp_path / "config.json")
    fast = load_model(tmp_path, "float32", "cpu", choose_kernels("cpu", torch.float32))
    ref = load_model(tmp_path, "float32", "cpu", "reference")
    assert fast.unembedding.weight.dtype == torch.bfloat16
    assert ref.unembedding.weight.dtype == torch.float32
    assert torch.equal(fast.unembedding.weight.float(), ref.unembedding.weight)
    for fb, rb in zip(fast.block, ref.block, strict=True):  # densified to bf16 at load, exactly
        assert torch.equal(fb.mlp.mlp1_weight.blocks, rb.mlp.mlp1_weight.blocks)  # kept packed
        assert torch.equal(fb.mlp.mlp2_weight.scales, rb.mlp.mlp2_weight.scales)  # for decode
        assert fb.mlp.mlp1_weight.weight.dtype == torch.bfloat16
        want = dequantize(rb.mlp.mlp2_weight.blocks, rb.mlp.mlp2_weight.scales, torch.float32)
        assert torch.equal(fb.mlp.mlp2_weight.weight.float(), want)
    h = torch.randn(5, config.hidden_size)
    torch.testing.assert_close(fast.kernels.logits(h, fast.unembedding.weight),
                               ref.kernels.logits(h, ref.unembedding.weight),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("m", [1, 4])
def test_openmp_and_serial_builds_agree(threads, m):
    """The OpenMP split and the one-thread build compute the same sums, bit for bit."""
    x, weight = _inputs(3001, 64, m, 11)
    outs = []
    for openmp in (True, False):
        try:
            fn = cpu_c.build("logits.c", openmp)
        except (OSError, subprocess.SubprocessError):
            pytest.skip("no C compiler with OpenMP here")
        out = torch.empty(m, weight.shape[0])
        lc._run_c(fn, x, weight, out)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[0], _exact(x, weight), atol=1e-5, rtol=1e-5)


def test_kernel_threads_are_torchs_own():
    """The OpenMP build binds to the libgomp torch already loaded: one OpenMP runtime in the
    process, so the kernel's threads are torch's intra-op pool, not a second one. Checked in a
    fresh process (another library of the test session, e.g. scikit-learn's vendored libgomp,
    may have brought its own runtime into this one)."""
    fn, how = lc._load()
    if fn is None or "OpenMP" not in how or "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("no OpenMP kernel or torch is not built on OpenMP here")
    code = ("import json, torch; from gptoss_serve.kernels import logits_cpu as lc;"
            "lc.logits_cpu(torch.randn(1, 64), torch.randn(600, 64).bfloat16());"
            "print(json.dumps(sorted({l.split()[-1] for l in open('/proc/self/maps')"
            " if 'libgomp' in l or 'libiomp' in l})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    runtimes = json.loads(out.stdout.strip() or "null")
    assert runtimes is not None and len(runtimes) == 1, (runtimes, out.stderr[-500:])


@pytest.mark.parametrize("pairs,n,h", [(4, 1024, 64), (3, 66, 40), (1, 5, 8), (16, 130, 96)])
def test_bf16_pairs_equals_logits_per_pair(threads, pairs, n, h):
    """Each pair's row is `logits_cpu` of its token against its expert's matrix, plus the bias,
    bit for bit (the decode MoE relies on it), and close to float64."""
    g = torch.Generator().manual_seed(pairs * n)
    experts = 7
    weight = (torch.randn(experts, n, h, generator=g) / h ** 0.5).bfloat16()
    bias = torch.randn(experts, n, generator=g)
    x = torch.randn(pairs, h, generator=g)
    ids = torch.randint(0, experts, (pairs,), generator=g)
    got = lc.bf16_pairs(x, weight, bias, ids)
    if got is None:
        pytest.skip("no C kernel here")
    for p in range(pairs):
        e = int(ids[p])
        assert torch.equal(got[p], lc.logits_cpu(x[p:p + 1], weight[e])[0] + bias[e])
        exact = (x[p].double() @ weight[e].double().T + bias[e].double()).float()
        torch.testing.assert_close(got[p], exact, atol=1e-5, rtol=1e-5)


def test_bf16_pairs_declines_what_it_cannot_run():
    weight, bias = torch.zeros(2, 8, 16, dtype=torch.bfloat16), torch.zeros(2, 8)
    ids = torch.zeros(1, dtype=torch.int64)
    assert lc.bf16_pairs(torch.zeros(1, 16), weight.float(), bias, ids) is None
    assert lc.bf16_pairs(torch.zeros(1, 16, dtype=torch.bfloat16), weight, bias, ids) is None
    assert lc.bf16_pairs(torch.zeros(1, 12), weight[..., :12], bias, ids) is None


@pytest.mark.parametrize("rows", [1, 5, lc.BF16_KERNEL_ROWS + 3])
def test_linear_cpu_bf16_weight_matches_reference(rows):
    """Both paths of `linear_cpu` (C kernel for few rows, upcast matmul for many) against
    float64 and against `linear_ref`, which upcasts the bf16 weight."""
    from gptoss_serve.kernels.logits import linear_ref

    g = torch.Generator().manual_seed(rows)
    x, weight = _inputs(200, 64, rows, rows)
    bias = torch.randn(200, generator=g)
    got = lc.linear_cpu(x, weight, bias)
    exact = (x.double() @ weight.double().T + bias.double()).float()
    torch.testing.assert_close(got, exact, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got, linear_ref(x, weight, bias), atol=1e-5, rtol=1e-5)
    if rows <= lc.BF16_KERNEL_ROWS and lc._load()[0] is not None:  # the C paths: the same
        assert torch.equal(got, lc.logits_cpu(x, weight) + bias)  # sums plus the bias, exactly


def test_cpu_set_keeps_attention_projections_bf16(tmp_path):
    write_checkpoint(tmp_path, "tiny", seed=2, vocab_size=1001)
    fast = load_model(tmp_path, "float32", "cpu", choose_kernels("cpu", torch.float32))
    ref = load_model(tmp_path, "float32", "cpu", "reference")
    for fb, rb in zip(fast.block, ref.block, strict=True):
        for name in ("qkv", "out"):
            f, r = getattr(fb.attn, name), getattr(rb.attn, name)
            assert f.weight.dtype == torch.bfloat16 and r.weight.dtype == torch.float32
            assert torch.equal(f.weight.float(), r.weight)  # the checkpoint's bf16 values
            assert f.bias.dtype == torch.float32 and torch.equal(f.bias, r.bias)


@pytest.mark.parametrize("width", [1, 7, 13, 201088])
def test_row_argmax_is_torch_argmax(width):
    """First index on ties, NaN largest (the first NaN), -inf and +inf rows, tails past the
    8-lane body: the same index as `torch.argmax`."""
    g = torch.Generator().manual_seed(width)
    x = torch.randn(8, width, generator=g)
    x[1] = float("-inf")
    x[2, -1] = float("nan")  # NaN in the tail
    x[3, width // 2] = float("inf")
    x[4, width - 1] = x[4, 0] = 40.0  # tie across the body and the tail
    x[5, width // 3] = float("nan")
    x[5, -1] = float("nan")
    x[6] = 0.0
    got = lc.row_argmax(x)
    if got is None:
        pytest.skip("no C kernel here")
    assert torch.equal(got, x.argmax(dim=-1))
    assert lc.row_argmax(x.double()) is None and lc.row_argmax(x[:, :0]) is None
