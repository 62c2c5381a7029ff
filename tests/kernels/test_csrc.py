"""The C kernels' sources (kernels/csrc): each compiles without a warning, and every table the
Python side hands to C (argument lists, enum-ordered tables, struct columns, array limits)
follows the C declaration.

`cpu_c` generates each function's ctypes argument list from its C definition; the tests here
check that reading against what the compiler exported and against made-up definitions, and
check the tables that Python lays out by name against the C enums and structs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import platform
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from gptoss_serve.kernels import cpu_c, decode_cpu, greedy_cpu, step

SOURCES = sorted(p.name for p in cpu_c.CSRC.glob("*.c"))
_CC = shutil.which(cpu_c.compile_command("x.c", Path("x"), False)[0])
needs_cc = pytest.mark.skipif(_CC is None or platform.machine() not in ("x86_64", "AMD64"),
                              reason="no C compiler for x86-64 here")


def test_every_kernel_module_has_its_source():
    assert SOURCES == ["attention.c", "bitmask.c", "decode_step.c", "greedy.c", "logits.c",
                       "mxfp4.c", "rms_norm.c", "rotary.c"]
    for name in SOURCES:
        if name != "rotary.c":  # rotary needs no helper of kernel.h (and must stay last)
            assert cpu_c.sources(name)[1].name == "kernel.h", name


@needs_cc
@pytest.mark.parametrize("openmp", [True, False], ids=["openmp", "serial"])
@pytest.mark.parametrize("name", SOURCES)
def test_compiles_without_warnings(name, openmp, tmp_path):
    """-Wall -Werror with the build's own flags (-O3: some warnings need the optimizer); the
    serial build ignores the OpenMP pragmas by design, so only that warning is off there."""
    extra = ("-Wall", "-Werror", *(() if openmp else ("-Wno-unknown-pragmas",)))
    cmd = cpu_c.compile_command(name, tmp_path / "k.so", openmp, extra)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if openmp and done.returncode and "fopenmp" in done.stderr:
        pytest.skip("no OpenMP for this compiler")
    assert done.returncode == 0, done.stderr[-2000:]


def _exported_symbols(lib: Path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.split()[1:2] == ["T"]}


@needs_cc
@pytest.mark.skipif(shutil.which("nm") is None, reason="no nm here")
@pytest.mark.parametrize("name", SOURCES)
def test_declared_functions_are_the_exported_ones(name, tmp_path):
    """The functions `cpu_c.exports` reads from the C definitions are exactly the library's
    exported symbols (a definition the reader missed would be called undeclared)."""
    subprocess.run(cpu_c.compile_command(name, tmp_path / "k.so", False), check=True,
                   capture_output=True, timeout=120)
    assert set(cpu_c.exports(name)) == _exported_symbols(tmp_path / "k.so")


def test_reader_maps_c_types(tmp_path, monkeypatch):
    """A made-up source: return and parameter types, multi-line lists, comments, static and
    prototype-only functions, and an unknown type refused."""
    (tmp_path / "a.h").write_text("static inline int helper(int x) { return x; }\n")
    (tmp_path / "a.c").write_text(
        '#include "a.h"\n'
        "/* void commented(int x) { } */\n"
        "void proto(long n);\n"
        "static void hidden(float *x) { }\n"
        "int f(const float *x, long n,\n      double d, float s, int k, int64_t *ids) {\n"
        "    return 0;\n}\n"
        "void g(void) { }\n")
    (tmp_path / "b.c").write_text("void h(struct s v) { }\n")
    monkeypatch.setattr(cpu_c, "CSRC", tmp_path)
    c = __import__("ctypes")
    assert cpu_c.exports.__wrapped__("a.c") == {
        "f": (c.c_int, (c.c_void_p, c.c_long, c.c_double, c.c_float, c.c_int, c.c_void_p)),
        "g": (None, ())}
    with pytest.raises(ValueError, match="struct"):
        cpu_c.exports.__wrapped__("b.c")


def _defines(name: str) -> dict[str, int]:
    text = (cpu_c.CSRC / name).read_text()
    return {k: int(v) for k, v in re.findall(r"^#define (\w+) (\d+)\s*$", text, re.MULTILINE)}


def _struct_fields(name: str, typedef: str) -> list[tuple[str, str]]:
    text = (cpu_c.CSRC / name).read_text()
    body = re.search(r"typedef struct \{([^}]*)\}\s*" + typedef + ";", text).group(1)
    fields = []
    for decl in body.split(";"):
        if decl.strip():
            ctype, names = decl.split(None, 1)
            fields += [(ctype, n.strip()) for n in names.split(",")]
    return fields


def test_greedy_limits_and_row_stats_follow_the_c():
    assert _defines("greedy.c") == {"MAX_PARTS": greedy_cpu._MAX_PARTS,
                                    "MAX_ROWS": greedy_cpu.MAX_ROWS}
    assert _struct_fields("greedy.c", "RowStats") == [("float", n) for n in greedy_cpu.ROW_STATS]


def test_decode_tables_follow_the_c_enums():
    """Layer table columns, dims and constants: the names `decode_cpu` lays out exist on its
    side (LayerWeights' tensors, StepWeights' constants) in the order of the C enums."""
    layer_fields = [f.name for f in dataclasses.fields(step.LayerWeights)]
    assert layer_fields == [*decode_cpu.TENSOR_FIELDS, "sliding", "window"]
    columns = decode_cpu._names("F_ATTN_NORM")
    assert columns[:len(decode_cpu.TENSOR_FIELDS)] == decode_cpu.TENSOR_FIELDS
    assert columns[len(decode_cpu.TENSOR_FIELDS):] == decode_cpu._LAYER_EXTRA
    step_fields = {f.name for f in dataclasses.fields(step.StepWeights)}
    assert decode_cpu._names("K_EPS") == ("eps", "sm_scale", "swiglu_limit", "swiglu_alpha")
    assert set(decode_cpu._names("K_EPS")) <= step_fields
    assert len(decode_cpu._names("D_LAYERS")) == 17


def test_cache_key_covers_included_files():
    """decode_step.c is one translation unit of the layer kernels' sources, rotary.c last (its
    no-contraction pragma holds to the end of the unit); its build is keyed by all of them."""
    assert [p.name for p in cpu_c.sources("decode_step.c")] == [
        "decode_step.c", "kernel.h", "rms_norm.c", "logits.c", "attention.c", "mxfp4.c",
        "rotary.c"]
    text = (cpu_c.CSRC / "decode_step.c").read_text()
    assert text.rstrip().endswith('#include "rotary.c"')


def test_failed_build_falls_back(tmp_path, monkeypatch):
    """A compiler that fails: `load` says why and returns no library (the callers then use
    torch); nothing half-built is left in the cache."""
    monkeypatch.setenv("GPTOSS_SERVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")
    lib, why = cpu_c.load("rms_norm.c")
    assert lib is None
    assert why in ("C kernel unavailable (CalledProcessError)", "no AVX2/FMA on this CPU")
    assert not list(tmp_path.glob("*.so"))


def test_sources_ship_as_package_data():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml")
                              .read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["gptoss_serve.kernels"]
    for path in cpu_c.CSRC.iterdir():
        rel = f"csrc/{path.name}"
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel
