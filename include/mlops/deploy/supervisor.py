"""Keeps a deployment serving between releases: restores a dead stable or router, reroutes replicas.

A release's analysis watches its own canary; nothing watched the stable and Caddy once the DAG
run ended, so a crash left the model offline until the next release. This process polls liveness
(`LocalProcessTarget.health()`, a read of state.json and /proc) and calls `restore()` under the
same state lock the deploy tasks take. A dead canary is never restarted: it has failed, the
router's health checks keep traffic off it, and its release rolls it back.

On the docker profile the same loop keeps the router in step with Swarm: a replica Swarm replaced
has a new address, which `SwarmTarget.health()` reports and `restore()` routes to (without it, two
replacements between releases would leave the router with no live upstream).

Run: python -m include.mlops.deploy.supervisor --state-dir .local/serving/<model> [--profile docker ...]
`make run` starts it detached after the release (start_detached), the docker profile's promote
does the same (SwarmTarget.keep_supervised); `make down` stops it (stop).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from include.mlops.deploy.local import LocalProcessTarget
from include.mlops.deploy.process import pid_alive, start_ticks
from include.mlops.deploy.target import DeployTarget
from include.mlops.errors import MlopsError

log = logging.getLogger(__name__)

PID_FILE = "supervisor.pid"
LOG_FILE = "supervisor.log"


def supervise(target: DeployTarget, interval_s: float, stop: threading.Event) -> None:
    """Poll every interval_s until stop is set; restore what died. Errors are logged and retried."""
    backoff_s = interval_s
    while not stop.is_set():
        try:
            health = target.health()
            if health.stable is False or health.router is False:
                dead = [k for k in health.dead if k != "canary"]
                t0 = time.monotonic()
                restored = target.restore()
                if restored:
                    log.warning(
                        "%s down or out of date; restored %s in %.1f s",
                        " and ".join(dead),
                        ", ".join(restored),
                        time.monotonic() - t0,
                    )
            backoff_s = interval_s
        except (MlopsError, OSError, ValueError) as exc:
            # e.g. the model file was deleted: keep trying, slower, and say why each time
            backoff_s = min(30.0, backoff_s * 2)
            log.error("cannot restore the deployment (next try in %.0f s): %s", backoff_s, exc)
        stop.wait(backoff_s)


def _pid_file(state_dir: Path) -> Path:
    return Path(state_dir) / PID_FILE


def running_pid(state_dir: Path) -> int | None:
    """The supervisor's pid for this deployment if it runs (pid file holds pid and start ticks)."""
    try:
        pid_s, ticks_s = _pid_file(state_dir).read_text().split()
        pid, ticks = int(pid_s), int(ticks_s)
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid, ticks) else None


def start_detached(
    state_dir: Path,
    python_executable: str = sys.executable,
    interval_s: float = 0.5,
    *,
    target_args: Sequence[str] = (),
) -> int:
    """Start the supervisor for state_dir in its own session (survives the caller); no-op if it runs.

    target_args: how main() rebuilds a target other than the local one (e.g. --profile docker ...).
    """
    state_dir = Path(state_dir)
    pid = running_pid(state_dir)
    if pid is not None:
        return pid
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    with open(state_dir / LOG_FILE, "ab") as out:
        proc = subprocess.Popen(
            [python_executable, "-m", "include.mlops.deploy.supervisor", "--state-dir", str(state_dir),
             "--interval-s", str(interval_s), *target_args],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=str(root), env=env,
        )  # fmt: skip
    _pid_file(state_dir).write_text(f"{proc.pid} {start_ticks(proc.pid)}")
    return proc.pid


def stop(state_dir: Path, grace_s: float = 10.0) -> bool:
    """SIGTERM the supervisor of state_dir (it finishes a restore in progress first); True if one ran."""
    pid = running_pid(state_dir)
    if pid is None:
        _pid_file(state_dir).unlink(missing_ok=True)
        return False
    ticks = start_ticks(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and pid_alive(pid, ticks):
        time.sleep(0.05)
    if pid_alive(pid, ticks):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _pid_file(state_dir).unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", required=True, type=Path, help="the deployment's folder (holds state.json)")
    p.add_argument("--interval-s", type=float, default=0.5, help="how often liveness is checked")
    p.add_argument("--profile", choices=("local", "docker"), default="local", help="which serving target")
    p.add_argument("--model-name", help="docker: the served model (its Swarm services' name)")
    p.add_argument("--registry", help="docker: the registry the images come from")
    p.add_argument("--replicas", type=int, default=2, help="docker: replicas per track")
    p.add_argument("--docker-host", default=None, help="docker: the engine's URL (default: DOCKER_HOST or the socket)")
    a = p.parse_args(argv)
    if not 0.05 <= a.interval_s <= 60:
        p.error(f"--interval-s={a.interval_s} must be within 0.05..60 s")
    if a.profile == "local" and not (a.state_dir / "state.json").is_file():
        p.error(f"--state-dir={a.state_dir}: no state.json there; nothing is deployed to supervise")
    if a.profile == "docker" and not (a.model_name and a.registry):
        p.error("--profile docker needs --model-name and --registry")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    stop_event = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: stop_event.set())
    target: DeployTarget
    if a.profile == "docker":
        from include.mlops.deploy.swarm import SwarmTarget

        target = SwarmTarget(
            a.state_dir, a.model_name, registry=a.registry, replicas=a.replicas, base_url=a.docker_host
        )
    else:
        target = LocalProcessTarget(a.state_dir, python_executable=sys.executable)
    log.info("supervising %s every %.2f s (pid %d)", a.state_dir, a.interval_s, os.getpid())
    supervise(target, a.interval_s, stop_event)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
