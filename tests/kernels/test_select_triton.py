"""choose_kernels: Triton on a capable CUDA GPU, references elsewhere, clear start-up errors.

CUDA is faked by patching the three torch.cuda queries choose_kernels makes, so every branch
runs on CPU; one `gpu` test checks the real device when there is one.
"""

import inspect
import subprocess
import sys

import pytest
import torch

from gptoss_serve.errors import StartupError
from gptoss_serve.kernels.attention import paged_attention_ref
from gptoss_serve.kernels.moe import moe_ref
from gptoss_serve.kernels.norm import rms_norm_ref
from gptoss_serve.kernels.rope import rope_kv_write_ref
from gptoss_serve.kernels.select import choose_kernels


def fake_gpu(monkeypatch, capability, name="Fake GPU"):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: capability)


def test_cpu_gets_the_cpu_set_and_says_why():
    from gptoss_serve.kernels.attention_cpu import paged_attention_cpu
    from gptoss_serve.kernels.moe_cpu import moe_cpu
    from gptoss_serve.kernels.norm_cpu import rms_norm_cpu

    ks = choose_kernels("cpu", torch.float32)
    assert ks.attention is paged_attention_cpu and ks.moe is moe_cpu and not ks.is_triton
    assert ks.rms_norm is rms_norm_cpu and ks.rope_kv_write is rope_kv_write_ref
    assert ks.dense_experts and "CPU" in ks.description and "cpu" in ks.description
    ref = choose_kernels("cpu", torch.float32, prefer="reference")
    assert ref.attention is paged_attention_ref and ref.moe is moe_ref and not ref.dense_experts


def test_importing_and_choosing_on_cpu_never_imports_triton():
    code = ("import sys, torch, gptoss_serve.kernels.select as s; "
            "s.choose_kernels('cpu', torch.float32); import gptoss_serve.model.gpt_oss; "
            "print('triton' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_old_gpu_is_a_startup_error_naming_the_capability(monkeypatch):
    fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    with pytest.raises(StartupError, match=r"Tesla T4.*7\.5.*8\.0"):
        choose_kernels("cuda:0", torch.bfloat16)


def test_capable_gpu_gets_triton_with_signatures_of_the_references(monkeypatch):
    pytest.importorskip("triton")
    fake_gpu(monkeypatch, (9, 0), "NVIDIA H100 80GB HBM3")
    ks = choose_kernels("cuda", torch.bfloat16)
    assert ks.is_triton and "Triton" in ks.description and "sm_90" in ks.description
    pairs = [(ks.attention, paged_attention_ref), (ks.moe, moe_ref),
             (ks.rms_norm, rms_norm_ref), (ks.rope_kv_write, rope_kv_write_ref)]
    for fast, ref in pairs:
        positional = [p for p in inspect.signature(fast).parameters.values()
                      if p.kind is not p.KEYWORD_ONLY]
        assert [p.name for p in positional] == list(inspect.signature(ref).parameters)


def test_without_triton_falls_back_unless_triton_is_demanded(monkeypatch):
    fake_gpu(monkeypatch, (8, 0), "NVIDIA A100")
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` fail
    for mod in [m for m in sys.modules if m.startswith("gptoss_serve.kernels.") and
                m.endswith("_triton")]:
        monkeypatch.delitem(sys.modules, mod)
    ks = choose_kernels("cuda", torch.bfloat16)
    assert not ks.is_triton and "triton cannot be imported" in ks.description
    with pytest.raises(StartupError, match="gpu' extra"):
        choose_kernels("cuda", torch.bfloat16, prefer="triton")


def test_preferences(monkeypatch):
    assert not choose_kernels("cpu", torch.float32, prefer="reference").is_triton
    with pytest.raises(StartupError, match="CUDA"):
        choose_kernels("cpu", torch.float32, prefer="triton")
    with pytest.raises(StartupError, match="preference"):
        choose_kernels("cpu", torch.float32, prefer="fastest")
    fake_gpu(monkeypatch, (9, 0))
    with pytest.raises(StartupError, match="dtype"):
        choose_kernels("cuda", torch.int8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_gpu_choice():
    ks = choose_kernels("cuda", torch.bfloat16)
    assert torch.cuda.get_device_name() in ks.description
