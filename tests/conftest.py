"""Shared fixtures: an isolated Airflow home, free loopback ports, a real MLflow tracking server."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Airflow reads its config at import time: point it at a throwaway home before anything imports it.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="mlops-test-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
        # one key for this process and every airflow subprocess: connections one of them encrypts,
        # the others can read (without it each process may generate its own airflow.cfg key)
        "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The throwaway Airflow home goes with the session (pytest's own tmp_path keeps its last 3).

    Under pytest-xdist each worker process made its own home at import, and removes it here."""
    import shutil

    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


@pytest.fixture(scope="session")
def docker_engine() -> str:
    """A Docker engine answers (once per session): skips without one, fails under CI=true (tests/services.py)."""
    from tests.services import require_docker_engine

    return require_docker_engine()


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB in the throwaway AIRFLOW_HOME."""
    marker = _AIRFLOW_HOME / ".migrated"
    if not marker.exists():
        subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], check=True, capture_output=True)
        marker.touch()
    return _AIRFLOW_HOME


def wait_own_http(proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout_s: float) -> bool:
    """Wait until `url` answers 200 while `proc` (the server we started) runs. False when its log says
    its port was taken (stop it and start it on another port); any other exit or a timeout raises
    with the log's tail. An answer counts only while our process runs: a server that could not
    bind exits within moments, so another run's server on that port is not taken for ours (a window
    of those moments remains)."""
    from tests.ports import port_taken

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        exited = proc.poll() is not None
        text = log_path.read_text(errors="replace")
        if port_taken(text):  # MLflow's wrapper outlives its failed uvicorn by up to half a minute
            return False
        if exited:
            raise RuntimeError(f"{url}: server exited {proc.returncode}:\n{text[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200 and proc.poll() is None:
                    return True
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s:\n{log_path.read_text(errors='replace')[-3000:]}")


def start_mlflow(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A real MLflow tracking server (SQLite store and served artifacts under `base`) on a free
    loopback port: (process, uri). MLflow cannot take a bound socket, so a port another process
    took first means starting it again on a new one."""
    from tests.ports import BIND_ATTEMPTS

    log_path = base / "server.log"
    for _attempt in range(BIND_ATTEMPTS):
        port = free_port()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    str(VENV_BIN / "mlflow"),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--backend-store-uri",
                    f"sqlite:///{base / 'mlflow.db'}",
                    "--artifacts-destination",
                    (base / "artifacts").as_uri(),
                    "--workers",
                    "1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        uri = f"http://127.0.0.1:{port}"
        try:
            up = wait_own_http(proc, f"{uri}/health", log_path, 120)
        except BaseException:
            stop_group(proc)
            raise
        if up:
            return proc, uri
        stop_group(proc)
    raise RuntimeError(f"MLflow found its port taken {BIND_ATTEMPTS} times:\n{log_path.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One MLflow tracking server for the session (start_mlflow)."""
    proc, uri = start_mlflow(tmp_path_factory.mktemp("mlflow"))
    try:
        yield uri
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """TERM the server's process group, KILL it after 30 s (gunicorn workers can ignore TERM on a
    loaded box); a group already gone is fine."""
    try:
        os.killpg(proc.pid, 15)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=10)
