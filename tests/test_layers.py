"""No import runs from a lower layer of the package to a higher one (issue 16).

The layers and the reading of the imports are `benchmarks/house_metrics.py`'s (one definition
for the figures in docs/house.md and this test). The upward imports the tree still has are an
explicit allow-list that may only shrink: a new one fails, and so does a listed one that is
gone (remove it from the list, so it cannot come back unnoticed). It is empty since the
shared formats (MXFP4, RoPE tables, ForwardBatch) moved down into `formats/`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "house_metrics.py"

# (importer, imported) pairs still allowed; only ever remove entries
KNOWN_UPWARD: set[tuple[str, str]] = set()


@pytest.fixture(scope="module")
def metrics():
    spec = importlib.util.spec_from_file_location("house_metrics", _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


def test_no_new_upward_import(metrics):
    new = set(metrics.upward_imports()) - KNOWN_UPWARD
    assert not new, f"imports from a lower layer to a higher one: {sorted(new)}"


def test_allow_list_only_shrinks(metrics):
    gone = KNOWN_UPWARD - set(metrics.upward_imports())
    assert not gone, f"no longer upward, remove from KNOWN_UPWARD: {sorted(gone)}"


def test_every_module_has_a_layer(metrics):
    for imp in metrics.imports():
        metrics.layer(imp.importer), metrics.layer(imp.imported)  # KeyError names the module


def test_reader_sees_lazy_relative_and_from_imports(metrics, tmp_path):
    """The reader on a made-up tree: a function-level import, a relative one and a
    `from package import module` all count; a downward one does not."""
    root = tmp_path / "gptoss_serve"
    for pkg in ("kernels", "engine", "model"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
    (root / "engine" / "batch.py").write_text("X = 1\n")
    (root / "model" / "rope.py").write_text("Y = 2\n")
    (root / "kernels" / "a.py").write_text(
        "from gptoss_serve.engine import batch\n"
        "def f():\n    from ..model.rope import Y\n    return Y\n")
    (root / "kernels" / "b.py").write_text("from . import a\n")
    (root / "engine" / "c.py").write_text("import gptoss_serve.kernels.a\n")
    assert metrics.upward_imports(root) == [("kernels.a", "engine.batch"),
                                            ("kernels.a", "model.rope")]
