"""Retrain the fraud model: validate_data -> skip_if_identical -> route -> train -> evaluate -> register
-> publish_challenger."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, TaskGroup, dag, task

from include.mlops.airflow.training_operator import TrainingLaunchOperator
from include.mlops.assets import MODEL_CHALLENGER_READY, TRANSACTIONS_LANDING
from include.mlops.training.launch import GROUP_ID, LAUNCHES

LANDING = Asset(TRANSACTIONS_LANDING)
CHALLENGER_READY = Asset(MODEL_CHALLENGER_READY)
# Airflow reads Variables from AIRFLOW_VAR_* env vars without a DB call: the schedule can be
# changed per deployment without the dag-processor querying the metadata DB on every parse.
RETRAIN_CRON = os.environ.get("AIRFLOW_VAR_MLOPS_RETRAIN_CRON", "0 3 * * 1")

DOC = r"""
### Retrain

Runs weekly (cron from the `mlops_retrain_cron` Variable, env `AIRFLOW_VAR_MLOPS_RETRAIN_CRON`)
**and** whenever a new batch lands (Asset `transactions_landing`).

1. **validate_data**: Great Expectations suite `include/data/suites/transactions.yaml`
   (schema, nulls, ranges, categories, unique ids, row count, drift against the reference batch).
   A failure stops the run; the log names each failed expectation and links the Data Docs report.
   The batch's sha256 is pinned here: train and evaluate refuse the file if its bytes change after.
2. **skip_if_identical**: when a registered version was trained on this very batch (same fingerprint)
   with the same training code and params, the run logs `identical to vN: nothing registered` and
   skips the rest (no training, no version, no `model_challenger_ready` event). Param
   `retrain_identical` trains anyway.
3. **route**: the resource router decides where training runs (GPU node pool, Docker, this machine) and
   branches to the `train.*` task that holds the placement's Airflow pool and `pool_slots`
   (`train.local`, `train.cpu`, `train.gpu_1/2/4/8`). While nothing fits, `route` is rescheduled at the
   router's recheck time (state `up_for_reschedule`, no worker slot held) until the request's `max_wait_s`.
4. **train.local / train.cpu / train.gpu_N**: the PyTorch entrypoint `include/mlops/training/train.py` where
   the router placed it: a local process, a KubernetesPodOperator pod (Variables `mlops_training_image`,
   `mlops_data_volume_claim`) or a DockerOperator container on the local engine; checkpoints every epoch,
   a retry resumes from the last one. **trained** passes on the result of the one that ran.
5. **evaluate**: challenger and current `champion` on the same holdout rows (ONNX Runtime).
   If MLflow cannot say who the champion is (down, timeout, 5xx), the task fails and retries:
   only "no such model/alias" means there is no champion.
6. **register**: MLflow run + model version (once per Airflow run), alias `challenger`, gate decision as tags.
   The gate passes when the improvement is >= `gate_min_improvement`: with the default 0, a
   challenger that only equals the champion passes.
