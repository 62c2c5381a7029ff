"""The stateful Python kernel that runs inside the sandbox (standard library only, Python 3.8+).

Owns one REPL process: it reads one JSON request per line on its stdin ({"code", "timeout"}),
executes the code in a namespace that persists between requests (the last expression's value is
shown, as in a notebook), and writes one JSON reply per line ({"output", "truncated",
"timed_out"}), after a first {"ready": true} line. Output of print(), tracebacks and child
processes is captured through fds 1 and 2.
Started as `python -I -u -c <this file's text> <limits JSON>`; the host (python_tool.py) never
imports it. Must not import anything of gptoss_serve: inside the sandbox the project is invisible.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import resource
import signal
import sys
import time
import traceback
from typing import Any

_CELL = "<cell>"


class _Timeout(BaseException):
    """Raised in the user's code when the per-call time limit is reached (not an Exception, so
    a bare `except Exception` in the model's code cannot swallow it)."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _Timeout()


def _set_limits(limits: dict[str, Any]) -> None:
    """Hard rlimits the model's code cannot raise again (they are inherited by children)."""
    pairs = {
        "memory_bytes": resource.RLIMIT_AS,
        "nproc": resource.RLIMIT_NPROC,
        "nofile": resource.RLIMIT_NOFILE,
        "fsize_bytes": resource.RLIMIT_FSIZE,
    }
    for key, which in pairs.items():
        value = limits.get(key)
        if value:
            resource.setrlimit(which, (int(value), int(value)))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _cpu_budget(seconds: float) -> None:
    """Soft CPU limit: what this process has used so far plus this call's budget (SIGXCPU)."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = int(used.ru_utime + used.ru_stime)
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    soft = spent + int(seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _run_cell(code: str, namespace: dict[str, Any]) -> None:
    """Execute a cell; print the repr of a trailing expression like a notebook's Out."""
    tree = ast.parse(code, filename=_CELL, mode="exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, _CELL, "exec"), namespace)
    if last is not None:
        value = eval(compile(last, _CELL, "eval"), namespace)
        if value is not None:
            print(repr(value))


def _format_error(exc: BaseException) -> str:
    """The traceback without the kernel's own frames."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != _CELL:
        tb = tb.tb_next
    if isinstance(exc, SyntaxError):
        return "".join(traceback.format_exception_only(type(exc), exc))
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _exit_if_child(main_pid: int) -> None:
    """A process forked by the cell that got back here ends silently: only the kernel answers."""
    if os.getpid() != main_pid:
        os._exit(0)


def _reap_strays(own_namespace: bool) -> None:
    """Kill every process the call left behind. Only inside a private pid namespace, where
    kill(-1) reaches the sandbox alone (never in unsafe-local mode)."""
    if own_namespace and os.getpid() < 10:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(-1, signal.SIGKILL)
    deadline = time.monotonic() + 1.0
    while True:  # reap our own children (killed ones may take a moment to die)
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if not own_namespace or time.monotonic() > deadline:
                return
            time.sleep(0.005)


def _open_stream() -> Any:
    """sys.stdout and sys.stderr: one line-buffered text stream on fd 1 (the capture file)."""
    return open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace",  # noqa: SIM115
                closefd=False)


def main() -> None:
    limits: dict[str, Any] = json.loads(sys.argv[1])
    max_output = int(limits.get("max_output_bytes", 64_000))
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    capture_path = os.path.join(limits.get("capture_dir", "/tmp"), ".kernel-output")
    capture = os.open(capture_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(capture, 1)
    os.dup2(capture, 2)
    stream = _open_stream()
    sys.stdout = sys.stderr = stream
    _set_limits(limits)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGXCPU, _on_alarm)
    main_pid = os.getpid()
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}
    replies.write(b'{"ready": true}\n')
    replies.flush()
    for line in requests:
        request = json.loads(line)
        timeout = float(request.get("timeout", 60))
        timed_out = False
        os.ftruncate(capture, 0)
        os.lseek(capture, 0, os.SEEK_SET)
        if stream.closed:
            stream = _open_stream()
        sys.stdout = sys.stderr = stream
        try:
            _cpu_budget(timeout)
            signal.setitimer(signal.ITIMER_REAL, timeout)
            try:
                _run_cell(request.get("code", ""), namespace)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                _exit_if_child(main_pid)
        except _Timeout:
            timed_out = True
            print(f"TimeoutError: execution timed out after {timeout:g} seconds")
        except BaseException as exc:  # the model's errors, SystemExit and KeyboardInterrupt too
            print(_format_error(exc), end="")
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
        _reap_strays(bool(limits.get("own_pid_namespace")))
        size = os.lseek(capture, 0, os.SEEK_END)
        os.lseek(capture, 0, os.SEEK_SET)
        data = os.read(capture, min(size, max_output))
        reply = {"output": data.decode("utf-8", errors="replace"), "truncated": size > max_output,
                 "timed_out": timed_out}
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()


if __name__ == "__main__":
    main()
