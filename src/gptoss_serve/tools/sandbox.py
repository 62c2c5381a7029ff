"""How a sandboxed process is started: the bubblewrap command line, its user and its self-test.

Owns the confinement of the python tool's kernel: bubblewrap (Debian package `bubblewrap`) with
every namespace unshared (no network, private pids, ipc, uts, a user namespace), only the system
directories read-only (never the project, $HOME, /work or /etc wholesale), a tmpfs /tmp, a private
scratch dir bound at /mnt/data, a clean environment; when the server runs as root the sandbox runs
as a dedicated unprivileged uid so that RLIMIT_NPROC (fork bombs) applies. The rlimits themselves
are set by the kernel (kernel.py) before any model code runs. Must not know the kernel protocol.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

BWRAP = "/usr/bin/bwrap"
SCRATCH = "/mnt/data"
_SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives", "/etc/mime.types")
_UID_BASE = 2_100_000  # dedicated uids for sandboxes started by root (no /etc/passwd entry)
_uids = itertools.count()
CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": SCRATCH,
             "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg", "TMPDIR": "/tmp"}


@dataclass(frozen=True)
class Launch:
    """One process to start: argv, environment, working dir and the uid/gid to switch to."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    uid: int | None = None
    gid: int | None = None
    own_pid_namespace: bool = False
    capture_dir: str = "/tmp"


def sandbox_python() -> str | None:
    """A system interpreter visible inside the sandbox (under /usr; never the project's venv)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def bwrap_argv(scratch: Path, command: list[str], tmp_bytes: int) -> list[str]:
    """The bubblewrap command that runs `command` confined, with `scratch` at /mnt/data."""
    argv = [BWRAP, "--ro-bind", "/usr", "/usr"]
    for path in _SYSTEM_LINKS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for path in _ETC_FILES:
        argv += ["--ro-bind-try", path, path]
    argv += [
        "--proc", "/proc", "--dev", "/dev",
        "--size", str(tmp_bytes), "--tmpfs", "/tmp",
        "--bind", str(scratch), SCRATCH, "--chdir", SCRATCH,
        "--unshare-all", "--hostname", "sandbox",
        # --die-with-parent follows the thread that started bwrap: python_tool.py starts kernels
        # on its own long-lived worker threads (and a kernel that loses its stdin exits anyway)
        "--die-with-parent", "--new-session", "--clearenv",
    ]
    for key, value in CLEAN_ENV.items():
        argv += ["--setenv", key, value]
    return [*argv, "--", *command]


def sandbox_uid() -> int | None:
    """A fresh dedicated uid for one sandbox when the server runs as root (so RLIMIT_NPROC
    counts that sandbox alone and it owns nothing of the host); None otherwise."""
    return _UID_BASE + next(_uids) % 100_000 if os.geteuid() == 0 else None


def sandbox_launch(scratch: Path, command: list[str], tmp_bytes: int,
                   uid: int | None) -> Launch:
    """How to start `command` in the sandbox, as `uid` (from sandbox_uid) owning the scratch
    dir, or as the server's own user when uid is None."""
    if uid is not None:
        os.chown(scratch, uid, uid)
    return Launch(argv=bwrap_argv(scratch, command, tmp_bytes), env=dict(CLEAN_ENV),
                  cwd=str(scratch), uid=uid, gid=uid, own_pid_namespace=True)


def local_launch(scratch: Path, command: list[str]) -> Launch:
    """unsafe-local: the same command unconfined, with a clean environment, in the scratch dir."""
    env = dict(CLEAN_ENV, HOME=str(scratch), TMPDIR=str(scratch))
    return Launch(argv=command, env=env, cwd=str(scratch), capture_dir=str(scratch))


def process_count(uid: int) -> int:
    """Processes whose real uid is `uid` (RLIMIT_NPROC counts them all)."""
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += 1
            except OSError:
                continue
    return count


def children_of(pid: int) -> list[int]:
    """Direct children of a process (bwrap's child is the sandbox's pid-namespace init)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]
    except (OSError, ValueError):
        pass
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a sandbox: first bwrap's children (killing a pid-namespace init takes every
    process of the namespace with it, and bwrap then reaps it), then bwrap's group; reap bwrap."""
    for pid in children_of(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    try:
        proc.wait(timeout=2)  # bwrap reaps its child and exits by itself
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


def popen(launch: Launch) -> subprocess.Popen[bytes]:
    """Start the process in its own session (so a kill reaches its whole group)."""
    return subprocess.Popen(
        launch.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=launch.env, cwd=launch.cwd, user=launch.uid, group=launch.gid,
        extra_groups=[] if launch.uid is not None else None, start_new_session=True,
        close_fds=True)


def self_test() -> str | None:
    """None when the sandbox works on this host, else why not (bwrap missing, refused, ...)."""
    if not os.access(BWRAP, os.X_OK):
        return f"{BWRAP} not found (install the Debian package `bubblewrap`)"
    python = sandbox_python()
    if python is None:
        return "no system python3 under /usr for the sandbox"
    probe = ("import os, socket\n"
             "try:\n"
             "    socket.create_connection(('1.1.1.1', 53), timeout=1)\n"
             "    print('network')\n"
             "except OSError:\n"
             "    print('ok' if not os.path.exists('/work') and os.getpid() < 10 else 'visible')\n")
    scratch = Path(tempfile.mkdtemp(prefix="gptoss-sbx-test-"))
    try:
        launch = sandbox_launch(scratch, [python, "-I", "-c", probe], 16 << 20, sandbox_uid())
        try:
            proc = popen(launch)
            out, _ = proc.communicate(timeout=20)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"bubblewrap failed to start: {exc}"
        answer = out.decode(errors="replace").strip()
        if proc.returncode != 0 or answer != "ok":
            return (f"bubblewrap self-test failed (exit {proc.returncode}, "
                    f"said {answer[:80]!r})")
        return None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
