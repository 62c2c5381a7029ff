"""The Markdown section that cpu_compare appends to docs/benchmarks.md.

Owns the layout: run facts, one table of output tok/s / TTFT / TPOT per case and server, the
ratios ours/peer, greedy agreement and every failure with its error. Knows nothing of how the
figures were measured.
"""

from __future__ import annotations

OURS = "gptoss-serve"


def _fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _figures(result: dict, case: str) -> tuple[float, float, float] | None:
    for c in result.get("cases", []):
        if c["name"] == case and c["metrics"]["completed"] > 0:
            m = c["metrics"]
            return m["output_throughput"], m["ttft_ms"]["mean"], m["tpot_ms"]["mean"]
    return None


def _table(run: dict, ok: list[dict]) -> list[str]:
    head = "| case | " + " | ".join(r["peer"] for r in ok) + " |"
    rows = [head, "|---" * (len(ok) + 1) + "|"]
    for case in (c["name"] for c in run["cases"]):
        cells = []
        for r in ok:
            f = _figures(r, case)
            load = next((c.get("loadavg_1m") for c in r["cases"] if c["name"] == case), None)
            where = f" (load {load[0]:.1f})" if load else ""
            text = "failed" if f is None else (
                f"{_fmt(f[0])} tok/s, TTFT {_fmt(f[1], 0)} ms, TPOT {_fmt(f[2])} ms{where}")
            cells.append(text)
        rows.append(f"| {case} | " + " | ".join(cells) + " |")
    return rows


def _ratios(run: dict, ok: list[dict]) -> list[str]:
    ours = next((r for r in ok if r["peer"] == OURS), None)
    others = [r for r in ok if r["peer"] != OURS]
    if ours is None or not others:
        return []
    rows = ["", "Ratios ours / peer (output tok/s: higher is better for us; TTFT and TPOT: "
                "lower is better for us):", "",
            "| case | " + " | ".join(r["peer"] for r in others) + " |",
            "|---" * (len(others) + 1) + "|"]
    for case in (c["name"] for c in run["cases"]):
        mine, cells = _figures(ours, case), []
        for r in others:
            theirs = _figures(r, case)
            if mine is None or theirs is None or 0 in theirs:
                cells.append("—")
                continue
            q = [a / b for a, b in zip(mine, theirs, strict=True)]
            cells.append(f"tok/s {q[0]:.2f}×, TTFT {q[1]:.2f}×, TPOT {q[2]:.2f}×")
        rows.append(f"| {case} | " + " | ".join(cells) + " |")
    return rows


def _greedy(ok: list[dict]) -> list[str]:
    ref = next((r for r in ok if r["peer"] == "transformers" and r.get("greedy")), None)
    if ref is None:
        return []
    lines = ["", "Greedy agreement with transformers (16 tokens on 3 prompts, compared as text):",
             ""]
    for r in ok:
        if r is ref or not r.get("greedy"):
            continue
        same = sum(a == b for a, b in zip(r["greedy"], ref["greedy"], strict=False))
        lines.append(f"- {r['peer']}: {same}/{len(ref['greedy'])} identical")
    return lines


def markdown_section(run: dict) -> str:
    ok = [r for r in run["results"] if "cases" in r]
    failed = [r for r in run["results"] if "error" in r]
    lines = [f"## CPU comparison, {run['date']}", "",
             f"- Machine: {run['machine']}",
             "- Versions: " + ", ".join(f"{k} {v}" for k, v in run["versions"].items()),
             f"- Command: `{run['command']}`",
             "- Checkpoint: `small` preset (6 layers, hidden 512, 16 experts, MXFP4 experts, "
             "HF layout), random weights; workloads: `random` token prompts, greedy, "
             "all requests over `/v1/completions` with streaming; means over requests; "
             "(load x) is the 1-minute load average when the case started (2 cores).", ""]
    lines += [f"- Note: {n}" for n in run["notes"]]
    lines += [f"- {r['peer']}: `{' '.join(map(str, r['command']))}`"
              + (f" (env {r['env']})" if r.get("env") else "")
              + (f" — {r['note']}" if r.get("note") else "") for r in ok]
    lines += [""] + _table(run, ok) + _ratios(run, ok) + _greedy(ok)
    for r in failed:
        lines += ["", f"- **{r['peer']} failed**: `{r['error']}`"]
    return "\n".join(lines) + "\n"
