"""The local stack: Airflow's environment, the MLflow tracking server, the UI, the real runtime.

`python -m include.mlops.stack up|down|status|env|ui|init|mlflow`. Two shapes of Airflow:
- `ui` (`make ui`): `airflow standalone` on the embedded SQLite DB of `make run`, for a first look;
- `up` (`make up`): the production shape. A PostgreSQL cluster under .local/postgres
  (include/mlops/postgres.py), `airflow db migrate`, the settings of airflow_settings.yaml applied,
  then the api-server, scheduler, dag-processor and triggerer as four separate processes with the
  LocalExecutor, each with its own pid file and log under .local/runtime/, and the MLflow server.
  The api-server's local user `admin` gets a generated password, printed once and kept in
  .local/runtime/ui-passwords.json (mode 0600) with the other generated secrets.
Ports and folders come from airflow_settings.yaml (the `local` profile); state (pid files, logs)
lives under .local/. Every service listens on 127.0.0.1 only, and each one this checkout starts is
recorded (pid, start time, command line) so that a port answered by someone else is refused,
never reused. `down` stops each process by its own pid file (and the cluster with pg_ctl).

Overrides for a second stack next to the first (tests, a second checkout): MLOPS_SETTINGS_FILE
(another airflow_settings.yaml: MLflow port and folders), MLOPS_LOCAL_DIR (pid files, logs,
AIRFLOW_HOME, the PostgreSQL cluster), MLOPS_UI_PORT (the Airflow api-server, 8080 by default),
MLOPS_PG_PORT (PostgreSQL, 5433 by default).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from include.mlops.errors import MlopsError, SettingsError
from include.mlops.settings.project import PROJECT_ROOT, ProjectSettings, settings_file

LOCAL_DIR = Path(os.environ.get("MLOPS_LOCAL_DIR") or PROJECT_ROOT / ".local").resolve()
AIRFLOW_HOME = LOCAL_DIR / "airflow"
VENV_BIN = Path(sys.executable).parent
UI_HOST = "127.0.0.1"
UI_PORT = int(os.environ.get("MLOPS_UI_PORT") or 8080)
UI_URL = f"http://{UI_HOST}:{UI_PORT}"
STANDALONE_PID = LOCAL_DIR / "airflow-standalone.pid"
MLFLOW_PID = LOCAL_DIR / "mlflow" / "server.pid"
# the real runtime (`up`): one pid file and one log per component


class StackError(SettingsError):
    """A local service cannot start: its port belongs to someone else, or it did not come up."""


def airflow_env() -> dict[str, str]:
    """Environment under which Airflow runs from this repo (SQLite, LocalExecutor, no examples)."""
    env = dict(os.environ)
    env.update(
        {
            # `airflow standalone` starts its components by the bare name `airflow`: the venv's
            # bin must come first on PATH even when nothing was activated (make calls .venv/bin/python).
            "PATH": os.pathsep.join(p for p in (str(VENV_BIN), env.get("PATH", "")) if p),
            "AIRFLOW_HOME": str(AIRFLOW_HOME),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME / 'airflow.db'}",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # loopback only, like every other local service (Airflow's default is 0.0.0.0)
            "AIRFLOW__API__HOST": UI_HOST,
            "AIRFLOW__API__PORT": str(UI_PORT),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{UI_URL}/execution/",
            "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    return env


# --- what this checkout started: pid files with the process's start time and command line ------


@dataclass(frozen=True)
class ProcessRecord:
    """A process this checkout started; the start time tells it from a later process with its pid."""

    pid: int
    start_ticks: int | None  # field 22 of /proc/<pid>/stat; None in a pid file of the old format
    cmdline: tuple[str, ...] = ()

    def alive(self) -> bool:
        ticks = _start_ticks(self.pid)
        return ticks is not None and (self.start_ticks is None or ticks == self.start_ticks)


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19]) if fields[0] != "Z" else None


def _cmdline(pid: int) -> tuple[str, ...]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ()
    return tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)


def _record(pid_file: Path, pid: int) -> None:
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.write_text(json.dumps({"pid": pid, "start_ticks": _start_ticks(pid), "cmdline": list(_cmdline(pid))}))


def _read_record(pid_file: Path) -> ProcessRecord | None:
    try:
        text = pid_file.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        if text.isdigit():  # the old format: the pid alone
            return ProcessRecord(int(text), None)
        doc = json.loads(text)
        return ProcessRecord(int(doc["pid"]), doc.get("start_ticks"), tuple(doc.get("cmdline") or ()))
    except (ValueError, KeyError, TypeError):
        return None


def _pid_alive(pid_file: Path) -> int | None:
    rec = _read_record(pid_file)
    return rec.pid if rec is not None and rec.alive() else None


def port_owner(port: int) -> str:
    """Who listens on a TCP port of this machine, as far as /proc shows ("pid N: cmdline")."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(cols[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return f"pid {proc.name}: {' '.join(_cmdline(int(proc.name)))[:300]}"
    return "a process this user cannot see" if inodes else "nothing listening now"


