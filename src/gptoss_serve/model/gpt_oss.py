"""The gpt-oss transformer: the forward pass of docs/model-facts.md §2 over a paged KV cache.

Owns the module tree, whose tensor names are those of the checkpoint's `original/` layout
(`embedding.weight`, `block.N.attn.qkv.weight`, `block.N.mlp.mlp1_weight.blocks`, ...), and the
order of operations of one step. Every op (norms, projections, RoPE, attention, MoE, logits) is
a call of its `KernelSet` (`kernels/select.py`, the one place that knows which path runs: the
model has no branch on it); the model knows nothing of kernel paths, checkpoint files,
scheduling or sampling.

Follows openai/gpt-oss `gpt_oss/torch/model.py` (`Transformer`, `TransformerBlock`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from gptoss_serve.config import ModelConfig
from gptoss_serve.formats.forward_batch import ForwardBatch, KVCache
from gptoss_serve.formats.mxfp4 import BLOCK, BYTES_PER_BLOCK
from gptoss_serve.formats.rope import Rotary
from gptoss_serve.kernels.moe import DenseExperts, ExpertWeights
from gptoss_serve.kernels.select import KernelSet, reference_kernels
from gptoss_serve.kernels.step import ArgmaxFinder, DecodeStepKernel, LayerWeights, StepWeights

log = logging.getLogger(__name__)


class RMSNorm(nn.Module):
    """x / rms(x) * scale with float32 statistics; the scale is kept in float32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.scale).to(x.dtype)


