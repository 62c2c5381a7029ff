"""The runner's padded decode path (static buffers, the input of CUDA-graph replay) on CPU.

With graphs off the same padded step runs eagerly, so on CPU we check what the graphs would
replay: decode batches of every size padded up to 1, 2, 4, 8 rows give exactly the tokens of the
plain path, and padding rows (slot -1, seq_len 1, block PAD_BLOCK read only) change no cache
entry. Both with the reference kernels and with the Triton kernels under the interpreter. The
captured graphs themselves need CUDA (`gpu` tests below).
"""

from __future__ import annotations

import random

import pytest
import torch

from gptoss_serve import LLM, SamplingParams
from gptoss_serve.config import CacheConfig, SchedulerConfig
from gptoss_serve.engine.engine import LLMEngine
from gptoss_serve.engine.static_decode import PaddedDecode, decode_batch_sizes
from gptoss_serve.formats.forward_batch import ForwardBatch, KVCache, SeqSlice
from gptoss_serve.kernels.select import reference_kernels
from gptoss_serve.model.synthetic import write_checkpoint
from gptoss_serve.model.weights import load_model

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("gpu-path"), preset="tiny", seed=21,
                            sliding_window=8)


def triton_set():
    pytest.importorskip("triton")
    from gptoss_serve.kernels.select import triton_kernels

    return triton_kernels(" (interpreter)" if not CUDA else "")


def triton_on_cpu():
    """The Triton set on CPU tensors, which needs the interpreter: with CUDA present Triton
    compiles for the GPU instead (the gpu tests below cover that case)."""
    if CUDA:
        pytest.skip("Triton compiles for CUDA in this process; the CPU variant needs the "
                    "interpreter")
    return triton_set()


def engine(checkpoint, kernels, device="cpu", **runner_options) -> LLM:
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = load_model(checkpoint, dtype=dtype, device=device, kernels=kernels)
    cache = CacheConfig(block_size=4, kv_cache_memory_gib=1 / 1024)
    sched = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=32, debug_invariants=True)
    return LLM.from_engine(LLMEngine.from_model(model, cache, sched, **runner_options))


def workload(count: int, max_new: int) -> tuple[list[list[int]], list[SamplingParams]]:
    """Prompts of mixed lengths whose outputs end at different steps, so the decode batch
    shrinks through sizes that pad (7 -> 8, 3 -> 4, ...); one row samples with a seed."""
    rng = random.Random(5)
    prompts = [[rng.randrange(1000, 5000) for _ in range(rng.randrange(1, 14))]
               for _ in range(count)]
    params = [SamplingParams(temperature=0.0, max_tokens=2 + (i * 3) % max_new, ignore_eos=True)
              for i in range(count)]
    params[1] = SamplingParams(temperature=0.8, seed=7, max_tokens=max_new, ignore_eos=True)
    return prompts, params


def generate(llm: LLM, prompts, params) -> list[list[int]]:
    return [o.token_ids for o in llm.generate(prompts, params)]


@pytest.mark.parametrize("kernels", ["reference", "auto"])  # auto: the CPU kernel set
def test_padded_decode_gives_the_tokens_of_the_plain_path(checkpoint, kernels):
    prompts, params = workload(7, 12)
    plain = engine(checkpoint, kernels)
    assert plain.engine.runner.decode is None  # CPU: no graphs, so no padded path by default
    padded = engine(checkpoint, kernels, static_decode=True)
    decode = padded.engine.runner.decode
    assert decode is not None and not decode.graphs.enabled
    assert generate(padded, prompts, params) == generate(plain, prompts, params)
    assert decode.steps > 5 and decode.padding_rows > 0


def test_padded_decode_with_triton_kernels_matches_the_reference_path(checkpoint):
    """Interpreter on CPU: the fused RoPE + KV write skips the padding slots."""
    prompts, params = workload(5, 4)
    want = generate(engine(checkpoint, reference_kernels()), prompts, params)
    padded = engine(checkpoint, triton_on_cpu(), static_decode=True)
    assert generate(padded, prompts, params) == want
    assert padded.engine.runner.decode.padding_rows > 0


@pytest.mark.parametrize("kernels", ["reference", "triton"])
def test_padding_rows_leave_the_cache_alone(checkpoint, kernels):
    ks = reference_kernels() if kernels == "reference" else triton_on_cpu()
    model = load_model(checkpoint, dtype="float32", device="cpu", kernels=ks)
    c = model.config
    kv = KVCache.allocate([c.is_sliding(n) for n in range(c.num_hidden_layers)], 12, 12, 4,
                          c.num_key_value_heads, c.head_dim, torch.float32, "cpu")
    g = torch.Generator().manual_seed(3)
    for t in kv.k + kv.v:
        t.normal_(generator=g)
    before = [t.clone() for t in kv.k + kv.v]
    # three decodes (positions 4, 13, 2; window 8) padded to 4 rows: their slots are the only
    # writes, in both pools (block ids are per pool, the same numbers here)
    slices = [SeqSlice([11], 4, [0, 1], [0, 1]), SeqSlice([12], 13, [2, 3, 4, 6], [-1, 3, 4, 6]),
              SeqSlice([13], 2, [5], [5])]
    path = PaddedDecode(model, kv, 4, 8, decode_batch_sizes(8), torch.device("cpu"),
                        graphs=False)
    got = path.run(slices)
    assert path.padding_rows == 1
    written = {1 * 4 + 0, 6 * 4 + 1, 5 * 4 + 2}
    for t, old in zip(kv.k + kv.v, before, strict=True):
        changed = (t != old).flatten(0, 1).flatten(1).any(1).nonzero().flatten().tolist()
        assert set(changed) <= written and len(changed) == 3
    # the plain path on the original cache gives the same logits for the live rows
    for t, old in zip(kv.k + kv.v, before, strict=True):
        t.copy_(old)
    want = model(ForwardBatch.build(slices, 4, "cpu"), kv)
    # 4 rows against 3: float32 matmuls may block (so sum) differently, up to ~3e-5 measured
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_graph_decode_gives_the_tokens_of_eager_decode(checkpoint):
    prompts, params = workload(7, 12)
    graphs = engine(checkpoint, triton_set(), device="cuda")
    decode = graphs.engine.runner.decode
    assert decode is not None and decode.graphs.enabled and decode.graphs.graphs
    eager = engine(checkpoint, triton_set(), device="cuda", cuda_graphs=False)
    assert eager.engine.runner.decode is None
    assert generate(graphs, prompts, params) == generate(eager, prompts, params)
    assert decode.steps > 5 and decode.padding_rows > 0


def test_cli_flags_reach_the_engine_and_the_startup_log(checkpoint, monkeypatch, caplog):
    from types import SimpleNamespace

    from gptoss_serve import cli
    from gptoss_serve.api import server

    seen = {}
    monkeypatch.setattr(server, "run_server", lambda opts: seen.setdefault("opts", opts) and 0)
    assert cli.main(["serve", "--kernels", "reference", "--enforce-eager"]) == 0
    assert seen["opts"].kernels == "reference" and seen["opts"].enforce_eager
    with caplog.at_level("INFO"):
        llm = engine(checkpoint, "reference")
    lines = server.describe(SimpleNamespace(engine=llm.engine, max_model_len=4096), "m", False)
    text = "\n".join(lines)
    assert "plain-torch reference" in caplog.text and "full context (4096 tokens)" in text
    assert f"at most {llm.engine.scheduler.config.max_num_seqs} (--max-num-seqs)" in text
    assert "decode step: eager (CUDA graphs need CUDA, device is cpu)" in text
