"""What constrained decoding costs: the mask per token on the 201088-id vocabulary, and decode
tokens/s with and without a schema through the real engine.

1. Mask cost: for each schema of a small corpus, a constraint walks a valid random output (at each
   token: fill the bitmask, pick a random allowed token, accept it); the fill and accept times per
   token give mean and p99, and the time to apply a 32-row bitmask to float32 logits (the C
   kernel and the torch unpack).
2. Decode: batch 1 and 32 on a checkpoint (e.g. `gptoss-serve make-checkpoint DIR --preset
   small`), greedy, `--out-len` tokens per sequence, without a constraint and with a JSON schema
   enforced from the first token (an array of at least 1000 bounded integers, so that no
   sequence ends early); the median full-batch step gives tokens/s (best of `--repeat` runs).
   The masks are filled on the worker thread while the forward pass runs; the report also gives
   the mean fill time per step.

    .venv/bin/python benchmarks/constrained.py DIR [--threads 2] [--out-len 32] [--write]

`--write` appends the figures to docs/benchmarks.md. Owns nothing but this measurement.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from gptoss_serve.config import CacheConfig, SchedulerConfig
from gptoss_serve.constrain import build_constraint, build_text_constraint
from gptoss_serve.engine import constraint as engine_constraint
from gptoss_serve.engine import sampler as sampler_module
from gptoss_serve.engine.constraint import apply_bitmask, apply_bitmask_torch, bitmask_words
from gptoss_serve.engine.engine import LLMEngine
from gptoss_serve.engine.request import EngineRequest, SamplingParams
from gptoss_serve.harmony.tokenizer import VOCAB_SIZE

S = {"type": "string", "maxLength": 24}
SCHEMAS = {
    "flat object": {"type": "object", "properties": {"name": S, "age": {"type": "integer"},
                                                      "ok": {"type": "boolean"}},
                    "required": ["name", "age", "ok"], "additionalProperties": False},
    "nested + arrays": {"type": "object", "properties": {"items": {"type": "array", "maxItems": 4,
                        "items": {"type": "object", "properties": {
                            "id": {"type": "integer", "minimum": 0, "maximum": 1000},
                            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}}},
                            "required": ["id", "tags"], "additionalProperties": False}}},
                        "required": ["items"], "additionalProperties": False},
    "anyOf": {"type": "object", "properties": {"v": {"anyOf": [{"type": "number"}, S,
                                                               {"type": "null"}]}},
              "required": ["v"]},
}
LONG = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
        "minItems": 1000}


def mask_cost(tokens_per_schema: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    words = bitmask_words(VOCAB_SIZE)
    fill, accept = [], []
    for schema in SCHEMAS.values():
        rf = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
        c = build_text_constraint(response_format=rf).new_constraint()
        buf = torch.zeros(1, words, dtype=torch.int32)
        for _ in range(tokens_per_schema):
            t0 = time.perf_counter()
            c.fill_bitmask(buf, 0)
            fill.append(time.perf_counter() - t0)
            bits = ((buf[0][:, None] >> torch.arange(32, dtype=torch.int32)) & 1).reshape(-1)
            allowed = bits[:VOCAB_SIZE].nonzero().flatten().tolist()
            if not allowed or c.is_finished():
                break
            tok = rng.choice(allowed)
            t0 = time.perf_counter()
            c.accept_token(tok)
            accept.append(time.perf_counter() - t0)
    logits = torch.randn(32, VOCAB_SIZE)
    masks = torch.full((32, words), 0x0F0F0F0F, dtype=torch.int32)
    apply_times: dict[str, list[float]] = {"c": [], "torch": []}
    for _ in range(20):
        for kind, fn in (("c", apply_bitmask), ("torch", apply_bitmask_torch)):
            x = logits.clone()
            t0 = time.perf_counter()
            fn(x, list(range(32)), masks)
            apply_times[kind].append(time.perf_counter() - t0)
    ms = lambda v: round(v * 1e3, 3)  # noqa: E731
    q = lambda v, p: sorted(v)[min(len(v) - 1, int(p * len(v)))]  # noqa: E731
    return {"tokens": len(fill), "fill_mean_ms": ms(statistics.mean(fill)),
            "fill_p99_ms": ms(q(fill, 0.99)), "accept_mean_ms": ms(statistics.mean(accept)),
            "accept_p99_ms": ms(q(accept, 0.99)),
            "apply32_median_ms": ms(statistics.median(apply_times["c"])),
            "apply32_torch_median_ms": ms(statistics.median(apply_times["torch"]))}


class Timed:
    """Times every call of `module.name` (the worker's `_fill`, the sampler's `apply_bitmask`)
    while active."""

    def __init__(self, module, name: str) -> None:
        self.times: list[float] = []
        self._module, self._name = module, name
        self._orig = getattr(module, name)

    def __enter__(self) -> Timed:
        def timed(*args):
            t0 = time.perf_counter()
            out = self._orig(*args)
            self.times.append(time.perf_counter() - t0)
            return out
        setattr(self._module, self._name, timed)
        return self

    def __exit__(self, *exc) -> None:
        setattr(self._module, self._name, self._orig)

    def mean_ms(self) -> float:
        v = self.times[1:]  # the first includes one-off work
        return round(statistics.mean(v) * 1e3, 2) if v else 0.0


CASES = ("no schema", "no schema, full head", "schema")


def decode_rate(engine: LLMEngine, batch: int, out_len: int, case: str) -> dict:
    """`case`: one of CASES. "full head": a zero logit_bias takes the rows off the greedy screen,
    as a constraint does, so the difference to "schema" is the masks' own cost."""
    rng = random.Random(batch)
    constrained = case == "schema"
    spec = build_text_constraint(structured_outputs={"json": LONG}) if constrained else None
    bias = ((0, 0.0),) if case == "no schema, full head" else ()
    params = SamplingParams(max_tokens=out_len, temperature=0.0, ignore_eos=True,
                            constraint=spec, logit_bias=bias)
    for i in range(batch):
        ids = tuple(rng.randrange(1000, 190000) for _ in range(64))
        engine.add_request(EngineRequest(f"b{batch}-{case}-{i}-{rng.random()}", ids, params))
    steps = []
    with Timed(engine_constraint, "_fill") as fill, Timed(sampler_module, "apply_bitmask") as apply:
        while engine.has_unfinished():
            t0 = time.perf_counter()
            outs = engine.step()
            steps.append((sum(len(o.new_token_ids) for o in outs), time.perf_counter() - t0))
    decode = [s for n, s in steps if n == batch][1:]
    step = statistics.median(decode)
    return {"batch": batch, "case": case, "step_ms": round(step * 1e3, 2),
            "tok_per_s": round(batch / step, 1), "fill_ms": fill.mean_ms(),
            "apply_ms": apply.mean_ms()}