def _http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback URL from settings
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_http(url: str, deadline_s: float, what: str, log: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if _http_ok(url):
            return
        if proc is not None and proc.poll() is not None:
            raise StackError(
                f"{what} exited with code {proc.returncode} before {url} answered; log {log}:\n{_tail(log)}"
            )
        time.sleep(0.5)
    raise StackError(f"{what} did not answer {url} within {deadline_s:.0f} s; log {log}:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"


def _start(
    cmd: list[str],
    *,
    pid_file: Path,
    log: Path,
    env: dict[str, str] | None,
    url: str,
    what: str,
    deadline_s: float = 180.0,
) -> None:
    """Start a service in its own process group and wait until `url` answers.

    A failed start stops the whole group: nothing this call started outlives it (airflow standalone
    starts its components as children, which share the group).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=PROJECT_ROOT
        )
    _record(pid_file, proc.pid)
    try:
        _wait_http(url, deadline_s, what, log, proc)
    except BaseException:
        _stop_group(proc.pid, proc)
        pid_file.unlink(missing_ok=True)
        raise


def _stop_group(pgid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the process group, SIGKILL what is left after 10 s; reap our own child."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            if proc is not None:
                proc.poll()
            if not _group_alive(pgid):
                return
            time.sleep(0.2)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # zombies still count for killpg; a group of zombies only is gone
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[2]) == pgid and stat[0] != "Z":
                return True
    return False


def _stop(pid_file: Path, what: str) -> None:
    rec = _read_record(pid_file)
    if rec is not None and rec.alive():
        _stop_group(rec.pid)
        print(f"stopped {what}")
    pid_file.unlink(missing_ok=True)


# --- MLflow ---------------------------------------------------------------------------------------


def _mlflow_backend_arg(s: ProjectSettings) -> str:
    return f"sqlite:///{s.mlflow_backend_store}"


def _own_mlflow(s: ProjectSettings) -> ProcessRecord | None:
    """This checkout's MLflow server: alive, started by us, serving this checkout's backend store."""
    rec = _read_record(MLFLOW_PID)
    if rec is None or not rec.alive():
        return None
    return rec if _mlflow_backend_arg(s) in _cmdline(rec.pid) else None


def _refuse_foreign_mlflow(s: ProjectSettings) -> None:
    """Refuse the MLflow port when something that is not this checkout's server answers or listens there."""
    uri = s.mlflow_tracking_uri
    port = int(uri.rsplit(":", 1)[1])
    if _own_mlflow(s) is None and (_http_ok(f"{uri}/health") or port_owner(port) != "nothing listening now"):
        raise StackError(
            f"port {port} (connection mlflow_default, {uri}) is taken by {port_owner(port)}, "
            f"which is not this checkout's MLflow server (backend store {s.mlflow_backend_store}, "
            f"pid file {MLFLOW_PID}); stop it or give mlflow_default another port in {settings_file()}"
        )


def start_mlflow(settings: ProjectSettings | None = None) -> str:
    """Start the MLflow tracking server if it is not already up; return its URI.

    A server already answering on the configured port is reused only when it is this checkout's
    (its pid file names a live process started with this checkout's backend store). Anything else
    there (another checkout's MLflow, any other program) is refused: runs must never land in
    someone else's tracking store without a word.
    """
    s = settings or ProjectSettings.from_settings_file()
    uri = s.mlflow_tracking_uri
    host, port = uri.split("://", 1)[1].rsplit(":", 1)
    log = MLFLOW_PID.parent / "server.log"
    if _own_mlflow(s) is not None:  # ours, perhaps still starting
        _wait_http(f"{uri}/health", 90, "this checkout's MLflow server", log)
        return uri
    _refuse_foreign_mlflow(s)
    MLFLOW_PID.parent.mkdir(parents=True, exist_ok=True)
    s.mlflow_artifact_root.mkdir(parents=True, exist_ok=True)
    s.mlflow_backend_store.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(VENV_BIN / "mlflow"),
        "server",
        "--host",
        host,
        "--port",
        port,
        "--backend-store-uri",
        _mlflow_backend_arg(s),
        "--artifacts-destination",
        s.mlflow_artifact_root.as_uri(),
        "--workers",
        "1",
    ]
    env = {**os.environ, "PATH": os.pathsep.join((str(VENV_BIN), os.environ.get("PATH", "")))}
    _start(cmd, pid_file=MLFLOW_PID, log=log, env=env, url=f"{uri}/health", what="MLflow server")
    return uri


# --- Airflow --------------------------------------------------------------------------------------


def airflow_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(VENV_BIN / "airflow"), *args], env=airflow_env(), check=check, cwd=PROJECT_ROOT)


