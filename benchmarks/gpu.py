"""GPU benchmark of the fast path: random real-shape weights built on the GPU, a fast-vs-reference
check, decode tokens/s (CUDA graphs), prefill tokens/s, time to first token, per-kernel GB/s.

    .venv/bin/python benchmarks/gpu.py --preset 120b [--docs docs/benchmarks.md] [--quick]
    .venv/bin/python benchmarks/gpu.py --preset tiny --device cpu --dry-run   # shapes only

Steps: (1) build the model on the device and fill it with random values there (no disk, no
checkpoint); (2) compare the Triton kernels with the references at real shapes and the whole
model's logits on a few tokens; (3) measure the copy bandwidth, then each kernel's achieved GB/s;
(4) decode tokens/s for each (batch, context) whose KV fits, one captured graph per batch;
(5) prefill tokens/s and TTFT; (6) print a markdown table and append it to --docs. One 120b run
fits a 10-minute device call. `--dry-run` runs every step once at tiny sizes without timing
claims, so the script is exercised on a CPU. Knows the model only through its public classes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gptoss_serve.config import ModelConfig
from gptoss_serve.engine.static_decode import PaddedDecode
from gptoss_serve.formats.forward_batch import ForwardBatch, KVCache, SeqSlice
from gptoss_serve.kernels.select import KernelSet, choose_kernels, reference_kernels
from gptoss_serve.model.gpt_oss import GptOssModel
from gptoss_serve.model.synthetic import preset_config

BLOCK = 16
GiB = 1 << 30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="120b", help="120b, 20b, small or tiny")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", default="1,4,16,64,256")
    p.add_argument("--contexts", default="1024,32768")
    p.add_argument("--prompts", default="1024,8192")
    p.add_argument("--quick", action="store_true", help="fewer timing iterations")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, one iteration, no claims")
    p.add_argument("--docs", type=Path, help="append the result table to this markdown file")
    p.add_argument("--no-fused-route", action="store_true",
                   help="route the few-token MoE path with moe.route (linear + topk + softmax) "
                        "instead of the fused kernel (moe_triton.FUSED_ROUTE), to compare")
    return p.parse_args(argv)


def ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


# ---- (1) model with random weights, made on the device ---------------------------------------
@torch.no_grad()
def fill_random_(model: GptOssModel, config: ModelConfig, seed: int = 0) -> None:
    """Random values in place: packed FP4 bytes, E8M0 scales sized to the fan-in, normal bf16."""
    torch.manual_seed(seed)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name.endswith("blocks"):
            t.random_(0, 256)
        elif name.endswith("scales"):  # 2^(s-127) * rms(E2M1 ~ 3.2) ~ 1/sqrt(fan_in)
            fan_in = t.shape[-1] * 32
            t.fill_(127 - round(math.log2(3.2 * math.sqrt(fan_in))))
        elif name.endswith("inv_freq"):
            continue
        elif "norm" in name or name.endswith("sinks"):
            t.normal_(1.0 if "norm" in name else 0.0, 0.1)
        else:
            t.normal_(0.0, 1.0 / math.sqrt(t.shape[-1]))


def build_model(preset: str, device: str, kernels: KernelSet, layers: int | None = None,
                dtype: torch.dtype | None = None) -> tuple[GptOssModel, ModelConfig]:
    """The preset's model with random weights (its first `layers` layers when given), in
    `dtype` (default: bf16 on CUDA, float32 elsewhere)."""
    hf = preset_config(preset)
    if layers is not None:
        hf["num_hidden_layers"] = layers
        if hf.get("layer_types"):
            hf["layer_types"] = hf["layer_types"][:layers]
    config = ModelConfig.from_hf_dict(hf)
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = GptOssModel(config, dtype, device, kernels=kernels)
    fill_random_(model, config)
    model.prepare_experts()  # what loading does: the CPU set dequantizes the experts once
    return model, config


# ---- batches and KV --------------------------------------------------------------------------
def kv_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    per_layer = KVCache.bytes_per_block(1, config.num_key_value_heads, config.head_dim, dtype)
    return per_layer * len(config.full_layers)


def make_batch(config: ModelConfig, seqs: list[tuple[int, int]], device: str
               ) -> tuple[ForwardBatch, int, int]:
    """seqs: (cached, new) per sequence, distinct blocks each. Returns (batch, full, sliding)."""
    slices, full, slide = make_slices(config, seqs)
    return ForwardBatch.build(slices, BLOCK, device), full, slide


def make_slices(config: ModelConfig, seqs: list[tuple[int, int]]
                ) -> tuple[list[SeqSlice], int, int]:
    """The SeqSlices of `make_batch` and the block counts of both pools. Token ids are drawn at
    random per sequence, so that decode rows route to different experts as real traffic does."""
    rng = random.Random(len(seqs))
    slices, full_next, slide_next = [], 0, 0
    keep = -(-config.sliding_window // BLOCK) + 1
    for cached, new in seqs:
        n = -(-(cached + new) // BLOCK)
        full = list(range(full_next, full_next + n))
        live = min(n, keep + -(-new // BLOCK))
        slide = [-1] * (n - live) + list(range(slide_next, slide_next + live))
        full_next, slide_next = full_next + n, slide_next + live
        ids = [rng.randrange(config.vocab_size) for _ in range(new)]
        slices.append(SeqSlice(ids, cached, full, slide))
    return slices, full_next, slide_next


def make_kv(model: GptOssModel, config: ModelConfig, full: int, slide: int) -> KVCache:
    sliding = [config.is_sliding(n) for n in range(config.num_hidden_layers)]
    return KVCache.allocate(sliding, full, max(slide, 1), BLOCK, config.num_key_value_heads,
                            config.head_dim, model.dtype, model.device)


# ---- timing ----------------------------------------------------------------------------------
def time_ms(fn: Callable[[], object], iters: int, device: str) -> float:
    """Median milliseconds of fn (after one warm-up), device events on CUDA."""
    fn()
    if not device.startswith("cuda"):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) * 1e3 / iters
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def copy_bandwidth(device: str, iters: int, size: int) -> float:
    """GB/s of a plain device copy (bytes read + written)."""
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * size / time_ms(lambda: dst.copy_(src), iters, device) / 1e6


# ---- (2) fast path against the references ----------------------------------------------------
def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30))


@torch.no_grad()
def check_fast_path(model: GptOssModel, config: ModelConfig, device: str) -> dict[str, float]:
    """Relative errors: MoE of layer 1 on 5 tokens, logits on a 7- and a 3-token prompt.

    Pass a model of two layers (one sliding, one full) for the logits: random weights give
    near-flat logits whose argmax flips at the first rounding difference, and through 36 layers
    bf16 rounding alone moves them by tens of percent, so a whole 120b model says nothing."""
    fast, ref = model.kernels, reference_kernels()
    mlp = model.block[1].mlp
    x = torch.randn(5, config.hidden_size, device=device, dtype=model.dtype)
    args = (x, mlp.gate.weight, mlp.gate.bias, mlp.experts(), mlp.top_k, mlp.limit, mlp.alpha)
    moe_err = rel_err(fast.moe(*args), ref.moe(*args))
    batch, full, slide = make_batch(config, [(0, 7), (0, 3)], device)
    logits = {}
    for name, ks in (("fast", fast), ("ref", ref)):
        model.kernels = ks
        logits[name] = model(batch, make_kv(model, config, full, slide))
    model.kernels = fast
    same = float((logits["fast"].argmax(-1) == logits["ref"].argmax(-1)).float().mean())
    return {"moe_rel_err": moe_err, "logits_rel_err": rel_err(logits["fast"], logits["ref"]),
            "greedy_agreement": same}


# ---- (3) per-kernel bandwidth -----------------------------------------------------------------
@torch.no_grad()
def kernel_bandwidth(model: GptOssModel, config: ModelConfig, device: str, iters: int,
                     ctx: int) -> list[tuple[str, float, float]]:
    """(kernel, ms, GB/s) for the MoE at 1 token, attention decode at 4 x ctx, RMSNorm."""
    ks, mlp, attn = model.kernels, model.block[1].mlp, model.block[1].attn
    h, e = config.hidden_size, config.experts_per_token
    x = torch.randn(1, h, device=device, dtype=model.dtype)
    ew = mlp.experts()
    moe_bytes = e * sum(t[0].numel() * t.element_size() for t in
                        (ew.w1_blocks, ew.w1_scales, ew.w2_blocks, ew.w2_scales) if t is not None)
    moe_ms = time_ms(lambda: ks.moe(x, mlp.gate.weight, mlp.gate.bias, ew, mlp.top_k,
                                    mlp.limit, mlp.alpha), iters, device)
    batch, full, slide = make_batch(config, [(ctx, 1)] * 4, device)
    kv = make_kv(model, config, full, 1)
    d, nq, nkv = config.head_dim, config.num_attention_heads, config.num_key_value_heads
    q = torch.randn(4, nq, d, device=device, dtype=model.dtype)
    kv_new = torch.randn(4, nkv, d, device=device, dtype=model.dtype)
    attn_ms = time_ms(lambda: ks.attention(
        q, kv_new, kv_new, kv.k[1], kv.v[1], batch.full.slot_mapping, batch.full.block_tables,
        batch.query_start_loc, batch.seq_lens, attn.sinks, attn.sm_scale, 0), iters, device)
    attn_bytes = 4 * (ctx + 1) * nkv * d * 2 * kv.k[1].element_size()
    xs = torch.randn(256, h, device=device, dtype=model.dtype)
    norm_ms = time_ms(lambda: ks.rms_norm(xs, model.norm.scale, 1e-5, xs), iters, device)
    norm_bytes = 4 * xs.numel() * xs.element_size()
    return [(f"MoE, 1 token ({e} experts)", moe_ms, moe_bytes / moe_ms / 1e6),
            (f"attention decode, 4 x {ctx} ctx", attn_ms, attn_bytes / attn_ms / 1e6),
            ("RMSNorm + residual, 256 rows", norm_ms, norm_bytes / norm_ms / 1e6)]


# ---- (4) decode, (5) prefill -----------------------------------------------------------------
@torch.no_grad()
def decode_tok_s(model: GptOssModel, config: ModelConfig, device: str, batch_size: int,
                 ctx: int, iters: int) -> tuple[float, float] | None:
    """Tokens/s of the runner's padded decode path (`engine/static_decode.py`): the captured
    step replayed alone, and the whole step (host batch build, copies into the static
    buffers, replay). None when the KV of this shape does not fit."""
    need = batch_size * (ctx + BLOCK) * kv_bytes_per_token(config, model.dtype)
    if device.startswith("cuda") and need > 0.85 * torch.cuda.mem_get_info()[0]:
        return None
    slices, full, slide = make_slices(config, [(ctx, 1)] * batch_size)
    kv = make_kv(model, config, full, slide)
    path = PaddedDecode(model, kv, BLOCK, -(-(ctx + 1) // BLOCK), [batch_size],
                        torch.device(device),
                        graphs=device.startswith("cuda") and model.kernels.is_triton)
    path.capture()
    whole = time_ms(lambda: path.run(slices), iters, device)
    replay = time_ms(lambda: path.graphs.run(batch_size), iters, device)
    return batch_size / replay * 1e3, batch_size / whole * 1e3


@torch.no_grad()
def prefill_ms(model: GptOssModel, config: ModelConfig, device: str, prompt: int,
               iters: int) -> float:
    batch, full, slide = make_batch(config, [(0, prompt)], device)
    kv = make_kv(model, config, full, slide)
    return time_ms(lambda: model(batch, kv).argmax(-1), iters, device)


# ---- (6) report ------------------------------------------------------------------------------
def report(res: dict, args: argparse.Namespace) -> str:
    lines = [f"## GPU kernels and decode, {res['date']}, {res['gpu']}", "",
             f"Command: `{res['command']}`. Preset {args.preset}, kernels: {res['kernels']}.",
             f"Copy bandwidth {res['copy_gbs']:.0f} GB/s. Fast path vs reference (2 layers): "
             + ", ".join(f"{k} {v:.3g}" for k, v in res["check"].items()) + ".", "",
             "| kernel | ms | GB/s | % of copy |", "|---|---|---|---|"]
    for name, ms, gbs in res["kernels_bw"]:
        lines.append(f"| {name} | {ms:.3f} | {gbs:.0f} | {100 * gbs / res['copy_gbs']:.0f}% |")
    ctxs = sorted({c for _, c in res["decode"]})
    lines += ["", "Decode tok/s: graph replay alone / whole runner step (host batch build and "
              "copies into the static buffers included).", "",
              "| decode tok/s | " + " | ".join(f"ctx {c}" for c in ctxs) + " |",
              "|---" * (len(ctxs) + 1) + "|"]
    for b in sorted({b for b, _ in res["decode"]}):
        cells = [res["decode"][(b, c)] for c in ctxs]
        lines.append(f"| batch {b} | " + " | ".join("KV does not fit" if v is None
                                                    else f"{v[0]:.1f} / {v[1]:.1f}"
                                                    for v in cells) + " |")
    lines += ["", "| prompt | prefill ms | prefill tok/s |", "|---|---|---|"]
    lines += [f"| {p} | {ms:.1f} | {p / ms * 1e3:.0f} |" for p, ms in res["prefill"].items()]
    first = min(res["prefill"])
    lines += ["", f"Time to first token, {first}-token prompt (model only, no HTTP): "
              f"{res['prefill'][first]:.1f} ms.", ""]
    if args.dry_run:
        lines.insert(1, "DRY RUN at tiny sizes: these figures are not measurements.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        args.batches, args.contexts, args.prompts = "1,2", "40", "24"
    iters = 1 if args.dry_run else 5 if args.quick else 20
    cuda = args.device.startswith("cuda")
    kernels = choose_kernels(args.device, torch.bfloat16 if cuda else torch.float32)
    if args.no_fused_route and kernels.is_triton:
        from gptoss_serve.kernels import moe_triton

        moe_triton.FUSED_ROUTE = False
        kernels = dataclasses.replace(kernels, description=kernels.description
                                      + " (MoE routing unfused)")
    print(f"kernels: {kernels.description}", flush=True)
    res: dict = {"date": dt.date.today().isoformat(), "kernels": kernels.description,
                 "gpu": torch.cuda.get_device_name() if cuda else "CPU",
                 "command": " ".join(["benchmarks/gpu.py", *(argv or sys.argv[1:])])}
    res["check"] = check_fast_path(*build_model(args.preset, args.device, kernels, layers=2),
                                   args.device)  # before the full model: one at a time in memory
    print(f"fast path vs reference: {res['check']}", flush=True)
    model, config = build_model(args.preset, args.device, kernels)
    res["copy_gbs"] = copy_bandwidth(args.device, iters, GiB if cuda else 1 << 20)
    ctx_max = max(ints(args.contexts))
    res["kernels_bw"] = kernel_bandwidth(model, config, args.device, iters, ctx_max)
    res["decode"] = {(b, c): decode_tok_s(model, config, args.device, b, c, iters)
                     for c in ints(args.contexts) for b in ints(args.batches)}
    res["prefill"] = {p: prefill_ms(model, config, args.device, p, max(1, iters // 4))
                      for p in ints(args.prompts)}
    table = report(res, args)
    print(table)
    if args.docs and not args.dry_run:
        with args.docs.open("a") as f:
            f.write("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