def harmony_build_ms() -> float:
    """First build of a harmony grammar with a schema and two tools (compile, not cached)."""
    tools = [{"type": "function", "function": {"name": f"f{i}", "parameters": SCHEMAS[k]}}
             for i, k in enumerate(SCHEMAS)]
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMAS["nested + arrays"]}}
    t0 = time.perf_counter()
    build_constraint(response_format=rf, tools=tools, max_reasoning_tokens=64)
    return round((time.perf_counter() - t0) * 1e3, 1)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-len", type=int, default=32)
    ap.add_argument("--mask-tokens", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the fastest is kept")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    build_text_constraint(response_format={"type": "json_object"})  # tokenizer built (~1 s)
    results = {"mask": mask_cost(args.mask_tokens), "harmony_build_ms": harmony_build_ms(),
               "decode": []}
    engine = LLMEngine.from_config(
        args.model, dtype="auto", device="cpu",
        cache=CacheConfig(cpu_kv_cache_gib=0.5, enable_prefix_caching=False),
        sched=SchedulerConfig(max_num_seqs=32, max_num_batched_tokens=4096))
    for batch in (1, 32):
        runs: dict[str, list[dict]] = {c: [] for c in CASES}
        for _ in range(args.repeat):  # interleaved repeats, the best kept (a shared machine)
            for case in CASES:
                runs[case].append(decode_rate(engine, batch, args.out_len, case))
        results["decode"] += [min(runs[c], key=lambda r: r["step_ms"]) for c in CASES]
    engine.structured.close()
    print(json.dumps(results, indent=1))
    if args.write:
        write(results, args)


def write(results: dict, args: argparse.Namespace) -> None:
    m = results["mask"]
    lines = [
        "", f"## Constrained decoding cost ({dt.date.today().isoformat()})", "",
        f"Machine: {os.cpu_count()}-core shared VM ({cpu_name()}, AVX2), torch "
        f"{torch.__version__}, {args.threads} torch threads; other jobs were running."
        f" 1-minute load average at the end: {os.getloadavg()[0]:.1f}.",
        f"Command: `.venv/bin/python benchmarks/constrained.py {args.model} --threads "
        f"{args.threads} --out-len {args.out_len} --repeat {args.repeat} --write`", "",
        f"Mask per token (llguidance, 201088 ids, {m['tokens']} tokens over "
        f"{len(SCHEMAS)} schemas): fill mean {m['fill_mean_ms']} ms, p99 {m['fill_p99_ms']} ms; "
        f"accept mean {m['accept_mean_ms']} ms, p99 {m['accept_p99_ms']} ms; applying a "
        f"32-row bitmask (every word mixed, the worst case) to float32 logits: "
        f"{m['apply32_median_ms']} ms with the C kernel, {m['apply32_torch_median_ms']} ms with "
        f"the torch unpack (`apply_bitmask_torch`, the path off CPU) (medians). First build "
        f"of a harmony grammar with a schema, 3 tools and a budget: "
        f"{results['harmony_build_ms']} ms (then cached).", "",
        "| batch | case | step ms | tok/s | mask fill ms/step (worker thread, overlapped) "
        "| mask apply ms/step (main thread) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["decode"]:
        schema = r["case"] == "schema"
        lines.append(f"| {r['batch']} | {r['case']} | {r['step_ms']} | {r['tok_per_s']} | "
                     f"{r['fill_ms'] if schema else '-'} | {r['apply_ms'] if schema else '-'} |")
    path = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
