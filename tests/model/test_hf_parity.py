"""GptOssModel against transformers' GptOssForCausalLM on tiny random checkpoints.

Our side runs through the paged KV cache (ForwardBatch.build + KVCache.allocate): chunked prefill,
mixed prefill/decode batches, sliding-window blocks marked -1 once they leave the window.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import GptOssForCausalLM, Mxfp4Config

from gptoss_serve.formats.forward_batch import ForwardBatch, KVCache, SeqSlice
from gptoss_serve.model.synthetic import write_checkpoint
from gptoss_serve.model.weights import load_model

BS = 4  # KV block size
NEW = 32  # greedy tokens

# tiny configs for parity: (name, write_checkpoint kwargs)
PARITY_CONFIGS = {
    "tiny-w8": dict(preset="tiny", seed=1, sliding_window=8),
    "gqa4-3layers-w5": dict(preset="tiny", seed=2, num_hidden_layers=3, sliding_window=5,
                            layer_types=["full_attention", "sliding_attention",
                                         "sliding_attention"],
                            hidden_size=96, intermediate_size=32, head_dim=32,
                            num_attention_heads=8, num_key_value_heads=2, num_local_experts=8,
                            num_experts_per_tok=4),
    # bf16 experts, config.json in the transformers-5 spelling (rope_parameters)
    "bf16-experts-mha": dict(preset="tiny", seed=3, sliding_window=6, experts="bf16",
                             num_attention_heads=2, num_key_value_heads=2, num_experts_per_tok=1),
}


def _transformers5_rope_spelling(folder) -> None:
    """Rewrite config.json the way transformers 5 saves it: `rope_parameters` with rope_theta."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_parameters"] = dict(cfg.pop("rope_scaling"), rope_theta=cfg.pop("rope_theta"))
    (folder / "config.json").write_text(json.dumps(cfg))


class _Checkpoints(dict):
    """name -> folder of each PARITY_CONFIGS checkpoint (HF layout), written on first use."""

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, name):
        folder = write_checkpoint(self.root / name, **PARITY_CONFIGS[name])
        if name == "bf16-experts-mha":
            _transformers5_rope_spelling(folder)
        self[name] = folder
        return folder


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict:
    return _Checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def tiny_original(tmp_path_factory):
    """The tiny-w8 weights again, in the original/ layout."""
    kwargs = dict(PARITY_CONFIGS["tiny-w8"])
    return write_checkpoint(tmp_path_factory.mktemp("orig"), layout="original", **kwargs)


def hf_model(path) -> GptOssForCausalLM:
    cfg = json.loads((path / "config.json").read_text())
    quant = {}
    if "quantization_config" in cfg:  # MXFP4 experts: let transformers dequantize them on CPU
        quant["quantization_config"] = Mxfp4Config(dequantize=True)
    return GptOssForCausalLM.from_pretrained(path, dtype=torch.float32, **quant).eval()


def hf_greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]), logits_to_keep=1).logits[0, -1].argmax()))
    return ids[len(prompt):]


