"""The `python` built-in tool (OpenAI tool type `code_interpreter`): a stateful kernel per session.

Owns the sessions (a kernel process and a scratch dir each), the line protocol with kernel.py, the
per-call wall timeout (the kernel interrupts itself at the limit; if it does not answer a little
later the host kills the whole sandbox and the next call starts a fresh kernel), the reply text
and the `code_interpreter_call` item. How the process is confined is sandbox.py's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
import os
import select
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gptoss_serve.harmony.builtin_tools import PYTHON
from gptoss_serve.tools import kernel, sandbox
from gptoss_serve.tools.base import ToolOutput

log = logging.getLogger(__name__)

_GRACE_S = 3.0  # after the timeout, how long the kernel may take to report its own interrupt
_START_S = 20.0  # a kernel that is not ready within this is dead
_TRAINED_TIMEOUT = "time out after 120.0 seconds"
_TRAINED_NETWORK = "Internet access for this session is UNKNOWN. Depends on the cluster."


class _Kernel:
    """One running kernel process; blocking calls, used from worker threads."""

    def __init__(self, launch: sandbox.Launch, limits: dict[str, Any]) -> None:
        limits = dict(limits, own_pid_namespace=launch.own_pid_namespace,
                      capture_dir=launch.capture_dir)
        if launch.uid is None and limits.get("nproc"):  # our own uid: count what already runs
            limits["nproc"] = int(limits["nproc"]) + sandbox.process_count(os.getuid())
        argv = [*launch.argv, json.dumps(limits)]
        self._proc = sandbox.popen(sandbox.Launch(**{**launch.__dict__, "argv": argv}))
        self._buffer = b""
        # a reply's JSON is at most ~6 characters per output byte (\u escapes)
        self._max_line = int(limits["max_output_bytes"]) * 8 + 4096
        if self._read_line(time.monotonic() + _START_S) != b'{"ready": true}':
            self.dispose()
            raise OSError("the sandboxed python did not start")

    @property
    def alive(self) -> bool:
        return self._proc.poll() is None

    def execute(self, code: str, timeout: float) -> dict[str, Any]:
        """Send one cell and wait for its reply; {"died": reason} when the kernel is gone."""
        assert self._proc.stdin is not None
        request = json.dumps({"code": code, "timeout": timeout}).encode() + b"\n"
        try:
            self._proc.stdin.write(request)
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            return {"died": "the python process is not running"}
        line = self._read_line(time.monotonic() + timeout + _GRACE_S)
        if line is None:
            if self.alive:
                self.kill()
                return {"died": "timeout"}
            return {"died": f"the python process exited (status {self._proc.returncode})"}
        try:
            reply = json.loads(line)
        except ValueError:
            self.kill()
            return {"died": "the python process sent an unreadable reply"}
        return reply if isinstance(reply, dict) else {"died": "unreadable reply"}

    def _read_line(self, deadline: float) -> bytes | None:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        poller = select.poll()  # not select(): a busy server's fds may pass FD_SETSIZE
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or len(self._buffer) > self._max_line:
                return None
            if not poller.poll(left * 1000):
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return None
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def kill(self) -> None:
        """Kill the sandbox and everything in it (its pid namespace, its process group). Safe
        from another thread while a call waits: that call then reads EOF."""
        sandbox.kill_tree(self._proc)

    def dispose(self) -> None:
        """Kill, then close the pipes; only by the thread that owns the session's lock (a
        reader must never see its fd closed, or reused, under it)."""
        self.kill()
        for pipe in (self._proc.stdin, self._proc.stdout):
            with contextlib.suppress(OSError):
                if pipe is not None:
                    pipe.close()


class _Session:
    def __init__(self, scratch: Path, uid: int | None) -> None:
        self.scratch = scratch
        self.uid = uid
        self.kernel: _Kernel | None = None
        self.lock = threading.Lock()


class PythonTool:
    """BuiltinTool `python`: code runs in a stateful kernel per session, sandboxed unless the
    operator chose `unsafe-local`."""

    namespace = "python"
    tool_type = "code_interpreter"

    def __init__(self, *, timeout: float = 120.0, memory_mb: int = 1024, sandboxed: bool = True,
                 max_processes: int = 64, max_output_bytes: int = 16_000,
                 scratch_mb: int = 256, max_sessions: int = 32) -> None:
        python = sandbox.sandbox_python() if sandboxed else sys.executable
        if python is None:
            raise RuntimeError("no system python3 under /usr for the sandbox")
        self.timeout = float(timeout)
        self.sandboxed = sandboxed
        self._python = python
        self._scratch_bytes = scratch_mb << 20
        self._limits = {"memory_bytes": memory_mb << 20, "nproc": max_processes,
                        "nofile": 256, "fsize_bytes": self._scratch_bytes,
                        "max_output_bytes": max_output_bytes}
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._max_sessions = max_sessions
        self._guard = threading.Lock()
        self._root = Path(tempfile.mkdtemp(prefix="gptoss-python-"))
        self._root.chmod(0o711)  # the sandbox's own uid must reach its scratch dir inside
        weakref.finalize(self, shutil.rmtree, self._root, True)  # also without close()
        self._kernel_source = Path(kernel.__file__).read_text()
        # own threads: long cells must not occupy the event loop's default executor
        self._workers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="python-tool")

    # ---- the interface -------------------------------------------------------------------------
    def description(self) -> dict[str, Any]:
        config = copy.deepcopy(PYTHON)
        text = config["description"].replace(
            _TRAINED_TIMEOUT, f"time out after {self.timeout!r} seconds")
        if self.sandboxed:
            text = text.replace(_TRAINED_NETWORK, "Internet access for this session is disabled.")
        config["description"] = text
        return config

    async def run(self, session_id: str, recipient: str, body: str) -> ToolOutput:
        session = self._session(session_id)
        try:
            loop = asyncio.get_running_loop()
            text, ok = await loop.run_in_executor(self._workers, self._execute, session, body)
        except asyncio.CancelledError:
            self._stop_kernel(session)  # the worker thread then sees EOF and returns
            raise
        item = {"type": "code_interpreter_call", "code": body,
                "container_id": _container_id(session_id),
                "outputs": [{"type": "logs", "logs": text}] if text else [],
                "status": "completed" if ok else "failed"}
        return ToolOutput(author="python", text=text, item=item)

    def annotations(self, session_id: str, text: str) -> list[dict[str, Any]]:
        return []

    def close_session(self, session_id: str) -> None:
        with self._guard:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            self._stop_kernel(session)  # a call in flight ends at once, then the lock is free
            with session.lock:
                if session.kernel is not None:
                    session.kernel.dispose()
                    session.kernel = None
            shutil.rmtree(session.scratch, ignore_errors=True)

    def close(self) -> None:
        with self._guard:
            ids = list(self._sessions)
        for session_id in ids:
            self.close_session(session_id)
        self._workers.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(self._root, ignore_errors=True)

    # ---- sessions and kernels --------------------------------------------------------------------
    def _session(self, session_id: str) -> _Session:
        evicted: list[str] = []
        with self._guard:
            session = self._sessions.get(session_id)
            if session is None:
                scratch = self._root / _container_id(session_id)
                scratch.mkdir(mode=0o700, exist_ok=True)
                uid = sandbox.sandbox_uid() if self.sandboxed else None
                session = self._sessions[session_id] = _Session(scratch, uid)
            self._sessions.move_to_end(session_id)
            evicted = list(self._sessions)[: max(0, len(self._sessions) - self._max_sessions)]
        for old in evicted:
            self.close_session(old)
        return session

    def _start_kernel(self, session: _Session) -> _Kernel:
        command = [self._python, "-I", "-u", "-c", self._kernel_source]
        if self.sandboxed:
            launch = sandbox.sandbox_launch(session.scratch, command, self._scratch_bytes,
                                            session.uid)
        else:
            launch = sandbox.local_launch(session.scratch, command)
        return _Kernel(launch, self._limits)

    def _stop_kernel(self, session: _Session) -> None:
        kernel_ = session.kernel
        if kernel_ is not None:
            kernel_.kill()

    def _execute(self, session: _Session, code: str) -> tuple[str, bool]:
        """Run one cell (blocking); the reply text and whether it completed."""
        with session.lock:
            restarted = ""
            if session.kernel is not None and not session.kernel.alive:
                session.kernel.dispose()
                session.kernel = None
                restarted = "[the python session had stopped; a new one was started]\n"
            if session.kernel is None:
                try:
                    session.kernel = self._start_kernel(session)
                except OSError as exc:
                    log.warning("python tool: cannot start a kernel: %s", exc)
                    return f"[the python tool could not start: {exc}]", False
            reply = session.kernel.execute(code, self.timeout)
            if "died" in reply:
                session.kernel.dispose()
                session.kernel = None
                if reply["died"] == "timeout":
                    why = f"execution timed out after {self.timeout:g} seconds"
                else:
                    why = reply["died"]
                return (f"{restarted}[{why}; the python session was restarted and its "
                        "variables are lost (files in /mnt/data are kept)]"), False
            text = restarted + str(reply.get("output", ""))
            if reply.get("truncated"):
                text += f"\n[output truncated to {self._limits['max_output_bytes']} bytes]"
            return text, not reply.get("timed_out")


def _container_id(session_id: str) -> str:
    return "cntr_" + hashlib.sha256(session_id.encode()).hexdigest()[:24]
