"""How the model and the loader use a KernelSet, and the memory plan of issue 6, on CPU.

- The Triton branch of the forward (RoPE tables + fused RoPE/KV write, attention with k=None,
  fused residual + RMSNorm) is driven with reference implementations of those very signatures,
  so its wiring is checked without a GPU or the interpreter: logits equal the reference set's.
- Kernel preference, the weights-vs-free-memory start-up error, and loading straight into the
  preallocated tensors.
- Weight bytes and per-token KV bytes of 120b/20b against docs/model-facts.md §1.2 (computed
  there from the published shapes, not by our code), and the plan for an 80 GB card.
"""

from __future__ import annotations

import pytest
import torch

from gptoss_serve.config import CacheConfig, ModelConfig, SchedulerConfig
from gptoss_serve.engine.model_runner import GIB, plan_for_gpu
from gptoss_serve.errors import StartupError
from gptoss_serve.kernels.attention import paged_attention_ref
from gptoss_serve.kernels.moe import moe_ref
from gptoss_serve.kernels.norm import rms_norm_ref
from gptoss_serve.kernels.rope import rope_kv_write_ref
from gptoss_serve.kernels.select import KernelSet, reference_kernels
from gptoss_serve.model import weights
from gptoss_serve.model.gpt_oss import GptOssModel
from gptoss_serve.model.synthetic import preset_config, write_checkpoint
from random_model import random_model, run_two_steps


def attention_after_write(q, k, v, k_cache, v_cache, slots, *rest):
    """The Triton contract k = v = None (cache already written), served by the reference."""
    assert k is None and v is None, "the Triton branch must not pass k/v again"
    none = q.new_zeros((0, k_cache.shape[2], k_cache.shape[3]))
    return paged_attention_ref(q, none, none, k_cache, v_cache, slots[:0], *rest)


def fused_style_kernels(calls: list[str]) -> KernelSet:
    """is_triton=True with reference maths, recording how norms are called."""
    def norm(x, w, eps, residual=None):
        calls.append("norm+res" if residual is not None else "norm")
        return rms_norm_ref(x, w, eps, residual)

    return KernelSet(attention_after_write, moe_ref, "test: Triton wiring, reference maths",
                     norm, rope_kv_write_ref, is_triton=True)




