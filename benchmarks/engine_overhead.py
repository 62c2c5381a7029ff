"""Host overhead of one engine step, with a model that costs nothing.

Two stubs: `scheduler` (a runner that returns a chosen token per sampled row: schedule + update
bookkeeping only) and `runner` (the real ModelRunner: its batch inputs, a stub model returning
constant logits over a small vocabulary, and the sampler). Every sequence is in decode with a
context of --context tokens; reports milliseconds per step at each batch size, as wall-clock
time and as this process's CPU time (the host work itself: on a machine shared with other jobs
the wall clock also counts the time the process waits for a core), each the median of --repeat
runs.

    .venv/bin/python benchmarks/engine_overhead.py [--write]  # --write: add to docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from gptoss_serve.config import CacheConfig, ModelConfig, SchedulerConfig
from gptoss_serve.engine.engine import LLMEngine
from gptoss_serve.engine.model_runner import KVPlan, ModelRunner
from gptoss_serve.engine.request import EngineRequest, SamplingParams
from gptoss_serve.engine.scheduler import SchedulerOutput
from gptoss_serve.engine.sequence import SampledToken

VOCAB = 1024
CONFIG = ModelConfig(num_hidden_layers=2, hidden_size=8, num_attention_heads=1,
                     num_key_value_heads=1, head_dim=1, num_experts=1, experts_per_token=1,
                     intermediate_size=8, vocab_size=VOCAB)


class StubRunner:
    def execute(self, out: SchedulerOutput) -> list[SampledToken]:
        return [SampledToken(7)] * len(out.sampling)


class StubModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = CONFIG
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch, kv_cache) -> torch.Tensor:
        return torch.zeros(len(batch.logits_indices), VOCAB)


def build(kind: str, batch: int, context: int) -> LLMEngine:
    cache = CacheConfig(block_size=16)
    sched = SchedulerConfig(max_num_seqs=256, max_num_batched_tokens=8192)
    full = batch * (context // 16 + 64)
    slide = 256 * 10 + 8192 // 16
    runner = StubRunner() if kind == "scheduler" else ModelRunner(
        StubModel(), CONFIG, KVPlan(full, slide, 0, 0, 0), 16, torch.float32, torch.device("cpu"))
    return LLMEngine(runner, CONFIG, cache, sched, num_full_blocks=full, num_sliding_blocks=slide)


def ms_per_step(kind: str, batch: int, context: int, steps: int) -> tuple[float, float]:
    """(wall-clock, CPU) milliseconds per decode step."""
    engine = build(kind, batch, context)
    params = SamplingParams(temperature=0.0, max_tokens=10**6, ignore_eos=True)
    for i in range(batch):
        engine.add_request(EngineRequest(f"r{i}", tuple((i + j) % VOCAB for j in range(context)),
                                         params))
    while any(s.num_output_tokens == 0 for s in engine.scheduler.running) \
            or engine.scheduler.waiting:
        engine.step()  # prefill until every sequence decodes
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        engine.step()
    return ((time.perf_counter() - start) / steps * 1000,
            (time.process_time() - cpu) / steps * 1000)


def median_ms(kind: str, batch: int, context: int, steps: int, repeat: int) -> tuple[float, float]:
    runs = [ms_per_step(kind, batch, context, steps) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is kept)")
    ap.add_argument("--write", action="store_true", help="append the table to docs/benchmarks.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for batch in (1, 64, 256):
        (sw, sc), (rw, rc) = [median_ms(kind, batch, args.context, args.steps, args.repeat)
                              for kind in ("scheduler", "runner")]
        rows.append(f"| {batch} | {sw:.3f} | {sc:.3f} | {rw:.3f} | {rc:.3f} |")
        print(rows[-1], flush=True)
    report = "\n".join([
        f"\n## Engine host overhead per decode step ({datetime.date.today()})\n",
        f"Machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, load "
        f"average {os.getloadavg()[0]:.1f} at the end (shared: wall-clock figures are inflated), "
        f"Python {platform.python_version()}, torch {torch.__version__}, 1 torch thread.",
        f"Command: `.venv/bin/python benchmarks/engine_overhead.py --context {args.context} "
        f"--steps {args.steps} --repeat {args.repeat} --write`",
        f"Context {args.context} tokens per sequence; stub model, vocabulary {VOCAB}; medians "
        f"of {args.repeat} runs.\n",
        "| batch | scheduler + update, wall (ms/step) | CPU (ms/step) "
        "| + batch inputs + sampler, wall (ms/step) | CPU (ms/step) |",
        "|---|---|---|---|---|", *rows, ""])
    if args.write:
        path = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
        with path.open("a") as f:
            f.write(report)


if __name__ == "__main__":
    main()
