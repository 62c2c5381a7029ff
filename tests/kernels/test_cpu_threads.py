"""The CPU thread rule: small steps run torch's operators on one thread while the C kernels keep
the configured count; larger steps, nested uses and exceptions leave torch's setting intact."""

from __future__ import annotations

import pytest
import torch

from gptoss_serve.kernels import cpu_threads as ct
from gptoss_serve.kernels import logits_cpu as lc


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_small_step_uses_one_torch_thread_and_all_kernel_threads(two_threads):
    with ct.step_threads(1):
        assert torch.get_num_threads() == 1
        assert ct.kernel_threads() == 2
        assert lc.row_parts(10 * lc.MIN_ROWS_PER_THREAD) == 2
        with ct.step_threads(1):  # nested: unchanged
            assert torch.get_num_threads() == 1 and ct.kernel_threads() == 2
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2 and ct.kernel_threads() == 2


def test_large_step_and_errors_keep_the_setting(two_threads):
    with ct.step_threads(ct.SMALL_STEP_TOKENS + 1):
        assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError), ct.step_threads(1):
        raise RuntimeError("step failed")
    assert torch.get_num_threads() == 2 and ct.kernel_threads() == 2


def test_small_step_logits_equal_the_configured_ones(two_threads):
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(1, 64, generator=g), torch.randn(3000, 64, generator=g).bfloat16()
    want = lc.logits_cpu(x, weight)
    with ct.step_threads(1):
        assert torch.equal(lc.logits_cpu(x, weight), want)
