"""Processes the serving targets start and watch: identity by pid plus kernel start time, stops by group.

A pid alone can be reused by another process after ours died; the start time read from
/proc/<pid>/stat (clock ticks since boot) tells the very process we started from a stranger.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

from include.mlops.errors import DeployError


def free_port() -> int:
    """A port free now: only for what cannot take a bound socket (the caller must retry on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces; fields after the last ')' are fixed
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def pid_alive(pid: int | None, ticks: int | None) -> bool:
    """True if pid runs and is the very process we started (same kernel start time), not a zombie."""
    if pid is None:
        return False
    with contextlib.suppress(ChildProcessError):
        # reap our own exited children so they do not linger as zombies
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    now = start_ticks(pid)
    return now is not None and (ticks is None or now == ticks)


def log_tail(path: str | None, n_chars: int = 1500) -> str:
    if not path:
        return ""
    try:
        return Path(path).read_text(errors="replace")[-n_chars:]
    except OSError:
        return ""


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop_process_group(pid: int | None, ticks: int | None, grace_s: float) -> None:
    """SIGTERM the process group we started (servers drain in-flight requests), SIGKILL after grace_s."""
    try:
        _signal_and_wait(pid, ticks, grace_s)
    finally:
        if pid is not None:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it was our child


def _signal_and_wait(pid: int | None, ticks: int | None, grace_s: float) -> None:
    if pid is None or not pid_alive(pid, ticks):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not pid_alive(pid, ticks):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and pid_alive(pid, ticks):
        time.sleep(0.02)
    if pid_alive(pid, ticks):
        raise DeployError(f"process {pid} survived SIGKILL; stop it by hand")
