"""Airflow's orchestration overhead on the retrain DAG, against the same steps called directly.

Both sides run the very same step functions (include/mlops/retraining.py) on the same batch with
the same hyperparameters, against the local stack's MLflow server:
  direct:  validate -> route -> train -> evaluate -> register in a fresh plain Python process
           (timed from the first step: it pays the same library imports the tasks pay)
  airflow: `airflow dags test retrain` (real task runner, XCom, metadata DB, SDK supervisor)
Overhead per task = (Airflow's run span - the direct wall time) / number of tasks; the run span
is first task start to last task end in the metadata DB (the `airflow` CLI's own start-up, about
8 s of imports and DAG parsing, is reported apart: a deployed scheduler pays it once, not per run).
Target (issue 3): under 1 s a task on this machine.

Run: PYTHONPATH=. .venv/bin/python bench/bench_orchestration.py [--rows N] [--epochs E]
Registers versions of the model `bench-orchestration` (not the product's model) in the local MLflow.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sqlite3
import subprocess
import time
import uuid

from include.mlops import retraining, stack
from include.mlops.airflow import config, retrain
from include.mlops.dag_test import DagTest
from include.mlops.settings.project import PROJECT_ROOT, ProjectSettings

MODEL = "bench-orchestration"
TASKS = ("validate_data", "route", "train.local", "trained", "evaluate", "register", "publish_challenger")


def direct(settings: ProjectSettings, batch: str, epochs: int) -> tuple[float, float]:
    """The DAG's steps as plain calls in a fresh process (it pays the same imports a task does)."""
    out = subprocess.run(
        [str(stack.VENV_BIN / "python"), __file__, "--direct-once", batch, str(epochs)],
        cwd=PROJECT_ROOT,
        env={**stack.airflow_env(), "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    wall, training = json.loads(out.stdout.strip().splitlines()[-1])
    return float(wall), float(training)


def _direct_once(settings: ProjectSettings, batch: str, epochs: int) -> tuple[float, float]:
    """The DAG's steps as plain calls; returns (wall s, training process s)."""
    ident = retraining.RunIdentity(dag_id="bench", run_id=f"direct-{uuid.uuid4().hex[:8]}", try_number=1)
    quiet = lambda _msg: None  # noqa: E731
    t0 = time.perf_counter()
    router = config.router()
    validation = retraining.validate_data(settings, ident, batch, log=quiet)
    placement = retraining.route_training(
        ident, {"gpu_count": 1, "cpu_fallback": True}, router=router, policy=config.resource_policy(), log=quiet
    )
    trained = retraining.train(
        settings,
        ident,
        validation=validation,
        placement=placement,
        hyperparams={"epochs": epochs},
        router=router,
        launcher=retrain.launcher(settings, ident, placement=placement, router=router, context=None, log=quiet),
        log=quiet,
    )
    evaluation = retraining.evaluate(settings, ident, validation=validation, trained=trained, log=quiet)
    retraining.register(
        settings,
        ident,
        validation=validation,
        placement=placement,
        trained=trained,
        evaluation=evaluation,
        gate_metric="auc",
        gate_min_improvement=0.0,
        log=quiet,
    )
    return time.perf_counter() - t0, float(trained["duration_s"])


def _ts(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


def via_airflow(batch: str, epochs: int) -> dict[str, float]:
    env = {**stack.airflow_env(), "AIRFLOW_VAR_MLOPS_REGISTERED_MODEL": MODEL}
    db = stack.AIRFLOW_HOME / "airflow.db"
    t0 = time.perf_counter()
    run = DagTest(
        "retrain",
        # repeats train the same batch: retrain_identical keeps them from stopping at skip_if_identical
        {"batch_path": batch, "epochs": epochs, "retrain_identical": True},
        airflow_bin=stack.VENV_BIN / "airflow",
        db_path=db,
        env=env,
        log_path=stack.LOCAL_DIR / "logs" / f"bench-orchestration-{uuid.uuid4().hex[:8]}.log",
        cwd=PROJECT_ROOT,
    ).wait(timeout_s=1800)
    wall = time.perf_counter() - t0
    if run.state != "success":
        raise SystemExit(f"airflow run did not succeed ({run.state}):\n{run.log_tail(60)}")
    # tasks that ran: the branch's skipped train.* launches never reach a worker
    rows = [(t, r.start_date, r.end_date) for t, r in run.task_rows.items() if r.state == "success"]
    with sqlite3.connect(db) as c:
        (xcom,) = c.execute(
            "SELECT value FROM xcom WHERE dag_id = 'retrain' AND run_id = ? AND task_id = 'trained'"
            " AND key = 'return_value'",
            (run.run_id,),
        ).fetchone()
    value = json.loads(xcom)
    trained = json.loads(value) if isinstance(value, str) else value
    if {r[0] for r in rows} != set(TASKS):
        raise SystemExit(f"expected the tasks {TASKS} to run, got {sorted(r[0] for r in rows)}")
    starts = [_ts(r[1]) for r in rows if r[1]]
    ends = [_ts(r[2]) for r in rows if r[2]]
    return {
        "cli_wall_s": wall,
        "span_s": max(ends) - min(starts),
        "tasks_s": sum(_ts(r[2]) - _ts(r[1]) for r in rows if r[1] and r[2]),
        "n_tasks": float(len(rows)),
        "training_s": float(trained["duration_s"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--direct-once", nargs=2, metavar=("BATCH", "EPOCHS"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    settings = dataclasses.replace(ProjectSettings.from_settings_file(), registered_model=MODEL)
    if args.direct_once:
        print(json.dumps(_direct_once(settings, args.direct_once[0], int(args.direct_once[1]))))
        return
    stack.start_mlflow(settings)
    stack.init_airflow()
    from include.mlops.data.generate import write_batch

    batch = str(write_batch(settings.data_root / "bench", "2026-11-01", n_rows=args.rows, seed=5))
    print(f"batch {args.rows} rows, {args.epochs} epochs, {args.repeats} repeats per side, alternating")
    d_walls, d_train, a_runs = [], [], []
    for i in range(args.repeats):
        w, tr = direct(settings, batch, args.epochs)
        d_walls.append(w)
        d_train.append(tr)
        a = via_airflow(batch, args.epochs)
        a_runs.append(a)
        print(
            f"  repeat {i + 1}: direct {w:6.1f} s (training {tr:5.1f} s) | airflow span {a['span_s']:6.1f} s "
            f"(training {a['training_s']:5.1f} s, CLI wall {a['cli_wall_s']:5.1f} s, {int(a['n_tasks'])} tasks)"
        )
    best_d = min(d_walls)
    best = min(a_runs, key=lambda a: a["span_s"])
    n = best["n_tasks"]
    # training time varies run to run: compare the non-training parts too
    non_train_direct = min(w - t for w, t in zip(d_walls, d_train, strict=True))
    print(f"\ndirect pipeline minus training:    {non_train_direct:6.2f} s")
    non_train_airflow = best["span_s"] - best["training_s"]
    print(f"direct pipeline (best):            {best_d:6.2f} s")
    print(f"airflow run span (best):           {best['span_s']:6.2f} s  over {int(n)} tasks")
    print(f"airflow span minus training:       {non_train_airflow:6.2f} s  ({non_train_airflow / n:.2f} s a task)")
    print(f"overhead a task (span - direct):   {(best['span_s'] - best_d) / n:6.2f} s")
    print(f"overhead a task (non-training):    {(non_train_airflow - non_train_direct) / n:6.2f} s  (target < 1 s)")
    print(f"`airflow dags test` start-up+end:  {best['cli_wall_s'] - best['span_s']:6.2f} s  (once per CLI run)")
    print(f"ratio airflow span / direct:       {best['span_s'] / best_d:6.2f}x")


if __name__ == "__main__":
    main()
