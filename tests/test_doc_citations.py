"""The documents code and tests cite exist and say what is cited (issue 16).

- every `docs/model-facts.md §N` cited anywhere in src/, tests/, benchmarks/ is a section
  heading of docs/model-facts.md;
- every `docs/guards.md N` (or `N-M`, `N, M`) cited is a guard of docs/guards.md;
- every test docs/guards.md names (`tests/path.py::test_name`) exists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _cited_texts() -> list[tuple[str, str]]:
    return [(str(p.relative_to(ROOT)), p.read_text()) for d in ("src", "tests", "benchmarks")
            for p in sorted((ROOT / d).rglob("*.py")) if p.name != "test_doc_citations.py"]


def _sections() -> set[str]:
    text = (DOCS / "model-facts.md").read_text()
    return set(re.findall(r"^#+ (\d+(?:\.\d+)*)\.? ", text, re.MULTILINE))


def _guards() -> set[int]:
    text = (DOCS / "guards.md").read_text()
    return {int(n) for n in re.findall(r"^(\d+)\. \*\*", text, re.MULTILINE)}


def test_facts_sections_cited_exist():
    sections, cited = _sections(), []
    for where, text in _cited_texts():
        cited += [(where, s) for s in re.findall(r"model-facts\.md §(\d+(?:\.\d+)*)", text)]
    assert cited, "no citation found: the pattern no longer matches the code"
    missing = [(w, s) for w, s in cited if s not in sections]
    assert not missing, missing


def test_old_shared_documents_are_no_longer_cited():
    stale = [w for w, text in _cited_texts()
             if re.search(r"(?<![\w/-])(gpt-oss-facts|guards)\.md", text)]
    assert not stale, f"cite docs/model-facts.md or docs/guards.md instead: {stale}"


def test_guards_cited_exist():
    guards, cited = _guards(), []
    assert guards == set(range(1, len(guards) + 1))
    for where, text in _cited_texts():
        for spec in re.findall(r"guards\.md ((?:\d+(?:-\d+)?(?:, )?)+)", text):
            for part in spec.split(","):
                a, _, b = part.strip().partition("-")
                cited += [(where, n) for n in range(int(a), int(b or a) + 1)]
    assert cited
    missing = [(w, n) for w, n in cited if n not in guards]
    assert not missing, missing


def test_tests_named_by_guards_exist():
    text = (DOCS / "guards.md").read_text()
    named, current = [], ""
    for m in re.finditer(r"`(tests/[\w/]+\.py)?::(\w+)`", text):
        current = m.group(1) or current  # a bare `::name` is in the file named before it
        named.append((current, m.group(2)))
    assert len(named) > 20
    missing = []
    for path, name in named:
        tree = ast.parse((ROOT / path).read_text())
        defs = {n.name for n in ast.walk(tree)
                if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        if name not in defs:
            missing.append(f"{path}::{name}")
    assert not missing, missing
