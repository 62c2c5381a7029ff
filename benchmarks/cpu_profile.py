"""Where the time goes on CPU: prefill and decode steps of a checkpoint through the real engine.

Loads a checkpoint (e.g. `gptoss-serve make-checkpoint DIR --preset small`) with a chosen kernel
set and dtype, then runs the engine step by step and reports: the prefill of one long prompt
(TTFT of a lone request), and the decode step time at batch 1 and batch N (tokens/s). With
`--profile` it also prints the torch profiler's top operators of a few decode steps; with
`--breakdown` it splits the batch-1 decode step into the model up to the final norm, the output
head (the greedy screen or the logits kernel), sampler
and engine host work (scheduler, ForwardBatch, update), each timed around the real calls
(attention and MoE read 0 where the one-call decode step ran them; `--layer-path` turns it
off).

    .venv/bin/python benchmarks/cpu_profile.py DIR --kernels auto --dtype float32

Owns nothing but this measurement; knows nothing of HTTP. Peer comparisons live in
`benchmarks/cpu_compare.py`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import time

import torch

from gptoss_serve.config import CacheConfig, SchedulerConfig
from gptoss_serve.engine.engine import LLMEngine
from gptoss_serve.engine.request import EngineRequest, SamplingParams


def build_engine(path: str, kernels: str, dtype: str, max_seqs: int) -> LLMEngine:
    engine = LLMEngine.from_config(
        path, dtype=dtype, device="cpu", kernels=kernels,
        cache=CacheConfig(cpu_kv_cache_gib=0.5, enable_prefix_caching=False),
        sched=SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=2048))
    print(f"kernels: {engine.runner.model.kernels.description}")
    return engine


def add_prompts(engine: LLMEngine, n: int, prompt_len: int, out_len: int, tag: str) -> None:
    rng = random.Random(0)
    params = SamplingParams(max_tokens=out_len, ignore_eos=True, temperature=0.0)
    for i in range(n):
        ids = tuple(rng.randrange(1000, 190000) for _ in range(prompt_len))
        engine.add_request(EngineRequest(f"{tag}-{i}", ids, params))


def timed_steps(engine: LLMEngine) -> list[tuple[int, float]]:
    """Step until done; (number of sequences that got a token, seconds) per step."""
    steps = []
    while engine.has_unfinished():
        t0 = time.perf_counter()
        outs = engine.step()
        steps.append((sum(len(o.new_token_ids) for o in outs), time.perf_counter() - t0))
    return steps


def decode_rate(engine: LLMEngine, batch: int, prompt_len: int, out_len: int) -> dict:
    add_prompts(engine, batch, prompt_len, out_len, f"d{batch}")
    steps = timed_steps(engine)
    decode = [dt for n, dt in steps if n == batch][1:]  # full-batch decode steps
    step_s = statistics.median(decode)
    return {"batch": batch, "step_ms": round(step_s * 1e3, 2),
            "tok_per_s": round(batch / step_s, 1), "steps": len(decode)}


def prefill_time(engine: LLMEngine, prompt_len: int) -> dict:
    add_prompts(engine, 1, prompt_len, 1, f"p{prompt_len}")
    steps = timed_steps(engine)
    return {"prompt": prompt_len, "ttft_ms": round(sum(dt for _, dt in steps) * 1e3, 1)}


def profile_decode(engine: LLMEngine, batch: int, rows: int) -> None:
    add_prompts(engine, batch, 128, 8, "prof")
    engine.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        while engine.has_unfinished():
            engine.step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


class Timers:
    """Wraps callables so that each call's wall time is added to a named list."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def wrap(self, name: str, fn):
        self.times[name] = []

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.times[name].append(time.perf_counter() - t0)
        return timed


