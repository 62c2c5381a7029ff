"""The house's shape in numbers: lines per package, upward imports, long functions, C kept in
Python strings.

    .venv/bin/python benchmarks/house_metrics.py [--root src/gptoss_serve] [--list]

Measures, over `src/gptoss_serve`:
- lines per package (physical lines of its `.py` files; `(top)` is the modules directly in the
  package root), and the lines of C/C headers under each package (`kernels/csrc/`);
- upward imports: every `import` / `from ... import` of a `gptoss_serve` module (at module
  level or inside a function: a lazy import is still a dependency) whose layer is above the
  importing module's, with the layers of `LAYERS` (lowest first):
      errors, config < harmony < constrain < formats < kernels < model < engine, tools < api, llm,
      cli, chat_repl, bench;
  an import from a package into one of a higher layer counts once per (importer, imported)
  module pair;
- functions (and methods) longer than `LONG_FUNCTION` lines, `def` to last line;
- lines of C held in Python string constants (a string with a C function or `#include`).

Prints them (`--list` also names each upward import and long function). `tests/test_layers.py`
imports `upward_imports` from here, so the test and the figures use one definition.

Owns these measurements; knows nothing of what the code computes.
"""

from __future__ import annotations

import argparse
import ast
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "gptoss_serve"
PACKAGE = "gptoss_serve"
LONG_FUNCTION = 40  # lines from `def` to the function's last line
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "config"),
    ("harmony",),
    ("constrain",),
    ("formats",),
    ("kernels",),
    ("model",),
    ("engine", "tools"),  # tools: the built-in tools (python, browser)
    ("api", "llm", "cli", "chat_repl", "bench", ""),  # "": the package's own __init__
)
_C_MARK = re.compile(r"^\s*(#include|(static\s+)?(inline\s+)?(void|int|float|long)\s+\w+\()",
                     re.MULTILINE)


@dataclass(frozen=True)
class Import:
    """One `gptoss_serve` module importing another (dotted names without the package)."""

    importer: str
    imported: str
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    """'kernels.cpu_c' for root/kernels/cpu_c.py; 'engine' for root/engine/__init__.py."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    """The layer index of a module (by its first component; `LAYERS`)."""
    head = module.split(".")[0]
    for n, names in enumerate(LAYERS):
        if head in names:
            return n
    raise KeyError(f"module {module!r} is in no layer of LAYERS")


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def imports(root: Path = ROOT) -> list[Import]:
    """Every import of a `gptoss_serve` module by another, in file order."""
    found: list[Import] = []
    for path in _sources(root):
        me = module_name(path, root)
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    pkg = me.split(".") if is_pkg else me.split(".")[:-1]
                    pkg = pkg[:len(pkg) - (node.level - 1)]
                    base = ".".join([PACKAGE, *pkg, *([base] if base else [])])
                # `from gptoss_serve.kernels import cpu_c` imports the module kernels.cpu_c
                targets = [f"{base}.{a.name}" for a in node.names] if base else []
                targets = [t if _is_module(t, root) else base for t in targets]
            for t in targets:
                if t == PACKAGE or t.startswith(PACKAGE + "."):
                    name = t[len(PACKAGE) + 1:]
                    if name != me:
                        found.append(Import(me, name, node.lineno))
    return found


def _is_module(dotted: str, root: Path) -> bool:
    if not dotted.startswith(PACKAGE + "."):
        return False
    rel = Path(*dotted.split(".")[1:])
    return (root / rel).with_suffix(".py").exists() or (root / rel / "__init__.py").exists()


def upward_imports(root: Path = ROOT) -> list[tuple[str, str]]:
    """Sorted distinct (importer, imported) pairs where the imported module's layer is above
    the importer's."""
    return sorted({(i.importer, i.imported) for i in imports(root)
                   if layer(i.imported) > layer(i.importer)})


def lines_per_package(root: Path = ROOT) -> dict[str, tuple[int, int]]:
    """package -> (Python lines, C lines) for each subpackage and `(top)`."""
    counts: dict[str, list[int]] = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        rel = path.relative_to(root).parts
        pkg = rel[0] if len(rel) > 1 else "(top)"
        kind = {".py": 0, ".c": 1, ".h": 1}.get(path.suffix)
        if kind is not None:
            counts.setdefault(pkg, [0, 0])[kind] += len(path.read_text().splitlines())
    return {k: (v[0], v[1]) for k, v in sorted(counts.items())}


def long_functions(root: Path = ROOT, limit: int = LONG_FUNCTION) -> list[tuple[str, str, int]]:
    """(module, function, lines) of every function longer than `limit` lines, longest first."""
    found = []
    for path in _sources(root):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append((module_name(path, root), node.name, n))
    return sorted(found, key=lambda f: (-f[2], f[0], f[1]))


def c_in_strings(root: Path = ROOT) -> dict[str, int]:
    """module -> lines of C held in its string constants (only modules that have some)."""
    found: Counter[str] = Counter()
    for path in _sources(root):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and _C_MARK.search(node.value)):
                found[module_name(path, root)] += len(node.value.strip("\n").splitlines())
    return dict(sorted(found.items()))


def report(root: Path = ROOT, listing: bool = False) -> str:
    out = ["lines per package (Python, C):"]
    per = lines_per_package(root)
    for pkg, (py, c) in per.items():
        out.append(f"  {pkg:<10} {py:>6} {c:>6}")
    out.append(f"  {'total':<10} {sum(v[0] for v in per.values()):>6} "
               f"{sum(v[1] for v in per.values()):>6}")
    up = upward_imports(root)
    out.append(f"upward imports (importer -> imported module pairs): {len(up)}")
    by_edge = Counter((i.split(".")[0], j.split(".")[0]) for i, j in up)
    for (a, b), n in sorted(by_edge.items()):
        out.append(f"  {a or '(root)'} -> {b}: {n}")
    if listing:
        out += [f"    {i or '(root)'} -> {j}" for i, j in up]
    longs = long_functions(root)
    out.append(f"functions over {LONG_FUNCTION} lines: {len(longs)}")
    if listing:
        out += [f"    {m}.{f}: {n}" for m, f, n in longs]
    cs = c_in_strings(root)
    out.append(f"C lines in Python strings: {sum(cs.values())}"
               + (f" ({', '.join(f'{m} {n}' for m, n in cs.items())})" if cs else ""))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--list", action="store_true", help="name each upward import, long function")
    args = ap.parse_args()
    print(report(args.root.resolve(), args.list))


if __name__ == "__main__":
    main()
