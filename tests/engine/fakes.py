"""Fake models and runners for engine tests: no weights, chosen tokens.

`next_token(context)` is the "model": a deterministic function of the whole context, so batched,
preempted and prefix-cached runs must all produce the same tokens as a sequence run alone.
`KVEchoModel` computes it the hard way: it writes each new token id into every layer's paged KV
cache through the batch's slot mappings and reads the context back through the block tables
(full layers: every position; sliding layers: the last `window` positions, checked against the
full read-back). A wrong block table, a bad prefix hit or a freed block still in use changes the
tokens. `ScriptedRunner` skips torch entirely (scheduler tests, benchmark).
"""

from __future__ import annotations

import torch

from gptoss_serve.config import ModelConfig
from gptoss_serve.engine.scheduler import SchedulerOutput
from gptoss_serve.engine.sequence import SampledToken
from gptoss_serve.formats.forward_batch import ForwardBatch, KVCache

VOCAB = 97


def next_token(context: list[int], vocab: int = VOCAB) -> int:
    """Deterministic 'model': depends on every token and its position."""
    h = 17
    for i, t in enumerate(context):
        h = (h * 31 + t * (i % 7 + 1)) % 1_000_003
    return h % vocab


def tiny_config(layers: int = 2, window: int = 8, vocab: int = VOCAB, **kw) -> ModelConfig:
    return ModelConfig(num_hidden_layers=layers, hidden_size=8, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=4, num_experts=2, experts_per_token=1,
                       intermediate_size=8, vocab_size=vocab, sliding_window=window,
                       eos_token_ids=(vocab - 1,), **kw)


class ScriptedRunner:
    """Runner without torch: samples next_token(context) for every sampling row."""

    def __init__(self, vocab: int = VOCAB):
        self.vocab = vocab
        self.steps: list[SchedulerOutput] = []

    def execute(self, out: SchedulerOutput) -> list[SampledToken]:
        self.steps.append(out)
        return [SampledToken(next_token(s.seq.token_ids, self.vocab)) for s in out.sampling]


class KVEchoModel(torch.nn.Module):
    """A 'model' whose only state is the paged KV cache (see the module docstring)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch: ForwardBatch, kv_cache: KVCache) -> torch.Tensor:
        for layer in range(self.config.num_hidden_layers):
            pool = batch.pool(self.config.is_sliding(layer))
            k = kv_cache.k[layer]
            k.view(-1, k.shape[-2], k.shape[-1])[pool.slot_mapping, 0, 0] = (
                batch.input_ids.float() + layer)
        rows = []
        ends = batch.query_start_loc.tolist()[1:]
        for b, seq_len in enumerate(batch.seq_lens_cpu):
            if ends[b] - 1 in batch.logits_indices.tolist():
                rows.append(next_token(self._context(batch, kv_cache, b, seq_len),
                                       self.config.vocab_size))
        logits = torch.full((len(rows), self.config.vocab_size), -5.0)
        logits[torch.arange(len(rows)), torch.tensor(rows, dtype=torch.int64)] = 5.0
        return logits

    def _context(self, batch: ForwardBatch, kv: KVCache, b: int, seq_len: int) -> list[int]:
        contexts = []
        window = self.config.sliding_window
        for layer in range(self.config.num_hidden_layers):
            sliding = self.config.is_sliding(layer)
            table = batch.pool(sliding).block_tables[b].tolist()
            lo = max(0, seq_len - window) if sliding else 0
            ctx = []
            for p in range(lo, seq_len):
                block, off = divmod(p, batch.block_size)
                assert table[block] >= 0, f"layer {layer}: position {p} has no block"
                ctx.append(int(kv.k[layer][table[block], off, 0, 0].item()) - layer)
            contexts.append((sliding, ctx))
        full = next(c for s, c in contexts if not s)
        for sliding, ctx in contexts:
            assert ctx == (full[-len(ctx):] if sliding else full), "layers disagree on the context"
        return full