def test_triton_branch_wiring_matches_the_reference_forward():
    config = ModelConfig.from_hf_dict(preset_config("tiny", sliding_window=2))
    model = random_model(config)
    want = run_two_steps(model, config)
    calls: list[str] = []
    model.kernels = fused_style_kernels(calls)
    got = run_two_steps(model, config)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    tables = model.kernels.rope_inputs(model.rotary, None, torch.float32)
    assert tables[0].shape == (config.max_position_embeddings, config.head_dim // 2)
    # per step: one plain norm (first block), then every later norm adds the residual
    per_step = ["norm"] + ["norm+res"] * (2 * config.num_hidden_layers)
    assert calls == per_step * 2


def test_kernel_preference_is_honoured_and_logged(tmp_path, caplog):
    path = write_checkpoint(tmp_path / "ck", preset="tiny", seed=3, vocab_size=512)
    with caplog.at_level("INFO", logger="gptoss_serve.model.weights"):
        model = weights.load_model(path, device="cpu", kernels="reference")
    assert model.kernels.attention is paged_attention_ref and not model.kernels.is_triton
    assert "reference" in caplog.text and model.kernels.description in caplog.text
    with pytest.raises(StartupError, match="CUDA"):
        weights.load_model(path, device="cpu", kernels="triton")
    with pytest.raises(StartupError, match="kernel preference"):
        weights.load_model(path, device="cpu", kernels="fastest")


def test_loading_fills_the_preallocated_tensors_in_place(tmp_path, monkeypatch):
    path = write_checkpoint(tmp_path / "ck", preset="tiny", seed=4, vocab_size=512)
    built: list[dict[str, int]] = []

    class Recording(GptOssModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append({k: t.data_ptr() for k, t in self.state_dict().items()})

    monkeypatch.setattr(weights, "GptOssModel", Recording)
    model = weights.load_model(path, device="cpu", kernels=reference_kernels())
    after = {k: t.data_ptr() for k, t in model.state_dict().items()}
    assert len(built) == 1 and after == built[0]  # no tensor was replaced by a new allocation
    assert model.embedding.weight.abs().sum() > 0


def test_not_enough_gpu_memory_names_needed_and_free_bytes():
    with pytest.raises(StartupError) as err:
        weights.check_fits(65_248_000_000, 40_000_000_000, torch.device("cuda:0"))
    msg = err.value.message
    assert "65248000000" in msg and "40000000000" in msg and "cuda:0" in msg
    weights.check_fits(10, 10, torch.device("cuda:0"))  # exactly enough is enough


@pytest.mark.parametrize("preset, gib", [("120b", 60.77), ("20b", 12.82)])
def test_weight_bytes_match_the_published_checkpoint_sizes(preset, gib):
    """docs/model-facts.md §1.2: checkpoint bytes with MXFP4 experts and bf16 elsewhere. Ours keep
    norms and sinks in float32 (a few hundred KiB more), so the GiB figure agrees to 0.01."""
    config = ModelConfig.from_hf_dict(preset_config(preset))
    assert config.experts_mxfp4
    assert weights.model_bytes(config, torch.bfloat16) / GIB == pytest.approx(gib, abs=0.01)


def test_120b_memory_plan_on_an_80_gb_card():
    config = ModelConfig.from_hf_dict(preset_config("120b"))
    cache, sched = CacheConfig(block_size=16), SchedulerConfig()
    gpu = 81559 << 20  # an H100 80 GB as nvidia-smi reports it (79.6 GiB)
    plan = plan_for_gpu(config, torch.bfloat16, gpu, weights.model_bytes(config, torch.bfloat16),
                        cache, sched)
    # facts §1.2: 36,864 bytes of KV per token of context over the 18 full-attention layers
    assert plan.kv.bytes_per_full_block == 16 * 36_864
    assert plan.kv.bytes_per_sliding_block == 16 * 36_864  # 18 sliding layers as well
    used = plan.weights_bytes + plan.kv.total_bytes
    assert used <= cache.gpu_memory_utilization * gpu
    # every running sequence keeps its 128-token window (+1 block) in the sliding pool
    assert plan.kv.num_sliding_blocks >= sched.max_num_seqs * (128 // 16 + 1)
    assert plan.sequences(131072) >= 1
    assert plan.sequences(8192) == plan.kv.num_full_blocks // 512 >= 16 * plan.sequences(131072)


def test_greedy_tokens_follow_the_unembedding(tmp_path):
    """The CPU set's greedy screen (built at load) gives the logits' argmax, and again after
    the unembedding is written in place (the index is rebuilt, not stale)."""
    path = write_checkpoint(tmp_path / "ckpt", preset="tiny", seed=4)
    model = weights.load_model(path, device="cpu", kernels="auto")
    if model.kernels.argmax_index is None or model._argmax is None:
        pytest.skip("no C kernel for the greedy screen here")
    h = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(5))
    want = model.logits(h).argmax(dim=-1)
    assert torch.equal(model.greedy_tokens(h), want)
    w = model.unembedding.weight
    w[want[0] + 1] = w[want[0]] * 2  # a new best row for h[0] (its logit is positive)
    w[want[1]] = -w[want[1]]
    moved = model.logits(h).argmax(dim=-1)
    assert int(moved[0]) == int(want[0]) + 1 and int(moved[1]) != int(want[1])
    assert torch.equal(model.greedy_tokens(h), moved)
    assert model.greedy_tokens(h[:0]) is None  # nothing to find: the caller takes the logits
