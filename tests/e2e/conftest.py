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
from pathlib import Path
from typing import Any

import pytest

from include.mlops.dag_test import DagTest, DagTestRun
from tests.conftest import ROOT, VENV_BIN

pytestmark = pytest.mark.e2e


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
    ) -> DagTestRun:
        return self.start_dags_test(dag_id, conf, env).wait(timeout_s)

    def start_dags_test(self, dag_id: str, conf: dict[str, Any], env: dict[str, str] | None = None) -> DagTest:
        """`airflow dags test` in the background (for runs a test must act on while they wait);
        ``env`` adds to (or overrides) the deployment's environment for this run only."""
        return DagTest(
            dag_id,
            conf,
            airflow_bin=VENV_BIN / "airflow",
            db_path=self.airflow_db,
            env={**self.env, **(env or {})},
            log_path=self.logs / f"{dag_id}-{len(list(self.logs.iterdir()))}.log",
            cwd=ROOT,
        )

    def asset_events(self, name: str) -> list[dict[str, Any]]:
        with sqlite3.connect(self.airflow_db) as db:
            rows = db.execute(
                "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ? ORDER BY e.id",
                (name,),
            ).fetchall()
        return [json.loads(r[0]) if r[0] else {} for r in rows]

    def write_batch(self, date: str, **kwargs: Any) -> Path:
        """The batch as if it landed an hour after its day ended, whatever today is: the suite
        checks event time against the landing time (the file's mtime)."""
        import datetime as dt

        from include.mlops.data.generate import write_batch

        path = write_batch(self.data_root / "landing", date, **kwargs)
        landed = dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC) + dt.timedelta(hours=25)
        os.utime(path, (landed.timestamp(), landed.timestamp()))
        return path


@pytest.fixture(scope="module")
def deployment(airflow_db: Path, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    # pools (and the rest of the local profile) applied the way `make settings` does it
    subprocess.run(
        [sys.executable, "-m", "include.mlops.airflow.apply_settings", str(ROOT / "airflow_settings.yaml")],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    dep = Deployment(tmp_path_factory.mktemp("deployment"), mlflow_server, airflow_db)
    yield dep
    from include.mlops.deploy.local import LocalProcessTarget

    for state in dep.serving_root.glob("*/state.json"):
        LocalProcessTarget(state.parent, sys.executable).stop_all()
