"""A server that finds its port taken is recognised (and started again elsewhere), never waited on.

The MLflow fixture and the api-server helper start servers that cannot take a bound socket; when
another process took the port between `free_port()` and the bind, the server exits and its log
says so. These run the real servers against a port held by a squatter.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, stop_group, wait_own_http
from tests.ports import listening_socket, port_taken


def _start(cmd: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_a_server_whose_port_is_taken_is_reported_as_such_not_waited_on(tmp_path: Path) -> None:
    with listening_socket() as squatter:
        port = squatter.getsockname()[1]
        log_path = tmp_path / "http.log"
        proc = _start([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)], log_path)
        t0 = time.monotonic()
        assert wait_own_http(proc, f"http://127.0.0.1:{port}/", log_path, 60) is False
        assert time.monotonic() - t0 < 30
        stop_group(proc)
    free = listening_socket()
    port = free.getsockname()[1]
    free.close()
    log_path = tmp_path / "http-2.log"
    proc = _start([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)], log_path)
    try:
        assert wait_own_http(proc, f"http://127.0.0.1:{port}/", log_path, 60) is True
    finally:
        stop_group(proc)


def test_another_exit_raises_with_the_log_instead_of_retrying(tmp_path: Path) -> None:
    log_path = tmp_path / "bad.log"
    proc = _start([sys.executable, "-c", "raise SystemExit('no config here')"], log_path)
    with pytest.raises(RuntimeError, match=r"exited 1:\n.*no config here"):
        wait_own_http(proc, "http://127.0.0.1:9/", log_path, 30)


@pytest.mark.slow
def test_mlflows_own_message_for_a_taken_port_is_recognised(tmp_path: Path) -> None:
    with listening_socket() as squatter:
        port = squatter.getsockname()[1]
        log_path = tmp_path / "mlflow.log"
        proc = _start(
            [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--workers", "1"],
            log_path,
        )  # fmt: skip
        try:
            up = wait_own_http(proc, f"http://127.0.0.1:{port}/health", log_path, 120)
        finally:
            stop_group(proc)
    assert up is False and port_taken(log_path.read_text()), log_path.read_text()[-2000:]