def init_airflow() -> None:
    AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
    airflow_cli("db", "migrate")
    subprocess.run(
        [sys.executable, "-m", "include.mlops.airflow.apply_settings", str(settings_file())],
        env=airflow_env(),
        check=True,
        cwd=PROJECT_ROOT,
    )


def start_ui() -> None:
    """Airflow standalone (api-server, scheduler, dag-processor, triggerer) in the background."""
    s = ProjectSettings.from_settings_file()
    standalone_up = _pid_alive(STANDALONE_PID) is not None
    if not standalone_up and port_owner(UI_PORT) != "nothing listening now":  # before starting anything
        raise StackError(
            f"port {UI_PORT} (the Airflow UI) is taken by {port_owner(UI_PORT)}; "
            "stop it or start the UI on another port with MLOPS_UI_PORT"
        )
    mlflow_was_up = _own_mlflow(s) is not None
    start_mlflow(s)
    health = f"{UI_URL}/api/v2/monitor/health"
    if not standalone_up:
        try:
            _start(
                [str(VENV_BIN / "airflow"), "standalone"],
                pid_file=STANDALONE_PID,
                log=LOCAL_DIR / "airflow-standalone.log",
                env=airflow_env(),
                url=health,
                what="Airflow api-server (airflow standalone)",
            )
        except BaseException:
            if not mlflow_was_up:  # a failed start leaves nothing it started behind
                _stop(MLFLOW_PID, "mlflow server")
            raise
    pw = AIRFLOW_HOME / "simple_auth_manager_passwords.json.generated"
    print(f"Airflow UI: {UI_URL}  (user admin, password in {pw})")
    print(f"MLflow UI:  {s.mlflow_tracking_uri}")
    print("stop with: make down")


def main(argv: list[str] | None = None) -> int:
    from include.mlops import runtime  # it builds on this module (env, MLflow, init)

    cmd = (argv if argv is not None else sys.argv[1:]) or ["status"]
    try:
        s = ProjectSettings.from_settings_file()
        if cmd[0] == "up":
            runtime.start_runtime()
        elif cmd[0] == "mlflow":
            print(f"MLflow tracking server: {start_mlflow(s)}")
        elif cmd[0] == "init":
            init_airflow()
        elif cmd[0] == "ui":
            start_ui()
        elif cmd[0] == "down":
            from include.mlops.deploy import supervisor
            from include.mlops.deploy.local import LocalProcessTarget

            for state in sorted(s.serving_root.glob("*/state.json")):
                supervisor.stop(state.parent)  # first, or it would restart what stop_all stops
                LocalProcessTarget(state.parent, python_executable=sys.executable).stop_all()
                print(f"stopped serving {state.parent.name}")
            for pid_file in sorted(s.serving_root.glob(f"*/{supervisor.PID_FILE}")):  # other profiles' supervisors
                if supervisor.stop(pid_file.parent):
                    print(f"stopped the supervisor of {pid_file.parent.name} (its Swarm services keep serving)")
            _stop(STANDALONE_PID, "airflow standalone")
            runtime.stop_runtime()
            _stop(MLFLOW_PID, "mlflow server")
        elif cmd[0] == "env":
            for k, v in airflow_env().items():
                if k.startswith(("AIRFLOW", "PYTHONPATH")):
                    print(f"export {k}={v}")
        elif cmd[0] == "status":
            print(f"mlflow {s.mlflow_tracking_uri}: {'up' if _own_mlflow(s) else 'down'}")
            print(f"airflow standalone: {'up' if _pid_alive(STANDALONE_PID) else 'down'}")
            for name in runtime.COMPONENTS:
                print(f"airflow {name}: {'up' if _pid_alive(runtime.component_files(name)[0]) else 'down'}")
            print(f"postgresql 127.0.0.1:{runtime.PG_PORT}: {'up' if runtime.cluster().running_pid() else 'down'}")
        else:
            print(f"unknown command {cmd[0]!r}; use up|mlflow|init|ui|down|env|status", file=sys.stderr)
            return 2
    except MlopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