class ExpertTensor(nn.Module):
    """One projection of all experts: packed MXFP4 (`blocks`, `scales`) or dense (`weight`)."""

    def __init__(self, experts: int, rows: int, cols: int, mxfp4: bool,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.blocks: torch.Tensor | None
        self.scales: torch.Tensor | None
        self.weight: torch.Tensor | None
        if mxfp4:
            groups = cols // BLOCK
            self.register_buffer("blocks", torch.zeros(experts, rows, groups, BYTES_PER_BLOCK,
                                                       dtype=torch.uint8))
            self.register_buffer("scales", torch.zeros(experts, rows, groups, dtype=torch.uint8))
            self.weight = None
        else:
            self.register_buffer("weight", torch.zeros(experts, rows, cols, dtype=dtype))
            self.blocks = self.scales = None

    def dense_bytes(self, dtype: torch.dtype) -> int:
        """Bytes of all experts of this projection dequantized to `dtype`."""
        numel = self.blocks.numel() * 2 if self.blocks is not None else self.weight.numel()
        return numel * torch.empty((), dtype=dtype).element_size()

    def densify(self, dtype: torch.dtype, plan: DenseExperts) -> None:
        """Add a dequantized `weight` in `dtype` (one expert at a time, `plan.dequantize`); the
        packed MXFP4 tensors are dropped unless `plan.keep_packed` (then both serve)."""
        if self.blocks is None or self.weight is not None:
            return
        e, rows, groups, _ = self.blocks.shape
        dense = torch.empty(e, rows, groups * BLOCK, dtype=dtype, device=self.blocks.device)
        for i in range(e):
            dense[i] = plan.dequantize(self.blocks[i], self.scales[i], dtype)
        del self.weight
        self.register_buffer("weight", dense)
        if not plan.keep_packed:
            self.blocks = self.scales = None


class AttentionBlock(nn.Module):
    """Pre-norm attention: fused qkv with bias, YaRN RoPE, GQA, sinks, optional window."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        c = config
        self.head_dim, self.n_q = c.head_dim, c.num_attention_heads
        self.n_kv = c.num_key_value_heads
        self.sliding = c.is_sliding(layer)
        self.window = c.sliding_window if self.sliding else 0
        self.sm_scale = c.head_dim ** -0.5
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.qkv = nn.Linear(c.hidden_size, (self.n_q + 2 * self.n_kv) * c.head_dim)
        self.sinks = nn.Parameter(torch.zeros(self.n_q, dtype=torch.float32))
        self.out = nn.Linear(self.n_q * c.head_dim, c.hidden_size)

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                batch: ForwardBatch, k_cache: torch.Tensor, v_cache: torch.Tensor,
                kernels: KernelSet) -> torch.Tensor:
        """h: the normed residual stream [T, hidden] -> attention output (no residual add).

        `rope` is what `kernels.rope_inputs` gave for this step; `kernels.rope_qkv` rotates q
        and k (and may already store k and v in the cache: then k = v = None).
        """
        t, d = h.shape[0], self.head_dim
        qkv = kernels.linear(h, self.qkv.weight, self.qkv.bias)
        pool = batch.pool(self.sliding)
        q, k, v = kernels.rope_qkv(qkv, self.n_q, self.n_kv, d, batch.positions, rope, k_cache,
                                   v_cache, pool.slot_mapping)
        o = kernels.attention(q, k, v, k_cache, v_cache, pool.slot_mapping, pool.block_tables,
                              batch.query_start_loc, batch.seq_lens, self.sinks, self.sm_scale,
                              self.window)
        return kernels.linear(o.reshape(t, self.n_q * d), self.out.weight, self.out.bias)


class MoEBlock(nn.Module):
    """Pre-norm mixture of experts: router with bias, top-k, clamped SwiGLU experts."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        c = config
        e, h, i = c.num_experts, c.hidden_size, c.intermediate_size
        self.top_k, self.limit, self.alpha = c.experts_per_token, c.swiglu_limit, c.swiglu_alpha
        self.norm = RMSNorm(h, c.rms_norm_eps)
        self.gate = nn.Linear(h, e)
        self.mlp1_weight = ExpertTensor(e, 2 * i, h, c.experts_mxfp4, dtype)
        self.mlp1_bias = nn.Parameter(torch.zeros(e, 2 * i))
        self.mlp2_weight = ExpertTensor(e, h, i, c.experts_mxfp4, dtype)
        self.mlp2_bias = nn.Parameter(torch.zeros(e, h))

    def experts(self) -> ExpertWeights:
        w1, w2 = self.mlp1_weight, self.mlp2_weight
        return ExpertWeights(w1_bias=self.mlp1_bias, w2_bias=self.mlp2_bias,
                             w1_blocks=w1.blocks, w1_scales=w1.scales, w2_blocks=w2.blocks,
                             w2_scales=w2.scales, w1=w1.weight, w2=w2.weight)

    def dense_bytes(self, dtype: torch.dtype) -> int:
        return self.mlp1_weight.dense_bytes(dtype) + self.mlp2_weight.dense_bytes(dtype)

    def densify(self, dtype: torch.dtype, plan: DenseExperts) -> None:
        """Dequantize both projections' experts once (`ExpertTensor.densify`)."""
        self.mlp1_weight.densify(dtype, plan)
        self.mlp2_weight.densify(dtype, plan)

    def mix(self, h: torch.Tensor, kernels: KernelSet) -> torch.Tensor:
        """The experts' output for the normed stream h (no residual add)."""
        return kernels.moe(h, self.gate.weight, self.gate.bias, self.experts(), self.top_k,
                           self.limit, self.alpha)


class TransformerBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.attn = AttentionBlock(config, layer)
        self.mlp = MoEBlock(config, dtype)


class GptOssModel(nn.Module):
    """gpt-oss for inference. Tensors start zeroed; `weights.load_model` fills them."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, device: torch.device | str,
                 kernels: KernelSet | None = None) -> None:
        super().__init__()
        self.config = config
        self.kernels = kernels or reference_kernels()
        self.dtype = dtype
        with torch.device("meta"):
            self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)
            self.block = nn.ModuleList(TransformerBlock(config, n, dtype)
                                       for n in range(config.num_hidden_layers))
            self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.unembedding = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._materialize(dtype, torch.device(device))
        self.rotary = Rotary(config, device)
        self._argmax, self._argmax_key = None, None  # see greedy_tokens
        self._step: tuple[Callable, DecodeStepKernel] | None = None  # see _one_call_step
        self.requires_grad_(False)

    def _materialize(self, dtype: torch.dtype, device: torch.device) -> None:
        """Allocate every tensor on `device`, zeroed: norms and sinks float32, MXFP4 uint8, the
        unembedding in `kernels.unembedding_dtype` and the attention projections' weights in
        `kernels.projection_dtype` when the kernel set names them."""
        projections = {id(b.attn.qkv.weight) for b in self.block} | {
            id(b.attn.out.weight) for b in self.block}
        for module in self.modules():
            for name, t in list(module.named_parameters(recurse=False)):
                keep32 = isinstance(module, RMSNorm) or name == "sinks"
                want = self.kernels.unembedding_dtype if module is self.unembedding else None
                if id(t) in projections:
                    want = self.kernels.projection_dtype
                want = torch.float32 if keep32 else want or dtype
                new = torch.zeros(t.shape, dtype=want, device=device)
                setattr(module, name, nn.Parameter(new, requires_grad=False))
            for name, t in list(module.named_buffers(recurse=False)):
                module.register_buffer(name, torch.zeros(t.shape, dtype=t.dtype, device=device))

    def prepare_experts(self) -> None:
        """After loading: where the kernel set asks for `dense_experts` (the CPU set), the packed
        experts of every layer are dequantized now (so the first request does not pay for
        it), when the copy of all layers `fits`; else every layer stays packed. Decided once."""
        plan = self.kernels.dense_experts
        mlps = [blk.mlp for blk in self.block]
        if plan is None or any(m.mlp1_weight.blocks is None for m in mlps):
            return  # not asked for, or experts already dense (bf16 checkpoint, done before)
        dtype = plan.dtype or mlps[0].mlp1_bias.dtype
        if plan.fits(sum(m.dense_bytes(dtype) for m in mlps)):
            for m in mlps:
                m.densify(dtype, plan)

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def _norm(self, norm: RMSNorm, x: torch.Tensor, residual: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual) in one kernel call; x alone when no residual."""
        if residual is None:
            return self.kernels.rms_norm(x, norm.scale, norm.eps), x
        return self.kernels.rms_norm(x, norm.scale, norm.eps, residual=residual)

    @torch.no_grad()
    def forward(self, batch: ForwardBatch, kv_cache: KVCache) -> torch.Tensor:
        """One step: new tokens of all sequences -> float32 logits of `batch.logits_indices`."""
        return self.logits(self.hidden(batch, kv_cache))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """float32 logits of final hidden rows (`hidden`)."""
        return self.kernels.logits(h, self.unembedding.weight)

    def greedy_tokens(self, h: torch.Tensor) -> torch.Tensor | None:
        """`logits(h).argmax(-1)` (the first on ties) where the kernel set can find it without
        every logit (`KernelSet.argmax_index`), else None."""
        index = self._argmax_index()
        return None if index is None else index.argmax(h)

    def prepare_greedy(self) -> None:
        """Build `greedy_tokens`' index now (after loading, not in the first request; again
        after writes the tensor version does not see, such as through `.data`)."""
        self._argmax_key = None
        index = self._argmax_index()
        if index is not None:
            log.info("greedy screen: int8 copy of the unembedding, %.0f MiB",
                     index.nbytes() / (1 << 20))

    def _argmax_index(self) -> ArgmaxFinder | None:
        """The kernel set's argmax index of the unembedding, built on first use and again
        whenever the unembedding was written since (its tensor version moved). None for an
        inference tensor (no version to tell a write by)."""
        build, w = self.kernels.argmax_index, self.unembedding.weight
        if build is None or w.is_inference():
            return None
        key = (w.data_ptr(), w._version)
        if self._argmax_key != key:
            self._argmax, self._argmax_key = build(w), key
        return self._argmax

    @torch.no_grad()
    def hidden(self, batch: ForwardBatch, kv_cache: KVCache) -> torch.Tensor:
        """One step: new tokens of all sequences -> the final-normed hidden rows of
        `batch.logits_indices`.

        The residual stream `res` is added to each block's output inside the next norm call
        (`kernels.rms_norm(..., residual=res)`), so no separate add runs between blocks. Where
        the kernel set has a one-call decode step that serves the batch, it runs instead (the
        same values: `_one_call_step`).
        """
        one_call = self._one_call_step(batch, kv_cache)
        if one_call is not None:
            return one_call
        x = self.embedding(batch.input_ids)
        rope = self.kernels.rope_inputs(self.rotary, batch.positions, x.dtype)
        res = None
        for n, blk in enumerate(self.block):
            h, res = self._norm(blk.attn.norm, x, res)
            x = blk.attn(h, rope, batch, kv_cache.k[n], kv_cache.v[n], self.kernels)
            h, res = self._norm(blk.mlp.norm, x, res)
            x = blk.mlp.mix(h, self.kernels)
        rows = batch.logits_indices
        return self._norm(self.norm, x[rows], res[rows])[0]

    def _one_call_step(self, batch: ForwardBatch, kv_cache: KVCache) -> torch.Tensor | None:
        """`hidden` through the kernel set's `decode_step` where it serves the batch, else None.
        The step (a table of this model's and `kv_cache`'s tensor addresses) is built on first
        use and again when the kernel set, the cache or any tensor (storage or parameter
        object) changed; held in a local, so a step checked is the step run."""
        build, held = self.kernels.decode_step, self._step
        if build is None or (held is not None and held[0] is build and not held[1].fits(batch)):
            return None  # (a prefill or larger step skips the walk over the tensors below)
        weights = self._step_weights()
        if held is None or held[0] is not build or not held[1].current(weights, kv_cache):
            held = self._step = (build, build(weights, kv_cache))
        step = held[1]
        if not step.accepts(batch):
            return None
        return step.run(batch, kv_cache, *self.rotary.cos_sin(batch.positions, torch.float32))

    def _step_weights(self) -> StepWeights:
        """The tensors and constants a one-call decode step reads."""
        layers = tuple(
            LayerWeights(a.norm.scale, a.qkv.weight, a.qkv.bias, a.sinks, a.out.weight,
                         a.out.bias, m.norm.scale, m.gate.weight, m.gate.bias,
                         m.mlp1_weight.blocks, m.mlp1_weight.scales, m.mlp1_bias,
                         m.mlp2_weight.blocks, m.mlp2_weight.scales, m.mlp2_bias, a.sliding,
                         a.window)
            for a, m in ((blk.attn, blk.mlp) for blk in self.block))
        a, m = self.block[0].attn, self.block[0].mlp
        return StepWeights(self.embedding.weight, self.norm.scale, layers, self.norm.eps,
                           a.sm_scale, a.n_q, a.n_kv, a.head_dim, m.top_k, m.limit, m.alpha)