7. **publish_challenger**: emits Asset `model_challenger_ready` when the gate passed (skipped otherwise).
"""


@dag(
    dag_id="retrain",
    description="Validate a data batch, train, evaluate against the champion, register the challenger",
    doc_md=DOC,
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(RETRAIN_CRON, timezone="UTC"), assets=[LANDING]),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "training"],
    default_args={"owner": "mlops", "retries": 2, "retry_delay": pendulum.duration(seconds=10)},
    params={
        "batch_path": Param(
            None, type=["null", "string"], description="Parquet/CSV batch to train on; empty: the newest landed batch"
        ),
        "epochs": Param(8, type="integer", minimum=1, maximum=200, description="Training epochs"),
        "resources": Param(
            {"gpu_count": 1, "cpu_fallback": True},
            type="object",
            description="Training request for the router: gpu_count, gpu_types (preferred first), gpu_milli, "
            "cpu_millicores, memory_mib, max_wait_s, cpu_fallback (run on the local CPU when no GPU fits)",
        ),
        "gate_metric": Param("auc", enum=["auc", "f1", "accuracy", "log_loss"], description="Metric the gate compares"),
        "gate_min_improvement": Param(
            0.0, type="number", minimum=0, description="Required improvement over the champion (absolute)"
        ),
        "retrain_identical": Param(
            False,
            type="boolean",
            description="Train and register even when a version with this batch, code and params exists",
        ),
    },
)
def retrain() -> None:
    @task(retries=0)
    def validate_data(params: dict, dag_run=None, ti=None, triggering_asset_events=None) -> dict:  # type: ignore[no-untyped-def]
        from include.mlops import retraining
        from include.mlops.airflow import retrain

        batch = params.get("batch_path") or retraining.batch_from_asset_events(triggering_asset_events)
        return retraining.validate_data(retrain.settings(), retrain.identity(dag_run, ti), batch)

    @task.short_circuit
    def skip_if_identical(validation: dict, params: dict, dag_run=None, ti=None) -> bool:  # type: ignore[no-untyped-def]
        from include.mlops import retraining
        from include.mlops.airflow import retrain

        if params.get("retrain_identical"):
            return True
        same = retraining.find_identical(
            retrain.settings(), retrain.identity(dag_run, ti), validation=validation, params=params
        )
        if same is not None:
            ti.xcom_push(key="identical", value=same)
        return same is None

    @task.branch(retries=1)
    def route(params: dict, dag_run=None, ti=None, **context) -> str:  # type: ignore[no-untyped-def]
        from include.mlops.airflow import retrain

        ident = retrain.identity(dag_run, ti)
        placement = retrain.route_or_reschedule(ident, params["resources"], ti, context=context)
        ti.xcom_push(key="placement", value=placement)
        return placement["launch"]

    @task(trigger_rule="none_failed_min_one_success")
    def trained(ti=None) -> dict:  # type: ignore[no-untyped-def]
        from include.mlops import retraining

        return retraining.training_result(ti.xcom_pull(task_ids=[x.task_id for x in LAUNCHES]))

    @task
    def evaluate(validation: dict, trained: dict, dag_run=None, ti=None) -> dict:  # type: ignore[no-untyped-def]
        from include.mlops import retraining
        from include.mlops.airflow import retrain

        return retraining.evaluate(
            retrain.settings(), retrain.identity(dag_run, ti), validation=validation, trained=trained
        )

    @task
    def register(validation: dict, trained: dict, evaluation: dict, params: dict, dag_run=None, ti=None) -> dict:  # type: ignore[no-untyped-def]
        from include.mlops import retraining
        from include.mlops.airflow import retrain

        return retraining.register(
            retrain.settings(),
            retrain.identity(dag_run, ti),
            validation=validation,
            placement=ti.xcom_pull(task_ids="route", key="placement"),
            trained=trained,
            evaluation=evaluation,
            gate_metric=params["gate_metric"],
            gate_min_improvement=float(params["gate_min_improvement"]),
        )

    @task(outlets=[CHALLENGER_READY])
    def publish_challenger(registered: dict, outlet_events=None) -> dict:  # type: ignore[no-untyped-def]
        from airflow.sdk.exceptions import AirflowSkipException

        if not registered["gate"]["passed"]:
            raise AirflowSkipException(f"gate rejected v{registered['version']}: {registered['gate']['reason']}")
        outlet_events[CHALLENGER_READY].extra = {
            "model_name": registered["model_name"],
            "version": registered["version"],
        }
        return registered

    validation = validate_data()
    fresh = skip_if_identical(validation)
    branch = route()
    with TaskGroup(GROUP_ID, tooltip="one task per Airflow pool/pool_slots a placement can ask for"):
        launches = [TrainingLaunchOperator(task_id=x.name, launch=x, retries=2) for x in LAUNCHES]
    result = trained()
    fresh >> branch >> launches
    launches >> result
    evaluation = evaluate(validation, result)
    registered = register(validation, result, evaluation)
    publish_challenger(registered)


retrain()
