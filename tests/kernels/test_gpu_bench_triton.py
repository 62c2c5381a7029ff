"""benchmarks/gpu.py: the --dry-run path runs every step at tiny sizes on the CPU."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_dry_run_prints_a_full_table(capsys, tmp_path):
    bench = load_script()
    docs = tmp_path / "benchmarks.md"
    assert bench.main(["--preset", "tiny", "--device", "cpu", "--dry-run",
                       "--docs", str(docs)]) == 0
    out = capsys.readouterr().out
    assert "DRY RUN" in out and "| batch 2 |" in out and "Time to first token" in out
    assert "greedy_agreement 1" in out  # CPU: the CPU kernel set against the references
    assert not docs.exists()  # a dry run never writes figures into the docs


def test_batches_skip_sequences_outside_the_window():
    bench = load_script()
    from gptoss_serve.config import ModelConfig
    from gptoss_serve.model.synthetic import preset_config

    config = ModelConfig.from_hf_dict(preset_config("tiny"))
    batch, full, slide = bench.make_batch(config, [(300, 1), (0, 5)], "cpu")
    assert full == -(-301 // bench.BLOCK) + 1
    row = batch.sliding.block_tables[0].tolist()
    assert row[0] == -1 and row[-1] >= 0  # blocks that left the window are absent
    assert slide < full