class PagedRunner:
    """A minimal stand-in for the engine: drives GptOssModel one step at a time."""

    def __init__(self, model, num_seqs: int, max_len: int, chunk: int):
        cfg = model.config
        self.model, self.chunk = model, chunk
        self.window = cfg.sliding_window
        self.per_seq = -(-max_len // BS)
        n_blocks = num_seqs * self.per_seq
        layers = [cfg.is_sliding(n) for n in range(cfg.num_hidden_layers)]
        self.kv = KVCache.allocate(layers, n_blocks, n_blocks, BS, cfg.num_key_value_heads,
                                   cfg.head_dim, model.dtype, "cpu")

    def tables(self, i: int, first_pos: int) -> tuple[list[int], list[int]]:
        """Full table; sliding table (reversed block order) with out-of-window blocks at -1."""
        full = [i * self.per_seq + j for j in range(self.per_seq)]
        first_key = first_pos - self.window + 1
        sliding = [b if (j + 1) * BS > first_key else -1 for j, b in enumerate(reversed(full))]
        return full, sliding

    def step(self, seqs: dict[int, list[int]], done: dict[int, int]) -> dict[int, torch.Tensor]:
        slices, sampled = [], []
        for i, toks in seqs.items():
            new = toks[done[i]:done[i] + self.chunk]
            sample = done[i] + len(new) == len(toks)
            slices.append(SeqSlice(new, done[i], *self.tables(i, done[i]), sample=sample))
            sampled += [i] if sample else []
            done[i] += len(new)
        logits = self.model(ForwardBatch.build(slices, BS, "cpu"), self.kv)
        return dict(zip(sampled, logits, strict=True))

    def greedy(self, prompts: list[list[int]], n: int, starts: list[int]) -> list[list[int]]:
        """Sequence i joins at step starts[i]; each step prefills a chunk or decodes one token."""
        seqs, done, out, step = {}, {}, [[] for _ in prompts], 0
        while any(len(o) < n for o in out):
            for i, p in enumerate(prompts):
                if starts[i] == step:
                    seqs[i], done[i] = list(p), 0
            live = {i: s for i, s in seqs.items() if len(out[i]) < n}
            for i, row in self.step(live, done).items():
                tok = int(row.argmax())
                seqs[i].append(tok)
                out[i].append(tok)
            step += 1
        return out


def _prompts(vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in (19, 3, 11)]


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_logits_match_transformers(checkpoints, name):
    path = checkpoints[name]
    ours, ref = load_model(path, dtype="float32", device="cpu"), hf_model(path)
    prompt = _prompts(ours.config.vocab_size, 0)[0] * 2  # 38 tokens, several windows long
    with torch.no_grad():
        expected = ref(torch.tensor([prompt])).logits[0]
    runner = PagedRunner(ours, 1, len(prompt), chunk=len(prompt))
    full, sliding = runner.tables(0, 0)
    batch = ForwardBatch.build([SeqSlice(prompt, 0, full, sliding)], BS, "cpu")
    batch.logits_indices = torch.arange(len(prompt))  # every row, not only the last
    got = ours(batch, runner.kv)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    rel = (got - expected).abs().amax(-1) / expected.abs().amax(-1)
    assert rel.max().item() < 1e-4


@pytest.mark.parametrize("name", list(PARITY_CONFIGS))
def test_greedy_32_tokens_match_transformers(checkpoints, name):
    path = checkpoints[name]
    ours, ref = load_model(path, dtype="float32", device="cpu"), hf_model(path)
    prompts = _prompts(ours.config.vocab_size, 1)
    expected = [hf_greedy(ref, p, NEW) for p in prompts]
    runner = PagedRunner(ours, len(prompts), max(map(len, prompts)) + NEW, chunk=5)
    # sequence 1 joins while 0 is mid-prefill, 2 while the others decode: mixed batches
    assert runner.greedy(prompts, NEW, starts=[0, 2, 6]) == expected


def test_both_layouts_give_identical_logits(checkpoints, tiny_original):
    models = [load_model(p, device="cpu") for p in (checkpoints["tiny-w8"], tiny_original)]
    prompt = _prompts(models[0].config.vocab_size, 2)[0]
    logits = []
    for m in models:
        runner = PagedRunner(m, 1, len(prompt), chunk=len(prompt))
        logits.append(runner.step({0: prompt}, {0: 0})[0])
    assert torch.equal(logits[0], logits[1])


def test_bfloat16_model_agrees_with_float32(checkpoints):
    path = checkpoints["tiny-w8"]
    prompt = _prompts(201088, 3)[0]
    top = []
    for dtype in ("float32", "bfloat16"):
        m = load_model(path, dtype=dtype, device="cpu")
        assert m.embedding.weight.dtype == getattr(torch, dtype)
        runner = PagedRunner(m, 1, len(prompt) + 8, chunk=len(prompt))
        top.append(runner.greedy([prompt], 8, starts=[0]))
    assert top[0] == top[1]
