"""Compile every Triton kernel the model launches for a Hopper GPU (sm_90) on a machine without one.

The CPU tests run the kernels under Triton's interpreter, which accepts programs the GPU compiler
rejects and never takes the bf16 tensor-core path. Here Triton's CUDA back end compiles each
launch of a real forward pass instead: a stand-in driver names the target, every launch becomes
a compile-only warm-up (nothing runs, outputs stay garbage), and the operands are what a GPU
would get (bf16 dots; float32 for the float32 model). Covered: prefill, chunked prefill, decode
with and without split keys (132 SMs assumed), the matrix-vector and both grouped MoE tile sets.

    python tests/kernels/xcompile_sm90.py [--preset small] [--dtype bfloat16]

Prints one line per distinct (kernel, constexprs) compiled, then FAILURES n. Exit 0 when all
compiled, 1 when any failed, 3 when this Triton cannot be driven this way (the test then skips).
Must run in a process where TRITON_INTERPRET is unset (Triton reads it at import).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any

SETUP_FAILED = 3


def install_fake_driver() -> list[tuple[str, str]]:
    """Make every JIT launch a compile for sm_90; returns the list that collects failures."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    class HopperStandIn:
        def is_active(self) -> bool:
            return True

        def get_current_device(self) -> int:
            return 0

        def get_current_stream(self, device: int | None = None) -> int:
            return 0

        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cuda", 90, 32)

        def get_active_torch_device(self) -> torch.device:
            return torch.device("cpu")

    driver.set_active(HopperStandIn())
    failures: list[tuple[str, str]] = []
    seen: set[str] = set()
    compile_only = JITFunction.run

    def run(self: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        try:
            compile_only(self, *args, grid=grid, warmup=True, **kwargs)
            consts = {k: str(v).replace("triton.language.", "") for k, v in kwargs.items()
                      if k.isupper()}
            line = f"OK {self.fn.__name__} {consts}"
            if line not in seen:
                seen.add(line)
                print(line, flush=True)
        except Exception as e:  # a compile error of this kernel: recorded, the pass goes on
            failures.append((self.fn.__name__, f"{type(e).__name__}: {e}"[:3000]))

    JITFunction.run = run
    return failures


def gpu_like_operands() -> None:
    """On a GPU, bf16 operands feed the tensor cores; CPU tensors would get float32 ones."""
    import torch

    from gptoss_serve.kernels import attention_triton, moe_triton

    def like_cuda(t: torch.Tensor) -> bool:
        return t.dtype == torch.float32

    for mod in (moe_triton, attention_triton):  # each imported the name itself
        mod.dot_in_float32 = like_cuda
    attention_triton.device_sms = lambda t: 132  # an H100/H200: decode splits its keys


def forward_passes(preset: str, dtype_name: str) -> None:
    """Batches that reach every kernel variant the model has, through the model's own code."""
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
    import gpu as bench  # make_batch / make_kv: the GPU benchmark's batch builders

    from gptoss_serve.kernels.select import triton_kernels

    model, config = bench.build_model(preset, "cpu", triton_kernels(""), layers=2,
                                      dtype=getattr(torch, dtype_name))
    many = -(-17 * config.num_experts // config.experts_per_token)  # > 16 rows per expert
    shapes = [[(0, 7), (0, 3)], [(0, many)], [(40, 1)], [(40, 1)] * 8, [(1000, 1)] * 4,
              [(20, 30), (5, 1)]]
    with torch.no_grad():
        for seqs in shapes:
            batch, full, slide = bench.make_batch(config, seqs, "cpu")
            model(batch, bench.make_kv(model, config, full, slide))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    args = p.parse_args()
    if os.environ.get("TRITON_INTERPRET") not in (None, "", "0"):
        print("TRITON_INTERPRET is set: nothing would compile", file=sys.stderr)
        return SETUP_FAILED
    try:
        failures = install_fake_driver()
        gpu_like_operands()
    except Exception:
        traceback.print_exc()
        return SETUP_FAILED
    forward_passes(args.preset, args.dtype)
    print(f"FAILURES {len(failures)}")
    for name, err in failures:
        print(f"FAILED {name}: {err}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
