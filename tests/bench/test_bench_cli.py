"""`gptoss-serve bench` end to end over real HTTP against a fake OpenAI server in uvicorn."""

from __future__ import annotations

import json

import pytest
from bench_fake_openai import MODEL, FakeServer

from asgi_server import serve_in_thread
from gptoss_serve.cli import main


@pytest.fixture()
def fake_url():
    server = FakeServer(delay_s=0.001)
    served = serve_in_thread(server.asgi_app(), log_level="error")
    yield served.base_url, server
    served.stop()


def test_cli_writes_result_json_and_prints_the_table(fake_url, tmp_path, capsys):
    url, server = fake_url
    out = tmp_path / "r.json"
    rc = main(["bench", "--base-url", url, "--num-prompts", "4", "--random-input-len", "16",
               "--random-output-len", "6", "--max-concurrency", "2", "--num-warmups", "1",
               "--ignore-eos", "--result-json", str(out), "--disable-tqdm"])
    assert rc == 0
    data = json.loads(out.read_text())
    m = data["metrics"]
    assert m["completed"] == 4 and m["failed"] == 0 and m["total_output_tokens"] == 24
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        assert set(m[key]) == {"mean", "std", "p50", "p90", "p99"}
    for key in ("output_throughput", "total_token_throughput", "request_throughput"):
        assert m[key] > 0
    assert data["config"]["model"] == MODEL and data["config"]["max_concurrency"] == 2
    assert data["output_lens"] == [6] * 4 and len(data["itls_s"]) == 4
    assert len(server.bodies) == 5 and all(len(b["prompt"]) == 16 for b in server.bodies)
    table = capsys.readouterr().out
    assert "Output token throughput (tok/s):" in table and "P99 TPOT (ms):" in table


def test_cli_reports_bad_input_without_a_traceback(fake_url, capsys):
    url, _ = fake_url
    rc = main(["bench", "--base-url", url, "--dataset-name", "sharegpt", "--disable-tqdm"])
    assert rc == 2
    assert "needs --dataset-path" in capsys.readouterr().err
