"""The local stack's commands as a new user runs them: real processes, a throwaway stack.

Each test points the stack at its own settings file, state folder and ports (MLOPS_SETTINGS_FILE,
MLOPS_LOCAL_DIR, MLOPS_UI_PORT), so the checkout's own .local and other running stacks are untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from include.mlops import stack
from include.mlops.settings.project import PROJECT_ROOT
from tests.conftest import free_port

PYTHON = str(Path(sys.executable))


def _fresh_shell_env(tmp: Path, *, mlflow_port: int, ui_port: int) -> dict[str, str]:
    """A shell with nothing activated: no venv on PATH, no Airflow variables, the stack's overrides."""
    settings = yaml.safe_load((PROJECT_ROOT / "airflow_settings.yaml").read_text())
    for conn in settings["airflow"]["connections"]:
        if conn["conn_id"] == "mlflow_default":
            conn["conn_port"] = mlflow_port
            conn["conn_extra"] = {
                "artifact_root": str(tmp / "mlflow/artifacts"),
                "backend_store": str(tmp / "mlflow/mlflow.db"),
            }
    for var in settings["airflow"]["variables"]:
        if var["variable_name"] in ("mlops_data_root", "mlops_serving_root"):
            var["variable_value"] = str(tmp / var["variable_name"])
    (tmp / "airflow_settings.yaml").write_text(yaml.safe_dump(settings))
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHONPATH", "VIRTUAL_ENV"))}
    return {
        **keep,
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "MLOPS_SETTINGS_FILE": str(tmp / "airflow_settings.yaml"),
        "MLOPS_LOCAL_DIR": str(tmp / "local"),
        "MLOPS_UI_PORT": str(ui_port),
    }


def _stack(env: dict[str, str], *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "include.mlops.stack", *args],
        env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip


def _listening(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp writes them) listening on `port`."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            addr, hex_port = cols[1].rsplit(":", 1)
            if cols[3] == "0A" and int(hex_port, 16) == port:
                out.add(addr)
    return out


def _processes_with(env_entry: str) -> list[str]:
    """Live processes whose environment holds `env_entry` (everything a stack started inherits it)."""
    found = []
    needle = env_entry.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")[:200]
                    found.append(f"{proc.name}: {cmdline!r}")
        except OSError:
            continue
    return found


def _ui_recipe() -> list[list[str]]:
    """The commands `make ui` runs, read from the Makefile (so the test runs what the README documents)."""
    lines = (PROJECT_ROOT / "Makefile").read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("ui:")))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip().replace("$(VENV)", str(PROJECT_ROOT / ".venv")).split())
    return recipe


@pytest.mark.slow
def test_make_ui_starts_from_a_fresh_shell_on_loopback_and_down_leaves_no_process(tmp_path: Path) -> None:
    mlflow_port, ui_port = free_port(), free_port()
    env = _fresh_shell_env(tmp_path, mlflow_port=mlflow_port, ui_port=ui_port)
    recipe = _ui_recipe()
    assert [cmd[-1] for cmd in recipe] == ["init", "ui"], recipe
    marker = f"MLOPS_LOCAL_DIR={tmp_path / 'local'}"
    try:
        t0 = time.monotonic()
        for cmd in recipe:
            done = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        started_s = time.monotonic() - t0
        print(f"make ui's commands finished in {started_s:.0f} s")
        assert f"http://127.0.0.1:{ui_port}" in done.stdout

        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/api/v2/monitor/health", timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/", timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        # item 15: the api-server listens on 127.0.0.1 only (0100007F), never on 0.0.0.0 or ::
        assert _listening(ui_port) == {"0100007F"}, _listening(ui_port)
        assert _listening(mlflow_port) == {"0100007F"}, _listening(mlflow_port)

        # a second `mlflow` reuses this checkout's own MLflow server instead of refusing or starting another
        mlflow_pid = (tmp_path / "local/mlflow/server.pid").read_text()
        again = _stack(env, "mlflow", timeout_s=60)
        assert again.returncode == 0, again.stderr
        assert (tmp_path / "local/mlflow/server.pid").read_text() == mlflow_pid
    finally:
        down = _stack(env, "down", timeout_s=120)
    assert down.returncode == 0, down.stderr
    assert "stopped airflow standalone" in down.stdout and "stopped mlflow server" in down.stdout
    assert _processes_with(marker) == []
    assert _listening(ui_port) == set() and _listening(mlflow_port) == set()


def test_a_failed_start_stops_every_process_it_started(tmp_path: Path) -> None:
    """A service that never answers: the start fails within its deadline and leaves no process,
    its children included (airflow standalone's components are children of its process group)."""
    marker = f"STACK_TEST_MARKER={tmp_path}"
    parent = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    t0 = time.monotonic()
    with pytest.raises(stack.StackError, match="did not answer"):
        stack._start(
            [PYTHON, "-c", parent],
            pid_file=tmp_path / "svc.pid",
            log=tmp_path / "svc.log",
            env={**os.environ, "STACK_TEST_MARKER": str(tmp_path)},
            url=f"http://127.0.0.1:{free_port()}/health",
            what="a service that never answers",
            deadline_s=3,
        )
    assert time.monotonic() - t0 < 20
    assert _processes_with(marker) == []
    assert not (tmp_path / "svc.pid").exists()


def test_start_mlflow_refuses_a_port_answered_by_another_checkouts_server(tmp_path: Path) -> None:
    """Something else answers /health on the configured port (another checkout's MLflow would):
    `stack mlflow` refuses, naming the port and what owns it, instead of logging runs into it."""
    port = free_port()
    other = tmp_path / "other-checkout"
    other.mkdir()
    (other / "health").write_text("OK")
    server = subprocess.Popen(
        [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=other, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not _listening(port):
            assert time.monotonic() < deadline, "http.server did not start"
            time.sleep(0.1)
        env = _fresh_shell_env(tmp_path, mlflow_port=port, ui_port=free_port())
        refused = _stack(env, "mlflow", timeout_s=60)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"port {port}" in refused.stderr and f"pid {server.pid}" in refused.stderr, refused.stderr
        assert "http.server" in refused.stderr and "not this checkout's MLflow" in refused.stderr
        assert not (tmp_path / "local/mlflow/server.pid").exists()
        assert server.poll() is None  # the other server is left alone
    finally:
        server.terminate()
        server.wait(10)


def test_ui_refuses_a_taken_port_before_starting_anything(tmp_path: Path) -> None:
    ui_port = free_port()
    squatter = subprocess.Popen(
        [PYTHON, "-m", "http.server", str(ui_port), "--bind", "127.0.0.1"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not _listening(ui_port):
            assert time.monotonic() < deadline, "http.server did not start"
            time.sleep(0.1)
        env = _fresh_shell_env(tmp_path, mlflow_port=free_port(), ui_port=ui_port)
        refused = _stack(env, "ui", timeout_s=180)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"port {ui_port} (the Airflow UI) is taken by pid {squatter.pid}" in refused.stderr, refused.stderr
        assert not (tmp_path / "local/mlflow/server.log").exists()  # not even MLflow was started
        assert _processes_with(f"MLOPS_LOCAL_DIR={tmp_path / 'local'}") == []
        assert squatter.poll() is None
    finally:
        squatter.terminate()
        squatter.wait(10)
