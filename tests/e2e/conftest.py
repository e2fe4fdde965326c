"""Run the real DAGs with `airflow dags test` against a real MLflow server, in throwaway folders.

Each run is a separate `airflow` process (as `make run` does it), configured the way a deployment
configures the project: Connections and Variables through Airflow's environment-variable backend,
pools applied from airflow_settings.yaml into the test metadata DB. Results are read back from
the metadata DB (run and task states) and from MLflow.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, VENV_BIN

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class DagRunResult:
    dag_id: str
    run_id: str
    state: str
    tasks: dict[str, str]  # task_id -> state
    log: str
    returncode: int
    pools: dict[str, tuple[str, int]] = field(default_factory=dict)  # task_id -> (pool, pool_slots)
    reschedules: dict[str, int] = field(default_factory=dict)  # task_id -> times it was rescheduled

    def explain(self) -> str:
        return f"{self.dag_id} {self.run_id} {self.state} {self.tasks}\n--- log tail ---\n{self.log[-6000:]}"


class Deployment:
    """One isolated deployment of the project: its own data, serving and router folders and model name."""

    def __init__(self, base: Path, mlflow_uri: str, airflow_home: Path) -> None:
        self.base = base
        self.mlflow_uri = mlflow_uri
        self.airflow_db = airflow_home / "airflow.db"
        self.model_name = f"e2e-{uuid.uuid4().hex[:8]}"
        self.data_root = base / "data"
        self.serving_root = base / "serving"
        self.logs = base / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        port = mlflow_uri.rsplit(":", 1)[1]
        self.env = {
            **os.environ,
            "AIRFLOW_CONN_MLFLOW_DEFAULT": json.dumps(
                {"conn_type": "http", "host": "127.0.0.1", "port": int(port), "schema": "http"}
            ),
            "AIRFLOW_VAR_MLOPS_PROFILE": "local",
            "AIRFLOW_VAR_MLOPS_DATA_ROOT": str(self.data_root),
            "AIRFLOW_VAR_MLOPS_SERVING_ROOT": str(self.serving_root),
            "AIRFLOW_VAR_MLOPS_REGISTERED_MODEL": self.model_name,
            "AIRFLOW_VAR_ROUTER_CAPACITY_SOURCE": "local",
            "AIRFLOW_VAR_ROUTER_BOOK_PATH": str(base / "router" / "book.sqlite"),
            # no docker connection: the local profile serves the exported model directly
            "AIRFLOW_CONN_DOCKER_DEFAULT": json.dumps({"conn_type": "docker", "host": "unix:///nonexistent.sock"}),
        }

    def dags_test(
        self, dag_id: str, conf: dict[str, Any], timeout_s: float = 420, env: dict[str, str] | None = None
    ) -> DagRunResult:
        return self.start_dags_test(dag_id, conf, env).wait(timeout_s)

    def start_dags_test(self, dag_id: str, conf: dict[str, Any], env: dict[str, str] | None = None) -> RunningDagTest:
        """`airflow dags test` in the background (for runs a test must act on while they wait);
        ``env`` adds to (or overrides) the deployment's environment for this run only."""
        before = set(self._run_ids(dag_id))
        log_path = self.logs / f"{dag_id}-{len(list(self.logs.iterdir()))}.log"
        with log_path.open("w") as out:
            proc = subprocess.Popen(
                [str(VENV_BIN / "airflow"), "dags", "test", dag_id, "-c", json.dumps(conf)],
                env={**self.env, **(env or {})},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return RunningDagTest(self, dag_id, proc, log_path, before)

    def new_run_ids(self, dag_id: str, before: set[str]) -> list[str]:
        return [r for r in self._run_ids(dag_id) if r not in before]

    def _run_ids(self, dag_id: str) -> list[str]:
        with sqlite3.connect(self.airflow_db) as db:
            return [r[0] for r in db.execute("SELECT run_id FROM dag_run WHERE dag_id = ?", (dag_id,))]

    def asset_events(self, name: str) -> list[dict[str, Any]]:
        with sqlite3.connect(self.airflow_db) as db:
            rows = db.execute(
                "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ? ORDER BY e.id",
                (name,),
            ).fetchall()
        return [json.loads(r[0]) if r[0] else {} for r in rows]

    def write_batch(self, date: str, **kwargs: Any) -> Path:
        from include.mlops.data.generate import write_batch

        return write_batch(self.data_root / "landing", date, **kwargs)


class RunningDagTest:
    def __init__(
        self, dep: Deployment, dag_id: str, proc: subprocess.Popen[bytes], log_path: Path, before: set[str]
    ) -> None:
        self.dep, self.dag_id, self.proc, self.log_path, self.before = dep, dag_id, proc, log_path, before

    @property
    def run_id(self) -> str | None:
        new = self.dep.new_run_ids(self.dag_id, self.before)
        return new[0] if len(new) == 1 else None

    def wait(self, timeout_s: float = 420) -> DagRunResult:
        try:
            self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        new = self.dep.new_run_ids(self.dag_id, self.before)
        assert len(new) == 1, f"expected one new {self.dag_id} run, found {new}:\n" + self.log_path.read_text()[-4000:]
        run_id = new[0]
        with sqlite3.connect(self.dep.airflow_db) as db:
            (state,) = db.execute(
                "SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", (self.dag_id, run_id)
            ).fetchone()
            rows = db.execute(
                "SELECT task_id, state, pool, pool_slots FROM task_instance WHERE dag_id = ? AND run_id = ?",
                (self.dag_id, run_id),
            ).fetchall()
            reschedules = dict(
                db.execute(
                    "SELECT ti.task_id, count(*) FROM task_reschedule tr JOIN task_instance ti ON tr.ti_id = ti.id "
                    "WHERE ti.dag_id = ? AND ti.run_id = ? GROUP BY ti.task_id",
                    (self.dag_id, run_id),
                ).fetchall()
            )
        log = self.log_path.read_text(errors="replace")
        tasks = {t: st for t, st, _, _ in rows}
        pools = {t: (pool, int(slots)) for t, _, pool, slots in rows}
        return DagRunResult(self.dag_id, run_id, state, tasks, log, self.proc.returncode, pools, reschedules)


@pytest.fixture(scope="module")
def deployment(airflow_db: Path, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # pools (and the rest of the local profile) applied the way `make settings` does it
    subprocess.run(
        [sys.executable, "-m", "include.mlops.settings.apply", str(ROOT / "airflow_settings.yaml")],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    dep = Deployment(tmp_path_factory.mktemp("deployment"), mlflow_server, airflow_db)
    yield dep
    from include.mlops.deploy.local import LocalProcessTarget

    for state in dep.serving_root.glob("*/state.json"):
        LocalProcessTarget(state.parent, sys.executable).stop_all()
