"""MoE tile sweep on a CUDA GPU at real expert shapes: the grouped matmul and the matrix-vector
kernels, each configuration timed as a CUDA-graph replay of several layers with distinct weights
(so the L2 cache does not flatter) and uniform random routing.

    python benchmarks/gpu_moe_sweep.py [--preset 120b] [--tokens 1,4,16,64] [--layers 8]

Prints, per token count, the fastest configurations of each path in microseconds per layer and
the GB/s of expert bytes read. Owns nothing but this measurement; the chosen tiles live in
`kernels/moe_triton.py` and `kernels/moe_gemv_triton.py`, the figures in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from gptoss_serve.config import ModelConfig
from gptoss_serve.kernels.moe import ExpertWeights
from gptoss_serve.kernels.moe_gemv_triton import GemvTiles
from gptoss_serve.kernels.moe_triton import MoETiles, moe_triton
from gptoss_serve.model.synthetic import preset_config

GROUPED = [MoETiles(16, n, k, w, s) for n, k, w, s in
           [(32, 128, 4, 3), (64, 128, 4, 3), (32, 256, 4, 3), (64, 128, 8, 3), (32, 256, 4, 4)]]
GEMV = [GemvTiles(n, k, w) for n, k, w in
        [(8, 128, 4), (8, 256, 4), (16, 64, 4), (16, 128, 2), (16, 128, 4), (16, 256, 4),
         (32, 128, 4), (32, 256, 4), (64, 128, 4)]]


def random_layer(c: ModelConfig) -> tuple[ExpertWeights, torch.Tensor, torch.Tensor]:
    """Packed experts with random codes and unit-range scales, plus router weight and bias."""
    e, h, i = c.num_experts, c.hidden_size, c.intermediate_size
    u8 = lambda *s: torch.randint(0, 256, s, dtype=torch.uint8, device="cuda")  # noqa: E731
    sc = lambda *s: torch.full(s, 120, dtype=torch.uint8, device="cuda")  # noqa: E731
    bf = lambda *s: torch.randn(*s, device="cuda", dtype=torch.bfloat16) * 0.1  # noqa: E731
    ew = ExpertWeights(bf(e, 2 * i), bf(e, h), w1_blocks=u8(e, 2 * i, h // 32, 16),
                       w1_scales=sc(e, 2 * i, h // 32), w2_blocks=u8(e, h, i // 32, 16),
                       w2_scales=sc(e, h, i // 32))
    return ew, bf(e, h) * 0.2, bf(e)


def graph_us(fn: Callable[[], object], calls_per_run: int, iters: int = 20) -> float:
    """Microseconds per call of fn's body, replayed from one CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / iters / calls_per_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="120b")
    p.add_argument("--tokens", default="1,4,16,64")
    p.add_argument("--layers", type=int, default=8)
    args = p.parse_args()
    c = ModelConfig.from_hf_dict(preset_config(args.preset))
    layers = [random_layer(c) for _ in range(args.layers)]
    h, i, k = c.hidden_size, c.intermediate_size, c.experts_per_token
    expert_bytes = 3 * h * i // 2 + 3 * h * i // 32
    for t in (int(v) for v in args.tokens.split(",")):
        x = torch.randn(t, h, device="cuda", dtype=torch.bfloat16)
        out = torch.empty_like(x)
        gbs = min(c.num_experts, t * k) * expert_bytes / 1e3
        runs = [("grouped", cfg, dict(tiles=cfg)) for cfg in GROUPED]
        runs += [("gemv", cfg, dict(gemv=cfg)) for cfg in GEMV if t * k <= 256]
        runs.append(("default", None, {}))
        for path, cfg, kw in runs:
            us = graph_us(lambda x=x, out=out, kw=kw: [
                moe_triton(x, rw, rb, ew, k, out=out, **kw) for ew, rw, rb in layers], len(layers))
            print(f"tokens {t:4d}  {path:8s} {us:8.1f} us/layer {gbs / us:6.0f} GB/s  {cfg}",
                  flush=True)


if __name__ == "__main__":
    main()
