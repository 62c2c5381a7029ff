"""DecodeGraphs: padded-size choice everywhere; capture and replay contract on a CUDA GPU."""

import pytest
import torch

from gptoss_serve.kernels.cuda_graph import DecodeGraphs


def test_padded_size_picks_the_smallest_captured_size_at_least_n():
    g = DecodeGraphs(lambda bs: torch.zeros(bs), [8, 1, 4, 2, 4])
    assert g.batch_sizes == [1, 2, 4, 8]
    assert [g.padded_size(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, None]
    with pytest.raises(ValueError):
        DecodeGraphs(lambda bs: torch.zeros(bs), [0, 4])


def test_disabled_or_uncaptured_runs_eagerly():
    calls = []
    g = DecodeGraphs(lambda bs: calls.append(bs) or torch.arange(bs), [2, 4], enabled=False)
    g.capture()  # a no-op when disabled: no CUDA needed
    assert g.run(3).tolist() == [0, 1, 2] and calls == [3]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_replay_reads_static_buffers_and_pads():
    pytest.importorskip("triton")
    from gptoss_serve.kernels.norm_triton import rms_norm_triton

    x = torch.zeros(16, 64, device="cuda")  # static input, room for an eager call above 8
    w = torch.rand(64, device="cuda")
    calls = []

    def step(bs):
        calls.append(bs)
        return rms_norm_triton(x[:bs], w, 1e-5).sum(-1)

    g = DecodeGraphs(step, [2, 8])
    g.capture()
    n_calls = len(calls)
    for n in (1, 2, 5):
        live = torch.randn(n, 64, device="cuda")
        x[:n].copy_(live)
        x[n:].zero_()
        got = g.run(n)
        assert len(calls) == n_calls  # replayed, not re-run
        assert got.shape == (n,)
        torch.testing.assert_close(got, rms_norm_triton(live, w, 1e-5).sum(-1))
    assert len(g.run(9)) == 9 and calls[-1] == 9  # above every size: eager
