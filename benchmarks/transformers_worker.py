"""The transformers baseline of cpu_compare: `generate` in-process, timed like a served request.

Run as a script by cpu_compare.py (`python benchmarks/transformers_worker.py SPEC.json OUT.json`)
so that its memory and threads go away with it. Owns batching the workload into `generate` calls
and the per-token timestamps (a streamer that records when each step's tokens appear). Uses the
bench package's workloads and metrics so that its figures mean what the served figures mean.
Knows nothing of HTTP or of the other peers.
"""

from __future__ import annotations

import json
import sys
import time
from os import getloadavg
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Mxfp4Config
from transformers.generation.streamers import BaseStreamer

from gptoss_serve.bench.client import RequestResult
from gptoss_serve.bench.metrics import summarize
from gptoss_serve.bench.workloads import BenchRequest, random_workload
from gptoss_serve.harmony.tokenizer import get_tokenizer


class StepClock(BaseStreamer):
    """Records the time of every generated step (the first `put` is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:
            self.times.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        pass


def run_batch(model, batch: list[BenchRequest], out_len: int) -> tuple[list[RequestResult], list]:
    ids = torch.tensor([list(r.prompt_ids) for r in batch])
    clock = StepClock()
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=out_len, min_new_tokens=out_len, streamer=clock,
                         pad_token_id=199999)
    results = []
    for r in batch:
        t = clock.times
        gaps = [b - a for a, b in zip(t, t[1:], strict=False)]
        results.append(RequestResult(success=True, prompt_len=r.prompt_len, output_tokens=len(t),
                                     expected_output_len=out_len, ttft=t[0] - start,
                                     latency=t[-1] - start, itl=gaps))
    return results, out[:, ids.shape[1]:].tolist()


def run_case(model, tok, case: dict) -> dict:
    reqs = random_workload(tok, case["num_prompts"], case["input_len"], case["output_len"],
                           0.0, case.get("seed", 0))
    bs, load = case["concurrency"], getloadavg()[0]
    results: list[RequestResult] = []
    start = time.perf_counter()
    for i in range(0, len(reqs), bs):
        batch_results, _ = run_batch(model, reqs[i:i + bs], case["output_len"])
        results += batch_results
    metrics = summarize(results, time.perf_counter() - start)
    return {"name": case["name"], "metrics": metrics.to_dict(),
            "loadavg_1m": [load, getloadavg()[0]]}


def greedy_ids(model, tok, prompts: list[list[int]], n: int) -> list[list[int]]:
    return [run_batch(model, [BenchRequest("", tuple(p), len(p), n)], n)[1][0] for p in prompts]


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec.get("threads", 2))
    # On CPU transformers dequantizes MXFP4 experts to bf16 at load (asking explicitly avoids its
    # accelerate requirement).
    model = AutoModelForCausalLM.from_pretrained(
        spec["checkpoint"], dtype=torch.bfloat16, quantization_config=Mxfp4Config(dequantize=True))
    model.eval()
    tok = get_tokenizer()
    versions = {"transformers": __import__("transformers").__version__, "torch": torch.__version__}
    out: dict = {"cases": [], "versions": versions}
    with torch.inference_mode():
        out["greedy"] = greedy_ids(model, tok, spec["greedy_prompts"], spec["greedy_tokens"])
        for case in spec["cases"]:  # written after each case so that a timeout keeps the rest
            out["cases"].append(run_case(model, tok, case))
            Path(out_path).write_text(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
