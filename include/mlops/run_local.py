"""The main job on the embedded `local` profile: start the stack, land a batch, run the DAGs, summarise.

`make run` calls this. Each DAG runs with `airflow dags test` (in-process, real tasks, real
MLflow server), so no scheduler has to be running; the runs are kept in Airflow's DB.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from typing import Any

from include.mlops import stack
from include.mlops.dag_test import DagTest, DagTestRun
from include.mlops.settings.project import PROJECT_ROOT, ProjectSettings


def run_dag(dag_id: str, conf: dict[str, object]) -> tuple[int, DagTestRun | None, float]:
    """`airflow dags test` in a child process; (exit code, the run read back from the DB, seconds)."""
    log = stack.LOCAL_DIR / "logs" / f"{dag_id}-{int(time.time())}.log"
    t0 = time.monotonic()
    print(f"--> airflow dags test {dag_id} (log: {log})", flush=True)
    running = DagTest(
        dag_id,
        conf,
        airflow_bin=stack.VENV_BIN / "airflow",
        db_path=stack.AIRFLOW_HOME / "airflow.db",
        env=stack.airflow_env(),
        log_path=log,
        cwd=PROJECT_ROOT,
    )
    try:
        run: DagTestRun | None = running.wait(timeout_s=3600)
    except RuntimeError as exc:  # no run was created (the DAG failed to load, bad conf, ...)
        print(f"    {dag_id}: {exc}", flush=True)
        return running.proc.returncode or 1, None, time.monotonic() - t0
    elapsed = time.monotonic() - t0
    assert run is not None
    print(f"    {dag_id}: run {run.run_id} {run.state} in {elapsed:.0f} s", flush=True)
    if run.returncode != 0 or run.state != "success":
        print(f"    last lines of {log}:\n{run.log_tail(40)}", flush=True)
    return run.returncode, run, elapsed


def _xcom(run: DagTestRun, task_id: str, key: str) -> Any:
    """A task's XCom value as the run recorded it in the local metadata DB (None if absent)."""
    with sqlite3.connect(stack.AIRFLOW_HOME / "airflow.db") as db:
        row = db.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = ?",
            (run.dag_id, run.run_id, task_id, key),
        ).fetchone()
    if row is None:
        return None
    value = row[0]
    return json.loads(value) if isinstance(value, str | bytes) else value


def main() -> int:
    t0 = time.monotonic()
    settings = ProjectSettings.from_settings_file()
    print(f"profile: {settings.profile}; MLflow: {stack.start_mlflow(settings)}", flush=True)
    stack.init_airflow()

    from include.mlops.data.batches import latest_batch
    from include.mlops.data.generate import write_batch
    from include.mlops.errors import BatchReadError

    try:
        batch = latest_batch(settings.landing_dir)
    except BatchReadError:
        # yesterday's complete day: today's would hold events later than its landing time
        yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86_400))
        batch = write_batch(settings.landing_dir, yesterday, 50_000, seed=7, drift=0.0, corruption=None)
    print(f"batch: {batch.relative_to(PROJECT_ROOT) if batch.is_relative_to(PROJECT_ROOT) else batch}", flush=True)

    rc, run, _ = run_dag("retrain", {"batch_path": str(batch)})
    summary: dict[str, object] = {
        "retrain_run_id": run.run_id if run else None,
        "retrain_state": run.state if run else "not started",
    }
    if run is not None and rc == 0 and run.state == "success":
        from include.mlops.registry.mlflow_registry import MlflowRegistry

        registry = MlflowRegistry(settings.mlflow_tracking_uri)
        version = registry.find_version(settings.registered_model, f"retrain/{run.run_id}")
        identical = _xcom(run, "skip_if_identical", "identical")
        if version is None and identical:
            # same batch, code and params as a registered version: the run registered nothing
            version = registry.get_version(settings.registered_model, str(identical["version"]))
            summary["identical"] = f"v{version.version} was trained on this batch with this code: nothing registered"
        if version is not None:
            summary["model"] = f"{version.name} v{version.version}"
            summary["version"] = version.version
            summary["gate"] = version.tags.get("gate.decision", "?") + ": " + version.tags.get("gate.reason", "")
    if str(summary.get("gate", "")).startswith("passed"):
        # short analysis steps for the demo; the DAG's defaults (10/25/50/100 %, 20 s) are for real releases
        conf = {
            "model_name": settings.registered_model,
            "version": str(summary["version"]),
            "steps_pct": [25, 50, 100],
            "interval_s": 8,
            "load_rps": 25,
        }
        rc2, run2, _ = run_dag("release", conf)
        summary["release_run_id"] = run2.run_id if run2 else None
        summary["release_state"] = run2.state if run2 else "not started"
        from include.mlops.deploy.factory import serving_target
        from include.mlops.deploy.local import LocalProcessTarget

        target = serving_target(settings)
        state = target.status()
        if state.stable is not None:
            summary["serving"] = f"v{state.stable.version} at {state.router_url}/predict (stops with `make down`)"
        if state.stable is not None and isinstance(target, LocalProcessTarget):
            from include.mlops.deploy import supervisor

            # restarts a crashed stable or router until `make down` (the DAGs are not running now)
            pid = supervisor.start_detached(target.state_dir)
            summary["supervisor"] = f"pid {pid}, log {target.state_dir / supervisor.LOG_FILE}"
        rc = rc or rc2
    elif summary.get("model"):
        summary["release"] = "not started: the gate rejected the challenger"

    print("\n=== summary ===")
    for k, v in summary.items():
        print(f"{k:16} {v}")
    print(f"{'wall time':16} {time.monotonic() - t0:.0f} s")
    print(f"{'MLflow UI':16} {settings.mlflow_tracking_uri}  (running now; `make down` stops it)")
    print(f"{'Airflow UI':16} {stack.UI_URL}  (start it with `make ui`)")
    logs = stack.LOCAL_DIR / "logs"
    print(f"{'logs':16} {logs.relative_to(PROJECT_ROOT) if logs.is_relative_to(PROJECT_ROOT) else logs}/")
    return rc


if __name__ == "__main__":
    sys.exit(main())
