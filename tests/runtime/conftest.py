"""The real Airflow runtime for the `runtime` group: started once with the project's own command.

`python -m include.mlops.stack up` (what `make up` runs) from a shell with nothing activated, in
a throwaway state folder (MLOPS_LOCAL_DIR), settings file (MLOPS_SETTINGS_FILE: its own MLflow
port, data, serving and router folders, a throwaway model name) and ports. PostgreSQL, the
api-server, scheduler, dag-processor and triggerer, and MLflow are real processes; every run is
started through the REST API, as the UI's Trigger button does it, and read back through it.
`stack down` stops it all at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, free_port

PYTHON = str(Path(sys.executable))
TERMINAL = {"success", "failed"}


class ApiError(AssertionError):
    pass


@dataclass
class Runtime:
    base: Path
    env: dict[str, str]
    ui_url: str
    mlflow_uri: str
    pg_port: int
    model_name: str
    serving_root: Path
    data_root: Path
    up_output: str
    startup_s: float
    password: str
    _token: str | None = field(default=None, repr=False)

    # --- the REST API, with the generated password ------------------------------------------------

    def token(self) -> str:
        if self._token is None:
            doc = self.request("POST", "/auth/token", {"username": "admin", "password": self.password}, auth=False)
            self._token = str(doc["access_token"])
        return self._token

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.ui_url}{path}", data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(f"{method} {path} -> {exc.code}: {exc.read()[:1000]!r}") from exc
        return json.loads(raw) if raw else None

    def unpause(self, *dag_ids: str) -> None:
        for dag_id in dag_ids:
            assert self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})["is_paused"] is False

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
        """What the UI's Trigger form posts: no logical date, the form's values as conf."""
        return dict(self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf}))

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=run_after&limit=100")["dag_runs"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"))

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        q = urllib.parse.quote(run_id, safe="")
        doc = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{q}/taskInstances?limit=100")
        return {ti["task_id"]: ti for ti in doc["task_instances"]}

    def wait_run(self, dag_id: str, run_id: str, timeout_s: float, states: set[str] = TERMINAL) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in states:
                return run
            if time.monotonic() > deadline:
                where = self.where(dag_id, run_id)
                raise AssertionError(f"{dag_id} {run_id} still {run['state']} after {timeout_s:.0f} s: {where}")
            time.sleep(1.0)

    def wait_task(self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            ti = self.tasks(dag_id, run_id).get(task_id) or {}
            if ti.get("state") in states:
                return ti
            run = self.run(dag_id, run_id)
            if run["state"] in TERMINAL or time.monotonic() > deadline:
                raise AssertionError(
                    f"{dag_id}.{task_id} never reached {states} (run {run['state']}): {self.where(dag_id, run_id)}"
                )
            time.sleep(1.0)

    def wait_new_run(self, dag_id: str, known: set[str], timeout_s: float, run_type: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            new = [r for r in self.runs(dag_id) if r["dag_run_id"] not in known and r["run_type"] == run_type]
            if new:
                return new[0]
            time.sleep(1.0)
        raise AssertionError(f"no new {dag_id} run within {timeout_s:.0f} s (runs: {self.runs(dag_id)})")

    def where(self, dag_id: str, run_id: str) -> str:
        return ", ".join(f"{t}={ti['state']}" for t, ti in self.tasks(dag_id, run_id).items())

    # --- serving and the registry, read from their own stores --------------------------------------

    def serving_state(self) -> dict[str, Any]:
        return dict(json.loads((self.serving_root / self.model_name / "state.json").read_text()))

    def champion(self) -> str | None:
        from include.mlops.registry.mlflow_registry import CHAMPION, MlflowRegistry

        ref = MlflowRegistry(self.mlflow_uri).get_alias(self.model_name, CHAMPION)
        return None if ref is None else ref.version


def _settings(base: Path, mlflow_port: int, model_name: str) -> Path:
    settings = yaml.safe_load((ROOT / "airflow_settings.yaml").read_text())
    for conn in settings["airflow"]["connections"]:
        if conn["conn_id"] == "mlflow_default":
            conn["conn_port"] = mlflow_port
            conn["conn_extra"] = {
                "artifact_root": str(base / "mlflow/artifacts"),
                "backend_store": str(base / "mlflow/mlflow.db"),
            }
    values = {
        "mlops_data_root": str(base / "data"),
        "mlops_serving_root": str(base / "serving"),
        "mlops_registered_model": model_name,
        "router_book_path": str(base / "router/book.sqlite"),
    }
    for var in settings["airflow"]["variables"]:
        var["variable_value"] = values.get(var["variable_name"], var["variable_value"])
    path = base / "airflow_settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def stack(env: dict[str, str], *args: str, timeout_s: float = 420) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "include.mlops.stack", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip


@pytest.fixture(scope="package")
def runtime(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        why = "no PostgreSQL server under /usr/lib/postgresql (`make services` installs it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {why}; the runtime group must run in CI")
        pytest.skip(why)
    # not under pytest's tmp_path: its folders are 0700, and the cluster runs as the `postgres` user
    base = Path(tempfile.mkdtemp(prefix="mlops-runtime-", dir="/tmp"))
    base.chmod(0o755)
    mlflow_port, ui_port, pg_port = free_port(), free_port(), free_port()
    model_name = f"rt-{uuid.uuid4().hex[:8]}"
    settings = _settings(base, mlflow_port, model_name)
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHONPATH", "VIRTUAL_ENV"))}
    env = {
        **keep,
        "PATH": "/usr/local/bin:/usr/bin:/bin",  # a fresh shell: nothing activated
        "MLOPS_SETTINGS_FILE": str(settings),
        "MLOPS_LOCAL_DIR": str(base / "local"),
        "MLOPS_UI_PORT": str(ui_port),
        "MLOPS_PG_PORT": str(pg_port),
        # no Docker engine for this deployment: the local profile serves the exported model directly
        "AIRFLOW_CONN_DOCKER_DEFAULT": json.dumps({"conn_type": "docker", "host": "unix:///nonexistent.sock"}),
        # a small machine: fewer parallel task processes than Airflow's default 32
        "AIRFLOW__CORE__PARALLELISM": "8",
    }
    t0 = time.monotonic()
    up = stack(env, "up")
    startup_s = time.monotonic() - t0
    try:
        assert up.returncode == 0, f"stack up failed:\n{up.stdout[-3000:]}\n{up.stderr[-5000:]}"
        password = json.loads((base / "local/runtime/ui-passwords.json").read_text())["admin"]
        print(f"\nruntime up in {startup_s:.1f} s (state folder {base})")
        yield Runtime(
            base=base,
            env=env,
            ui_url=f"http://127.0.0.1:{ui_port}",
            mlflow_uri=f"http://127.0.0.1:{mlflow_port}",
            pg_port=pg_port,
            model_name=model_name,
            serving_root=base / "serving",
            data_root=base / "data",
            up_output=up.stdout,
            startup_s=startup_s,
            password=password,
        )
    finally:
        down = stack(env, "down", timeout_s=300)
        print(down.stdout[-2000:], down.stderr[-2000:])
        if down.returncode == 0 and request.session.testsfailed == 0:  # else its logs tell what happened
            shutil.rmtree(base, ignore_errors=True)
