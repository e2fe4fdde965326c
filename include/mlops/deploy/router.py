"""The router process of a deployment: Caddy under its socket holder, shared by the serving targets.

`start()` runs router_holder.py, which binds the router's port (the one asked for, or one the
kernel picks) and the admin API's port, reads both back, and keeps Caddy running on them. The
caller records the returned `RouterProcess` in its own state (state.json, service labels) and
changes weights through Caddy's admin API after `write_config()`: the holder restarts a dead
Caddy from that file, so the file must lead, never trail, what Caddy serves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from include.mlops.deploy import caddy
from include.mlops.deploy.process import log_tail, pid_alive, port_open, start_ticks, stop_process_group
from include.mlops.errors import DeployError

CONFIG_FILE = "caddy.json"
PORTS_FILE = "router.ports.json"
CADDY_PID_FILE = "caddy.pid"
LOG_FILE = "caddy.log"
HOLDER = Path(__file__).with_name("router_holder.py")


@dataclass(frozen=True)
class RouterProcess:
    """The holder's pid (the router's identity: Caddy restarts under it) and the ports it bound."""

    pid: int
    pid_start_ticks: int | None
    http_port: int
    admin_port: int
    log_path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> RouterProcess | None:
        return None if not d else cls(**{k: d.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def alive(self) -> bool:
        return pid_alive(self.pid, self.pid_start_ticks)


def write_config(state_dir: Path, config: dict[str, Any]) -> None:
    """caddy.json, atomically: what the holder starts Caddy with, now and after any restart."""
    path = Path(state_dir) / CONFIG_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # the holder writes caddy.pid beside it
    tmp.write_text(json.dumps(config, indent=2))
    tmp.replace(path)


def start(
    state_dir: Path,
    config: dict[str, Any],
    *,
    http_port: int = 0,
    caddy_executable: str | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 15.0,
) -> RouterProcess:
    """Start the holder and its Caddy with `config` (its listen addresses are the holder's sockets).

    http_port 0 takes any free port; a restore passes the old one so the router's URL stays. Returns
    once Caddy answers on its admin API; DeployError with the log's tail otherwise (nothing left running).
    """
    state_dir = Path(state_dir)
    write_config(state_dir, config)
    ports_file = state_dir / PORTS_FILE
    ports_file.unlink(missing_ok=True)
    log_path = state_dir / LOG_FILE
    run_env = {
        **(env if env is not None else os.environ),
        # caddy writes its data/config dirs here, never into the user's home
        "XDG_DATA_HOME": str(state_dir / "caddy-data"),
        "XDG_CONFIG_HOME": str(state_dir / "caddy-config"),
    }
    cmd = [
        sys.executable, str(HOLDER), "--caddy", caddy_executable or caddy.find_caddy(),
        "--config", str(state_dir / CONFIG_FILE), "--port", str(http_port), "--ports-file", str(ports_file),
        "--pid-file", str(state_dir / CADDY_PID_FILE), "--events", str(state_dir / "events.jsonl"),
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=run_env
        )
    ticks = start_ticks(proc.pid)
    deadline = time.monotonic() + timeout_s
    router: RouterProcess | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DeployError(
                f"the router (caddy and its socket holder) exited with {proc.returncode}. "
                f"Log tail:\n{log_tail(str(log_path))}"
            )
        if router is None and ports_file.exists():
            ports = json.loads(ports_file.read_text())
            router = RouterProcess(proc.pid, ticks, ports["http_port"], ports["admin_port"], str(log_path))
        if router is not None and caddy.current_split(router.admin_port) is not None and port_open(router.http_port):
            return router
        time.sleep(0.05)
    stop_process_group(proc.pid, ticks, grace_s=2.0)
    raise DeployError(f"caddy did not come up within {timeout_s:.0f} s. Log tail:\n{log_tail(str(log_path))}")


def caddy_pid(state_dir: Path) -> int | None:
    """The pid of the Caddy serving now (its holder restarts it under a new pid)."""
    try:
        return int((Path(state_dir) / CADDY_PID_FILE).read_text())
    except (OSError, ValueError):
        return None