def breakdown(engine: LLMEngine, out_len: int) -> dict:
    """Median ms per batch-1 decode step of: the model up to the final norm (of which the
    attention and MoE kernels, all layers), the output head (the greedy screen where the step
    takes it, else the logits kernel), sampler, engine host work (the rest of the step)."""
    runner, timers = engine.runner, Timers()
    model, sampler = runner.model, runner.sampler
    kernels = model.kernels
    model.kernels = dataclasses.replace(
        kernels, logits=timers.wrap("logits", kernels.logits),
        attention=timers.wrap("attention", kernels.attention), moe=timers.wrap("moe", kernels.moe))
    saved = {"hidden": model.hidden, "greedy_tokens": model.greedy_tokens}
    for name, fn in saved.items():
        setattr(model, name, timers.wrap(name, fn))
    sample = sampler.sample
    sampler.sample = timers.wrap("sampler", sample)
    try:
        add_prompts(engine, 1, 128, out_len, "bd")
        steps = [dt for _, dt in timed_steps(engine)][2:]  # skip prefill and the first decode
    finally:
        model.kernels, sampler.sample = kernels, sample
        for name in saved:
            delattr(model, name)
    skip = {"attention": 2 * len(model.block), "moe": 2 * len(model.block)}
    per = {k: len(model.block) if k in skip else 1 for k in timers.times}
    ms = {k: _median_per_step(v[skip.get(k, 2):], per[k], len(steps)) for k, v in
          timers.times.items()}
    head = ms["logits"] + ms["greedy_tokens"]
    host = statistics.median(steps) * 1e3 - ms["hidden"] - head - ms["sampler"]
    return {"step_ms": round(statistics.median(steps) * 1e3, 2),
            "head": "greedy screen" if ms["greedy_tokens"] and not ms["logits"] else "logits",
            "head_ms": round(head, 2), "model_without_head_ms": round(ms["hidden"], 2),
            "attention_ms": round(ms["attention"], 2), "moe_ms": round(ms["moe"], 2),
            "sampler_ms": round(ms["sampler"], 2), "engine_host_ms": round(host, 2)}


def _median_per_step(times: list[float], per_step: int, steps: int) -> float:
    """Median ms per step of a call made `per_step` times a step (0 where it was not called
    in most steps)."""
    sums = [sum(times[i:i + per_step]) for i in range(0, len(times), per_step)]
    return statistics.median(sums + [0.0] * (steps - len(sums))) * 1e3 if steps else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--kernels", default="auto", choices=("auto", "reference"))
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill", type=int, default=1024)
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 32])
    ap.add_argument("--out-len", type=int, default=16)
    ap.add_argument("--profile", type=int, default=0, metavar="BATCH")
    ap.add_argument("--breakdown", action="store_true", help="split the batch-1 decode step")
    ap.add_argument("--no-greedy-screen", action="store_true",
                    help="greedy steps compute every logit (the path before the screen)")
    ap.add_argument("--layer-path", action="store_true",
                    help="no one-call decode step (KernelSet.decode_step): layer by layer")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engine = build_engine(args.model, args.kernels, args.dtype, max(args.batch + [1]))
    model = engine.runner.model
    if args.no_greedy_screen:
        model.kernels = dataclasses.replace(model.kernels, argmax_index=None)
    if args.layer_path:
        model.kernels = dataclasses.replace(model.kernels, decode_step=None)
    add_prompts(engine, 1, 16, 2, "warm")
    timed_steps(engine)
    results: dict = {"kernels": args.kernels, "dtype": args.dtype, "threads": args.threads,
                     "greedy_screen": model._argmax_index() is not None}
    if args.prefill:
        results["prefill"] = prefill_time(engine, args.prefill)
    results["decode"] = [decode_rate(engine, b, 128, args.out_len) for b in args.batch]
    if args.breakdown:
        results["breakdown_batch1"] = breakdown(engine, args.out_len)
    print(json.dumps(results))
    if args.profile:
        profile_decode(engine, args.profile, 25)


if __name__ == "__main__":
    main()
