"""`gptoss-serve serve` as a user runs it: no --model builds and serves the tiny random checkpoint
(and says so), answers over HTTP (a stored /v1/responses lands in the default SQLite file under the
cache dir), and on SIGTERM with a stream in flight stops and exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import httpx
from e2e_support import wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(base: str, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, "server exited during start-up"
    try:
        return httpx.get(base + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_tiny_default_then_sigterm_exits_0(tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "GPTOSS_SERVE_CACHE": str(tmp_path)}
    env.pop("GPTOSS_API_KEY", None)
    cmd = [sys.executable, "-m", "gptoss_serve.cli", "serve", "--port", str(port),
           "--current-date", "none", "--kv-cache-memory", "0.02", "--max-model-len", "2048",
           "--device", "cpu"]
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(lambda: _healthy(base, proc), "the server to start", timeout=240)
            models = httpx.get(base + "/v1/models").json()["data"]
            assert [m["id"] for m in models] == ["tiny"]
            made = httpx.post(base + "/v1/responses", timeout=120, json={
                "model": "tiny", "input": "hi", "max_output_tokens": 4}).json()
            assert made["status"] == "incomplete" and made["usage"]["output_tokens"] == 4
            body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 1500, "stream": True, "ignore_eos": True}
            with httpx.stream("POST", base + "/v1/chat/completions", json=body,
                              timeout=120) as resp:
                lines = resp.iter_lines()
                next(lines)
                proc.send_signal(signal.SIGTERM)
                rest = list(lines)  # the stream ends: finished, or stopped within the grace
            assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"
            assert proc.wait(timeout=120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log_path.read_text()
    assert "RANDOM" in text and "KV cache" in text and "full-attention blocks" in text
    ours = [ln.split(": ", 1)[1] for ln in text.splitlines()
            if " gptoss_serve." in ln and ": " in ln]
    assert sorted(ours) == sorted(set(ours)), "a start-up line is printed twice"
    assert "full context (2048 tokens)" in text  # --max-model-len reaches the capacity line
    assert sum(m.startswith("kernels: ") for m in ours) == 1
    assert (tmp_path / "tiny" / "config.json").exists()
    import sqlite3  # the default store is a file under the cache dir, written before the reply

    with sqlite3.connect(tmp_path / "responses.sqlite3") as db:
        assert db.execute("SELECT id FROM responses").fetchall() == [(made["id"],)]
    assert "responses store:" in text
