"""Holds the router's listening socket and restarts Caddy on it the moment Caddy dies.

A dead Caddy used to mean refused connections until someone noticed and started a new one:
measured under 10 rps, 8 to 11 of ~100 requests failed in the ~1 s the analysis loop or the
supervisor took to restore it. Here the socket belongs to this process, not to Caddy: Caddy
is started with the socket inherited as a file descriptor (Caddy's `fd/N` listener address),
so while it is dead the kernel keeps queueing new connections in the socket's backlog, and the
Caddy started ~0.3 s later accepts them. Only requests Caddy had already taken are lost.

The config Caddy is (re)started with is the deployment's caddy.json, which the deploy target
writes *before* each live change through the admin API, so a restart never goes back to old
weights. This file uses the standard library only: it is run by path (`python router_holder.py`),
in any interpreter, and nothing of it can fail on an import.

What it does not cover: this process itself dying. Then Caddy dies with it (PR_SET_PDEATHSIG),
the socket closes, and the deploy target's restore (analysis loop, supervisor) starts a new
holder on the same port, as before. The holder is a few dozen lines that only wait.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from types import FrameType
from typing import Any

# a Caddy that dies this many times within CRASH_WINDOW_S is broken, not unlucky: give up, exit 1,
# and let the deploy target's restore (which reads the log) report why
MAX_RESTARTS = 5
CRASH_WINDOW_S = 10.0
BACKLOG = 1024  # connections that wait while Caddy restarts (at 20 rps, ~0.3 s needs 6)
PR_SET_PDEATHSIG = 1


def run_config(config: dict[str, Any], http_fd: int, admin_fd: int) -> dict[str, Any]:
    """The deployment's Caddy config with the router and its admin API on the inherited sockets."""
    for server in config["apps"]["http"]["servers"].values():
        server["listen"] = [f"fd/{http_fd}"]
    config.setdefault("admin", {})["listen"] = f"fd/{admin_fd}"
    return config


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(BACKLOG)
    return sock


def _die_with_parent() -> None:
    # runs in the child between fork and exec: a Caddy whose holder was SIGKILLed would keep the
    # port's socket open, and the restore could not bind a new holder to it
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _write_atomic(path: Path, text: str) -> None:
    # a temporary name of this writer's own: the deploy target writes caddy.json beside it meanwhile
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _event(path: Path | None, kind: str, **fields: object) -> None:
    if path is None:
        return
    with open(path, "a") as f:  # one short O_APPEND write per line: safe beside the target's writes
        f.write(json.dumps({"ts": time.time(), "event": kind, **fields}) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--caddy", required=True, help="the caddy binary")
    p.add_argument("--config", required=True, type=Path, help="the deployment's caddy.json (re-read at each start)")
    p.add_argument("--port", required=True, type=int, help="the router's port on 127.0.0.1 (0: any free one)")
    p.add_argument("--ports-file", required=True, type=Path, help="where the bound router and admin ports go")
    p.add_argument("--pid-file", required=True, type=Path, help="where the running Caddy's pid is written")
    p.add_argument("--events", type=Path, default=None, help="the deployment's events.jsonl")
    a = p.parse_args(argv)

    # both sockets are bound here, on the port asked for or one the kernel picks, and their numbers
    # read back: no port is probed, closed and handed on for someone else to take first
    try:
        http, admin = _bind(a.port), _bind(0)
    except OSError as exc:
        print(f"router holder: cannot bind 127.0.0.1:{a.port}: {exc}", file=sys.stderr, flush=True)
        return 2
    fds = (http.fileno(), admin.fileno())
    _write_atomic(a.ports_file, json.dumps({"http_port": http.getsockname()[1], "admin_port": admin.getsockname()[1]}))
    run_path = a.config.with_name("caddy.run.json")

    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def on_term(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # Caddy finishes the requests it holds, then exits

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    deaths: deque[float] = deque(maxlen=MAX_RESTARTS)
    while not stopping:
        run_path.write_text(json.dumps(run_config(json.loads(a.config.read_text()), *fds)))
        started = time.monotonic()
        child = subprocess.Popen(
            [a.caddy, "run", "--config", str(run_path)], pass_fds=fds, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        if stopping:  # SIGTERM came between the loop's check and the start
            child.send_signal(signal.SIGTERM)
        _write_atomic(a.pid_file, str(child.pid))
        rc = child.wait()
        if stopping:
            break
        now = time.monotonic()
        deaths.append(now)
        print(f"router holder: caddy pid {child.pid} exited with {rc} after {now - started:.1f} s; restarting",
              file=sys.stderr, flush=True)  # fmt: skip
        _event(a.events, "router_caddy_restarted", dead_pid=child.pid, returncode=rc)
        if len(deaths) == MAX_RESTARTS and now - deaths[0] < CRASH_WINDOW_S:
            print(f"router holder: caddy died {MAX_RESTARTS} times in {now - deaths[0]:.1f} s; giving up",
                  file=sys.stderr, flush=True)  # fmt: skip
            return 1
    a.pid_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
