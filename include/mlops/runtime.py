"""The real runtime of `make up`: a PostgreSQL cluster and Airflow's four components as separate processes.

`python -m include.mlops.stack up|down` drives it (stack.main). A PostgreSQL cluster under
.local/postgres (include/mlops/postgres.py), `airflow db migrate`, the settings of
airflow_settings.yaml applied, then the api-server, scheduler, dag-processor and triggerer with the
LocalExecutor, each with its own pid file and log under .local/runtime/, and the MLflow server.
The api-server's local user `admin` gets a generated password, printed once and kept in
.local/runtime/ui-passwords.json (mode 0600) with the other generated secrets.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from include.mlops import postgres
from include.mlops.settings.project import PROJECT_ROOT, ProjectSettings, settings_file
from include.mlops.stack import (
    LOCAL_DIR,
    MLFLOW_PID,
    STANDALONE_PID,
    UI_PORT,
    UI_URL,
    VENV_BIN,
    StackError,
    _group_alive,
    _own_mlflow,
    _pid_alive,
    _read_record,
    _record,
    _refuse_foreign_mlflow,
    _stop,
    _stop_group,
    _tail,
    airflow_env,
    port_owner,
    start_mlflow,
)

RUNTIME_DIR = LOCAL_DIR / "runtime"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
PG_PORT = int(os.environ.get("MLOPS_PG_PORT") or postgres.DEFAULT_PORT)
SECRETS_FILE = RUNTIME_DIR / "secrets.json"
PASSWORDS_FILE = RUNTIME_DIR / "ui-passwords.json"
LEFTOVERS = RUNTIME_DIR / "leftover-groups.json"  # process groups of components that died, for `down`
UI_USER = "admin"


def cluster() -> postgres.Cluster:
    return postgres.Cluster(LOCAL_DIR / "postgres", PG_PORT)


def _private_json(path: Path, make: dict[str, str]) -> tuple[dict[str, str], bool]:
    """Read a JSON file of secrets, or create it with `make` (mode 0600 from the start); (doc, created)."""
    try:
        return json.loads(path.read_text()), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(make, out)
        out.write("\n")
    return make, True


def runtime_secrets() -> dict[str, str]:
    """Generated once per state folder: the database password, the API's JWT and session keys, the Fernet key.

    Every component reads the same values (a task's JWT, signed by the scheduler, must verify in the
    api-server; a Connection one process encrypts, the others must read)."""
    import base64

    doc, _ = _private_json(
        SECRETS_FILE,
        {
            "db_password": secrets.token_urlsafe(24),
            "jwt_secret": secrets.token_urlsafe(32),
            "api_secret_key": secrets.token_urlsafe(32),
            "fernet_key": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        },
    )
    return doc


def ui_password() -> tuple[str, bool]:
    """The api-server password of the local user `admin` (simple auth manager's passwords file); (pw, new)."""
    doc, created = _private_json(PASSWORDS_FILE, {UI_USER: secrets.token_urlsafe(18)})
    return doc[UI_USER], created


def runtime_env() -> dict[str, str]:
    """airflow_env() on this checkout's PostgreSQL, with the generated secrets and the local user."""
    sec = runtime_secrets()
    env = airflow_env()
    env.update(
        {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": cluster().url(sec["db_password"]),
            "AIRFLOW__CORE__FERNET_KEY": sec["fernet_key"],
            "AIRFLOW__API_AUTH__JWT_SECRET": sec["jwt_secret"],
            "AIRFLOW__API__SECRET_KEY": sec["api_secret_key"],
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager."
            "SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{UI_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(PASSWORDS_FILE),
            "AIRFLOW__API__WORKERS": env.get("AIRFLOW__API__WORKERS", "1"),  # a laptop, not a server farm
            # an idle scheduler loop sleeps this long before it sees a finished task (Airflow: 1 s):
            # 0.2 s took scheduling from 14 % to 8 % of landed -> promoted (bench/bench_scheduling.py)
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": env.get(
                "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME", "0.2"
            ),
        }
    )
    return env


def component_files(name: str) -> tuple[Path, Path]:
    return RUNTIME_DIR / f"{name}.pid", RUNTIME_DIR / f"{name}.log"


def runtime_health(timeout_s: float = 5.0) -> dict[str, str]:
    """Each component's status as the api-server reports it (metadatabase, scheduler, triggerer, dag_processor)."""
    try:
        with urllib.request.urlopen(f"{UI_URL}/api/v2/monitor/health", timeout=timeout_s) as resp:  # noqa: S310
            doc = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return {k: str((v or {}).get("status")) for k, v in doc.items() if isinstance(v, dict)}


def _run_logged(cmd: list[str], env: dict[str, str], log: Path, what: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        done = subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, check=False)
    if done.returncode != 0:
        raise StackError(f"{what} failed with exit code {done.returncode}; log {log}:\n{_tail(log)}")


