"""The one-call CPU decode step (`kernels/decode_cpu.py`) against the layer-by-layer CPU path
(bit for bit: same hidden rows, same KV caches) and the plain-torch reference kernels (float
tolerance), at one and two threads; its refusals and its errors.

The model has random weights, sliding and full layers with a window that drops blocks, and
sequences of different lengths, so every branch of the step runs.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gptoss_serve.config import ModelConfig
from gptoss_serve.formats.forward_batch import ForwardBatch, KVCache, SeqSlice
from gptoss_serve.kernels import decode_cpu
from gptoss_serve.kernels.select import cpu_kernels, reference_kernels
from gptoss_serve.model.gpt_oss import GptOssModel
from gptoss_serve.model.synthetic import preset_config

pytestmark = pytest.mark.skipif(decode_cpu._load()[0] is None, reason="no C kernel here")
BS = 4
CONFIG = ModelConfig.from_hf_dict(preset_config("tiny", num_hidden_layers=4, vocab_size=512,
                                                sliding_window=6))


def _model(kernels) -> GptOssModel:
    model = GptOssModel(CONFIG, torch.float32, "cpu", kernels=kernels)
    gen = torch.Generator().manual_seed(7)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith("blocks"):
            t.copy_(torch.randint(0, 256, t.shape, generator=gen))
        elif name.endswith("scales"):
            t.copy_(torch.randint(121, 124, t.shape, generator=gen))
        elif not name.endswith("inv_freq"):
            mean = 1.0 if "norm" in name else 0.0
            t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(t.shape[-1]) + mean)
    model.prepare_experts()
    return model


@pytest.fixture(scope="module")
def cpu_model() -> GptOssModel:
    return _model(cpu_kernels(": test"))


def _cache() -> KVCache:
    return KVCache.allocate([CONFIG.is_sliding(n) for n in range(CONFIG.num_hidden_layers)],
                            16, 16, BS, CONFIG.num_key_value_heads, CONFIG.head_dim,
                            torch.float32, "cpu")


class Seqs:
    """Sequences with their own blocks: prompts prefilled, then one token a step."""

    def __init__(self, lengths: list[int], seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.lens = list(lengths)
        self.blocks = [[4 * i + j for j in range(4)] for i in range(len(lengths))]

    def _slice(self, i: int, n: int) -> SeqSlice:
        ids = torch.randint(0, CONFIG.vocab_size, (n,), generator=self.gen).tolist()
        start, last = self.lens[i], (self.lens[i] + n - 1) // BS
        first_live = max(0, self.lens[i] + n - CONFIG.sliding_window) // BS
        sliding = [b if j >= first_live else -1 for j, b in enumerate(self.blocks[i][:last + 1])]
        self.lens[i] += n
        return SeqSlice(ids, start, self.blocks[i][:last + 1], sliding)

    def prefill(self) -> ForwardBatch:
        lens, self.lens = self.lens, [0] * len(self.lens)
        return ForwardBatch.build([self._slice(i, n) for i, n in enumerate(lens)], BS, "cpu")

    def decode(self) -> ForwardBatch:
        return ForwardBatch.build([self._slice(i, 1) for i in range(len(self.lens))], BS, "cpu")


def _run(model: GptOssModel, lengths: list[int], steps: int) -> tuple[list, KVCache]:
    """Hidden rows of `steps` decode steps after the prefill, and the cache after them."""
    seqs, kv = Seqs(lengths), _cache()
    model.hidden(seqs.prefill(), kv)
    return [model.hidden(seqs.decode(), kv) for _ in range(steps)], kv


def _layer_by_layer(model: GptOssModel) -> GptOssModel:
    twin = _model(dataclasses.replace(model.kernels, decode_step=None))
    twin.load_state_dict(model.state_dict())
    return twin


@pytest.mark.parametrize("lengths", [[5], [1, 9, 3]])
@pytest.mark.parametrize("threads", [1, 2])
def test_one_call_step_equals_the_layer_path_bit_for_bit(cpu_model, lengths, threads):
    calls = []
    build = cpu_model.kernels.decode_step

    def counted(*args):
        step = build(*args)
        run = step.run
        step.run = lambda *a: calls.append(1) or run(*a)
        return step

    cpu_model.kernels = dataclasses.replace(cpu_model.kernels, decode_step=counted)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got, got_kv = _run(cpu_model, lengths, 6)
        want, want_kv = _run(_layer_by_layer(cpu_model), lengths, 6)
    finally:
        torch.set_num_threads(before)
        cpu_model.kernels = dataclasses.replace(cpu_model.kernels, decode_step=build)
    assert len(calls) == 6  # every decode step took the one call, the prefill did not
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w)
    for a, b in zip(got_kv.k + got_kv.v, want_kv.k + want_kv.v, strict=True):
        assert torch.equal(a, b)


def test_one_call_step_matches_the_reference_kernels(cpu_model):
    ref = _model(reference_kernels())
    ref.load_state_dict(cpu_model.state_dict(), strict=False)  # bf16 projections upcast
    got, _ = _run(cpu_model, [2, 7], 4)
    want, _ = _run(ref, [2, 7], 4)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)


def test_batches_it_does_not_serve_take_the_layer_path(cpu_model):
    step = decode_cpu.DecodeStep(cpu_model._step_weights(), _cache())
    assert step.why_not == "" and step.max_tokens == 8  # top-2: 16 pairs
    assert not step.accepts(Seqs([3, 4]).prefill())
    assert not step.accepts(Seqs([3] * 9).decode())
    assert step.accepts(Seqs([3] * 8).decode())
    mixed = ForwardBatch.build([SeqSlice([1], 3, [0], [0]), SeqSlice([1, 2], 0, [1], [1])],
                               BS, "cpu")
    assert not step.accepts(mixed)


def test_unsuitable_tensors_are_refused_with_a_reason(cpu_model):
    weights = cpu_model._step_weights()
    unpacked = dataclasses.replace(weights, layers=tuple(
        dataclasses.replace(lw, w1_blocks=None) for lw in weights.layers))
    assert decode_cpu.DecodeStep(unpacked, _cache()).why_not == "experts not kept packed"
    wide = dataclasses.replace(weights, embedding=weights.embedding.double())
    refused = decode_cpu.DecodeStep(wide, _cache())
    assert refused.why_not == "dtypes" and not refused.accepts(Seqs([3]).decode())


def test_a_moved_tensor_or_another_cache_rebuilds_the_table(cpu_model):
    kv = _cache()
    weights = cpu_model._step_weights()
    step = decode_cpu.DecodeStep(weights, kv)
    assert step.current(weights, kv) and not step.current(weights, _cache())
    moved = dataclasses.replace(weights, final_norm=weights.final_norm.clone())
    assert not step.current(moved, kv)  # a replaced parameter (new storage) is seen
    with pytest.raises(ValueError):
        step.run(Seqs([3]).decode(), _cache(), torch.ones(1, 4), torch.zeros(1, 4))


def test_a_replaced_parameter_object_is_read(cpu_model):
    """A parameter replaced by a new object after the step's table was built (what
    `load_state_dict(assign=True)` does): the next step reads the new values, as the layer
    path does."""
    outs = []
    for m in (_model(cpu_model.kernels), _layer_by_layer(cpu_model)):
        seqs, kv = Seqs([5]), _cache()
        m.hidden(seqs.prefill(), kv)
        m.hidden(seqs.decode(), kv)  # the one-call step's table is built here
        m.norm.scale = torch.nn.Parameter(m.norm.scale * 1.5, requires_grad=False)
        m.block[1].attn.qkv.bias = torch.nn.Parameter(m.block[1].attn.qkv.bias + 0.25,
                                                      requires_grad=False)
        outs.append(m.hidden(seqs.decode(), kv))
    assert torch.equal(outs[0], outs[1])


def _decode_batch(token: int, slot: int, table: list[int]) -> ForwardBatch:
    batch = ForwardBatch.build([SeqSlice([token], 5, [0, 1], [0, 1])], BS, "cpu")
    batch.full.slot_mapping[0] = batch.sliding.slot_mapping[0] = slot
    batch.full.block_tables[0] = batch.sliding.block_tables[0] = torch.tensor(table)
    return batch


@pytest.mark.parametrize(("token", "slot", "table", "error"), [
    (512, 5, [0, 1], IndexError), (-1, 5, [0, 1], IndexError),
    (3, 16 * BS, [0, 1], IndexError), (3, 5, [-1, 1], ValueError)])
def test_bad_steps_raise_typed_errors(cpu_model, token, slot, table, error):
    kv = _cache()
    step = decode_cpu.DecodeStep(cpu_model._step_weights(), kv)
    batch = _decode_batch(token, slot, table)
    cos, sin = cpu_model.rotary.cos_sin(batch.positions, torch.float32)
    with pytest.raises(error):
        step.run(batch, kv, cos, sin)
