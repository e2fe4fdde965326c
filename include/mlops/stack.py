"""The embedded local stack: Airflow's environment, the MLflow tracking server, the UI.

`python -m include.mlops.stack up|down|status|env|ui`. Ports and folders come from
airflow_settings.yaml (the `local` profile); state (pid files, logs) lives under .local/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from include.mlops.settings.project import PROJECT_ROOT, ProjectSettings

LOCAL_DIR = PROJECT_ROOT / ".local"
AIRFLOW_HOME = LOCAL_DIR / "airflow"
VENV_BIN = Path(sys.executable).parent


def airflow_env() -> dict[str, str]:
    """Environment under which Airflow runs from this repo (SQLite, LocalExecutor, no examples)."""
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    return env


def _pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    return pid


def _http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback URL from settings
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_http(url: str, deadline_s: float, what: str, log: Path) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if _http_ok(url):
            return
        time.sleep(0.5)
    tail = log.read_text()[-2000:] if log.exists() else "(no log)"
    raise RuntimeError(f"{what} did not answer {url} within {deadline_s:.0f} s; log {log}:\n{tail}")


def start_mlflow(settings: ProjectSettings | None = None) -> str:
    """Start the MLflow tracking server if it is not already up; return its URI."""
    s = settings or ProjectSettings.from_settings_file()
    uri = s.mlflow_tracking_uri
    if _http_ok(f"{uri}/health"):
        return uri
    run_dir = LOCAL_DIR / "mlflow"
    run_dir.mkdir(parents=True, exist_ok=True)
    s.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
    s.mlflow_backend_store.parent.mkdir(parents=True, exist_ok=True)
    host_port = uri.split("://", 1)[1]
    host, port = host_port.rsplit(":", 1)
    log = run_dir / "server.log"
    cmd = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--host",
        host,
        "--port",
        port,
        "--backend-store-uri",
        f"sqlite:///{s.mlflow_backend_store}",
        "--artifacts-destination",
        s.mlflow_artifact_root.as_uri(),
        "--workers",
        "1",
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=PROJECT_ROOT)
    (run_dir / "server.pid").write_text(str(proc.pid))
    _wait_http(f"{uri}/health", 90, "MLflow server", log)
    return uri


def _stop(pid_file: Path, what: str) -> None:
    pid = _pid_alive(pid_file)
    if pid is None:
        return
    os.killpg(pid, signal.SIGTERM)
    for _ in range(50):
        if _pid_alive(pid_file) is None:
            break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    print(f"stopped {what}")


def airflow_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(VENV_BIN / "airflow"), *args], env=airflow_env(), check=check, cwd=PROJECT_ROOT)


def init_airflow() -> None:
    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    airflow_cli("db", "migrate")
    subprocess.run(
        [sys.executable, "-m", "include.mlops.settings.apply", str(PROJECT_ROOT / "airflow_settings.yaml")],
        env=airflow_env(),
        check=True,
        cwd=PROJECT_ROOT,
    )


def start_ui() -> None:
    """Airflow standalone (api-server, scheduler, dag-processor, triggerer) in the background."""
    start_mlflow()
    pid_file = LOCAL_DIR / "airflow-standalone.pid"
    if _pid_alive(pid_file) is None:
        log = LOCAL_DIR / "airflow-standalone.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [str(VENV_BIN / "airflow"), "standalone"],
                env=airflow_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=PROJECT_ROOT,
            )
        pid_file.write_text(str(proc.pid))
        _wait_http("http://127.0.0.1:8080/api/v2/monitor/health", 180, "Airflow api-server", log)
    s = ProjectSettings.from_settings_file()
    pw = AIRFLOW_HOME / "simple_auth_manager_passwords.json.generated"
    print("Airflow UI: http://127.0.0.1:8080  (user admin, password in " + str(pw) + ")")
    print(f"MLflow UI:  {s.mlflow_tracking_uri}")
    print("stop with: make down")


def main(argv: list[str] | None = None) -> int:
    cmd = (argv if argv is not None else sys.argv[1:]) or ["status"]
    s = ProjectSettings.from_settings_file()
    if cmd[0] == "up":
        print(f"MLflow tracking server: {start_mlflow(s)}")
    elif cmd[0] == "init":
        init_airflow()
    elif cmd[0] == "ui":
        start_ui()
    elif cmd[0] == "down":
        from include.mlops.deploy.local import LocalProcessTarget

        for state in sorted(s.serving_root.glob("*/state.json")):
            LocalProcessTarget(state.parent, python_executable=sys.executable).stop_all()
            print(f"stopped serving {state.parent.name}")
        _stop(LOCAL_DIR / "airflow-standalone.pid", "airflow standalone")
        _stop(LOCAL_DIR / "mlflow" / "server.pid", "mlflow server")
    elif cmd[0] == "env":
        for k, v in airflow_env().items():
            if k.startswith(("AIRFLOW", "PYTHONPATH")):
                print(f"export {k}={v}")
    elif cmd[0] == "status":
        print(f"mlflow {s.mlflow_tracking_uri}: {'up' if _http_ok(s.mlflow_tracking_uri + '/health') else 'down'}")
        print(f"airflow standalone: {'up' if _pid_alive(LOCAL_DIR / 'airflow-standalone.pid') else 'down'}")
    else:
        print(f"unknown command {cmd[0]!r}; use up|init|ui|down|env|status", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
