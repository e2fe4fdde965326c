"""The main job on the embedded `local` profile: start the stack, land a batch, run the DAGs, summarise.

`make run` calls this. Each DAG runs with `airflow dags test` (in-process, real tasks, real
MLflow server), so no scheduler has to be running; the runs are kept in Airflow's DB.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from include.mlops import stack
from include.mlops.settings.project import PROJECT_ROOT, ProjectSettings


def _latest_run(dag_id: str) -> dict[str, Any]:
    out = subprocess.run(
        [str(stack.VENV_BIN / "airflow"), "dags", "list-runs", dag_id, "-o", "json"],
        env=stack.airflow_env(),
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT_ROOT,
    )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("[")), "[]")
    runs = json.loads(line)
    if not runs:
        raise RuntimeError(f"no run of {dag_id} found after `airflow dags test`")
    latest: dict[str, Any] = max(runs, key=lambda r: r.get("start_date") or "")
    return latest


def run_dag(dag_id: str, conf: dict[str, object]) -> tuple[int, dict[str, Any], float]:
    log_dir = stack.LOCAL_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{dag_id}-{int(time.time())}.log"
    t0 = time.monotonic()
    print(f"--> airflow dags test {dag_id} (log: {log.relative_to(PROJECT_ROOT)})", flush=True)
    with log.open("w") as out:
        proc = subprocess.run(
            [str(stack.VENV_BIN / "airflow"), "dags", "test", dag_id, "-c", json.dumps(conf)],
            env=stack.airflow_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
            check=False,
        )
    elapsed = time.monotonic() - t0
    run = _latest_run(dag_id)
    print(f"    {dag_id}: run {run.get('run_id')} {run.get('state')} in {elapsed:.0f} s", flush=True)
    if proc.returncode != 0 or run.get("state") != "success":
        tail = "\n".join(log.read_text().splitlines()[-40:])
        print(f"    last lines of {log}:\n{tail}", flush=True)
    return proc.returncode, run, elapsed


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
        batch = write_batch(settings.landing_dir, time.strftime("%Y-%m-%d"), 50_000, 7, 0.0, None)
    print(f"batch: {batch.relative_to(PROJECT_ROOT) if batch.is_relative_to(PROJECT_ROOT) else batch}", flush=True)

    rc, run, _ = run_dag("retrain", {"batch_path": str(batch)})
    summary: dict[str, object] = {"retrain_run_id": run.get("run_id"), "retrain_state": run.get("state")}
    if rc == 0 and run.get("state") == "success":
        from include.mlops.registry.mlflow_registry import MlflowRegistry

        version = MlflowRegistry(settings.mlflow_tracking_uri).find_version(
            settings.registered_model, f"retrain/{run.get('run_id')}"
        )
        if version is not None:
            summary["model"] = f"{version.name} v{version.version}"
            summary["gate"] = version.tags.get("gate.decision", "?") + ": " + version.tags.get("gate.reason", "")
    if str(summary.get("gate", "")).startswith("passed"):
        # short analysis steps for the demo; the DAG's defaults (10/25/50/100 %, 20 s) are for real releases
        conf = {
            "model_name": settings.registered_model,
            "version": "challenger",
            "steps_pct": [25, 50, 100],
            "interval_s": 8,
            "load_rps": 25,
        }
        rc2, run2, _ = run_dag("release", conf)
        summary["release_run_id"] = run2.get("run_id")
        summary["release_state"] = run2.get("state")
        from include.mlops.releasing import serving_target

        state = serving_target(settings).status()
        if state.stable is not None:
            summary["serving"] = f"v{state.stable.version} at {state.router_url}/predict (stops with `make down`)"
        rc = rc or rc2
    elif summary.get("model"):
        summary["release"] = "not started: the gate rejected the challenger"

    print("\n=== summary ===")
    for k, v in summary.items():
        print(f"{k:16} {v}")
    print(f"{'wall time':16} {time.monotonic() - t0:.0f} s")
    print(f"{'MLflow UI':16} {settings.mlflow_tracking_uri}  (running now; `make down` stops it)")
    print(f"{'Airflow UI':16} http://127.0.0.1:8080  (start it with `make ui`)")
    print(f"{'logs':16} {Path(stack.LOCAL_DIR / 'logs').relative_to(PROJECT_ROOT)}/")
    return rc


if __name__ == "__main__":
    sys.exit(main())