def start_runtime(deadline_s: float = 240.0) -> float:
    """Start (or complete) the production-shaped runtime; return the seconds it took.

    A component already running (its pid file names a live process) is kept. A failed start stops
    what this call started, and nothing else.
    """
    t0 = time.monotonic()
    s = ProjectSettings.from_settings_file()
    running = {name: _pid_alive(component_files(name)[0]) for name in COMPONENTS}
    # refuse taken ports before starting anything
    if _pid_alive(STANDALONE_PID) is not None:
        raise StackError("`make ui` (airflow standalone on SQLite) is running on this state folder: `make down` first")
    if running["api-server"] is None and port_owner(UI_PORT) != "nothing listening now":
        raise StackError(
            f"port {UI_PORT} (the Airflow api-server) is taken by {port_owner(UI_PORT)}; "
            "stop it or start the runtime on another port with MLOPS_UI_PORT"
        )
    pg = cluster()
    pg_was_up = pg.running_pid() is not None
    if not pg_was_up and port_owner(PG_PORT) != "nothing listening now":
        raise StackError(
            f"port {PG_PORT} (PostgreSQL) is taken by {port_owner(PG_PORT)}; stop it or use another with MLOPS_PG_PORT"
        )
    _refuse_foreign_mlflow(s)
    mlflow_was_up = _own_mlflow(s) is not None

    started: list[str] = []
    try:
        pg.init()
        pg.start()
        pg.ensure_database(runtime_secrets()["db_password"])
        env = runtime_env()
        password, new_password = ui_password()
        migrate_log = RUNTIME_DIR / "migrate.log"
        _run_logged([str(VENV_BIN / "airflow"), "db", "migrate"], env, migrate_log, "airflow db migrate")
        _run_logged(
            [sys.executable, "-m", "include.mlops.airflow.apply_settings", str(settings_file())],
            env,
            migrate_log,
            f"applying {settings_file()}",
        )
        start_mlflow(s)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        for name in COMPONENTS:
            if running[name] is not None:
                continue
            pid_file, log = component_files(name)
            _keep_leftovers(name, pid_file)
            with log.open("ab") as out:
                procs[name] = subprocess.Popen(
                    [str(VENV_BIN / "airflow"), name],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own group: `down` stops it and its children by its pid
                    cwd=PROJECT_ROOT,
                )
            _record(pid_file, procs[name].pid)
            started.append(name)
        _wait_healthy(procs, t0 + deadline_s)
    except BaseException:
        for name in reversed(started):
            _stop(component_files(name)[0], name)
        if not mlflow_was_up:
            _stop(MLFLOW_PID, "mlflow server")
        if not pg_was_up:
            pg.stop()
        raise
    took = time.monotonic() - t0
    print(f"Airflow runtime up in {took:.0f} s: {', '.join(COMPONENTS)} on PostgreSQL 127.0.0.1:{PG_PORT}")
    print(f"Airflow UI: {UI_URL}  user {UI_USER}")
    if new_password:
        print(f"  password (shown once): {password}")
    print(f"  password file: {PASSWORDS_FILE} (mode 0600)")
    print(f"MLflow UI:  {s.mlflow_tracking_uri}")
    print(f"logs: {RUNTIME_DIR}/<component>.log; stop with: make down")
    return took


def _keep_leftovers(name: str, pid_file: Path) -> None:
    """A component that died (kill -9, OOM) may leave children in its process group: a LocalExecutor
    worker still running its task. They are left to finish it (the task reports through the
    api-server), and their group is recorded so that `down` stops it with the rest."""
    rec = _read_record(pid_file)
    if rec is None or rec.alive() or not _group_alive(rec.pid):
        return
    groups = _leftover_groups()
    groups[str(rec.pid)] = name
    LEFTOVERS.write_text(json.dumps(groups))
    print(f"airflow {name} (pid {rec.pid}) had died; its leftover processes (group {rec.pid}) are stopped by down")


def _leftover_groups() -> dict[str, str]:
    try:
        return dict(json.loads(LEFTOVERS.read_text()))
    except (FileNotFoundError, ValueError):
        return {}


def _wait_healthy(procs: dict[str, subprocess.Popen[bytes]], deadline: float) -> None:
    """Until the api-server answers and reports every component healthy; a component that exits fails the start."""
    want = ("metadatabase", "scheduler", "triggerer", "dag_processor")
    health: dict[str, str] = {}
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                log = component_files(name)[1]
                raise StackError(f"airflow {name} exited with code {proc.returncode}; log {log}:\n{_tail(log)}")
        health = runtime_health()
        if health and all(health.get(k) == "healthy" for k in want):
            return
        time.sleep(1.0)
    raise StackError(
        f"the Airflow runtime was not healthy within the deadline (health: {health or 'no answer'}); "
        f"logs under {RUNTIME_DIR}"
    )


def stop_runtime() -> None:
    """Stop each component by its own pid file (the scheduler first: it launches no more tasks), then the cluster."""
    for name in ("scheduler", "dag-processor", "triggerer", "api-server"):
        _stop(component_files(name)[0], f"airflow {name}")
    for pgid, name in _leftover_groups().items():
        if _group_alive(int(pgid)):
            _stop_group(int(pgid))
            print(f"stopped the leftovers of a dead airflow {name} (group {pgid})")
    LEFTOVERS.unlink(missing_ok=True)
    if cluster().stop():
        print("stopped postgresql")
