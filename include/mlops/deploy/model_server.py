"""A model server as a local process: started on a socket bound by the caller, waited for, drained.

The socket is bound here and handed to the server (--fd): its port is known before the server
starts, and no other process can take it in between.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from include.mlops.deploy.process import log_tail, pid_alive, start_ticks, stop_process_group
from include.mlops.deploy.target import Backend, ModelRef
from include.mlops.errors import BackendNotReady, DeployError

SERVER_MODULE = "include.mlops.serving.server"


def start(
    model: ModelRef,
    role: str,
    *,
    state_dir: Path,
    python_executable: str,
    project_root: Path,
    drain_timeout_s: float,
    ready_timeout_s: float,
    port: int | None = None,
) -> Backend:
    """Start a model server for `model` on a socket bound here; return its Backend once it is ready.

    BackendNotReady (with the log's tail) if it exits or is not ready in time; nothing is left running.
    """
    model_path = Path(model.model_path)
    if not model_path.is_file():
        raise DeployError(f"model file {model_path} of {model.name} v{model.version} does not exist")
    # the socket is bound here and handed to the server (--fd): its port is known before the server
    # starts, and no other process can take it in between. A restarted stable takes its old port
    # back if it is free (the router's config stays valid), else a new one.
    sock = _listen(port or 0)
    port = int(sock.getsockname()[1])
    log_path = state_dir / f"server-{role}-v{model.version}-{port}.log"
    cmd = [
        python_executable, "-m", SERVER_MODULE,
        "--model", str(model_path.resolve()),
        "--fd", str(sock.fileno()),
        "--model-name", model.name,
        "--model-version", str(model.version),
        "--graceful-shutdown-s", str(drain_timeout_s),
    ]  # fmt: skip
    if model.image_digest:
        cmd += ["--image-digest", model.image_digest]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(project_root), os.environ.get("PYTHONPATH")])),
    }
    with sock, open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(sock.fileno(),),
            start_new_session=True, cwd=str(project_root), env=env,
        )  # fmt: skip
    backend = Backend(
        name=model.name,
        version=str(model.version),
        url=f"http://127.0.0.1:{port}",
        model_path=str(model_path.resolve()),
        image_digest=model.image_digest,
        port=port,
        pid=proc.pid,
        pid_start_ticks=start_ticks(proc.pid),
        log_path=str(log_path),
        started_at_unix=time.time(),
    )
    outcome = wait_ready(proc, backend, ready_timeout_s)
    if outcome != "ready":
        stop_process_group(proc.pid, backend.pid_start_ticks, grace_s=2.0)
        raise BackendNotReady(f"{role} {model.name} v{model.version} did not become ready: {outcome}")
    return backend


def wait_ready(proc: subprocess.Popen[bytes], b: Backend, timeout_s: float) -> str:
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return f"server exited with {proc.returncode}. Log tail:\n{log_tail(b.log_path)}"
            try:
                r = client.get(f"{b.url}/health/ready")
                if r.status_code == 200:
                    return "ready"
                body = r.json()
                if body.get("status") == "failed":
                    return f"model failed to load: {body.get('load_error')}"
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
    return f"not ready within {timeout_s:g} s. Log tail:\n{log_tail(b.log_path)}"


def drain(b: Backend, timeout_s: float) -> None:
    """Wait until the router has no request left on this backend (bounded by timeout_s)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    # the router may have handed the request over a moment before the server counts it
    time.sleep(0.05)
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline and pid_alive(b.pid, b.pid_start_ticks):
            try:
                if client.get(f"{b.url}/info").json().get("in_flight", 0) <= 0:
                    return
            except (httpx.HTTPError, ValueError):
                return
            time.sleep(0.02)


def _listen(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:port; on a taken port (a restore's old one), any free port."""
    for p in dict.fromkeys((port, 0)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", p))
        except OSError:
            sock.close()
            continue
        sock.listen(1024)
        return sock
    raise DeployError("no free port on 127.0.0.1 for a model server")
