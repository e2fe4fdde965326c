"""Release a model version: check_params -> build_image -> deploy_canary -> analyse -> promote, or rollback."""

from __future__ import annotations

import pendulum
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Asset, Param, TriggerRule, dag, task

from include.mlops.assets import MODEL_CHALLENGER_READY

CHALLENGER_READY = Asset(MODEL_CHALLENGER_READY)

DOC = """
### Release

Triggered by hand (**Trigger DAG** shows the form) or by the Asset `model_challenger_ready`
that **retrain** emits when its gate passes. Only one release runs at a time.

1. **check_params**: validates the form and resolves the version (alias or number) in MLflow.
   Bad params fail here, naming the param; nothing is built or deployed. Releasing the version
   that already serves as stable changes nothing.
2. **build_image**: serving image (ONNX Runtime + FastAPI) built on the Docker engine, pushed to the
   registry of `docker_default`, digest recorded on the model version. No engine: skipped, with the reason.
3. **deploy_canary**: the canary starts beside the stable with 0 % of traffic and must be ready
   within `ready_timeout_s` (else it is removed and the release fails).
4. **analyse**: for each step below 100 %, sets the canary's weight, replays holdout traffic and compares
   canary and stable (error rate: proportion/Fisher test; latency: Mann-Whitney U; predictions: KS).
   A failing step rolls back at once. Numbers, verdicts and a plot go to the version's MLflow run.
5. **approve** (only with `require_approval`): a human approves the last step in the UI.
6. **promote**: the canary becomes the stable at 100 %, the old stable drains and stops, `champion` moves.
7. **rollback** (only when something failed): stable back to 100 %, canary drained and removed,
   `champion` unchanged, version tagged rejected.
"""


@dag(
    dag_id="release",
    description="Canary release of a registered model version with automatic rollback",
    doc_md=DOC,
    schedule=[CHALLENGER_READY],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "release"],
    default_args={"owner": "mlops", "retries": 1, "retry_delay": pendulum.duration(seconds=5), "pool": "releases"},
    params={
        "model_name": Param("fraud-detector", type="string", minLength=1, description="Registered model name"),
        "version": Param("challenger", type="string", minLength=1, description="Version number or alias"),
        "steps_pct": Param(
            [10, 25, 50, 100],
            type="array",
            items={"type": "integer", "minimum": 1, "maximum": 100},
            description="Canary weights, strictly increasing, ending at 100 (promotion)",
        ),
        "interval_s": Param(20, type="number", exclusiveMinimum=0, description="Analysis interval per step (s)"),
        "min_requests": Param(30, type="integer", minimum=1, description="Requests per side before judging a step"),
        "max_extensions": Param(2, type="integer", minimum=0, description="Extensions of a step without enough data"),
        "max_error_rate": Param(0.02, type="number", minimum=0, maximum=1, description="Max canary error rate"),
        "max_p99_latency_ratio": Param(
            1.5, type="number", minimum=1, description="Max canary/stable latency ratio (p99 or p50)"
        ),
        "max_prediction_drift": Param(
            0.3, type="number", exclusiveMinimum=0, maximum=1, description="Max KS distance of predictions"
        ),
        "ready_timeout_s": Param(60, type="number", exclusiveMinimum=0, description="Readiness deadline (s)"),
        "load_rps": Param(20, type="number", exclusiveMinimum=0, description="Replayed holdout traffic (req/s)"),
        "require_approval": Param(False, type="boolean", description="Wait for a human before the last step"),
        "allow_gate_rejected": Param(False, type="boolean", description="Release a version the gate rejected"),
        "dry_run": Param(False, type="boolean", description="Validate and plan only; change nothing"),
    },
)
def release() -> None:
    @task(retries=0)
    def check_params(params: dict) -> dict:
        from include.mlops import releasing
        from include.mlops.settings.project import ProjectSettings

        return releasing.plan_release(ProjectSettings.from_airflow(), dict(params))

    @task(pool="image_builds")
    def build_image(plan: dict) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from include.mlops import releasing
        from include.mlops.settings.project import ProjectSettings

        built = releasing.build_image(ProjectSettings.from_airflow(), plan)
        if "skipped" in built:
            raise AirflowSkipException(built["skipped"])
        return built

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def deploy_canary(plan: dict, image: dict | None) -> dict:
        from include.mlops import releasing
        from include.mlops.settings.project import ProjectSettings

        return releasing.deploy_canary(ProjectSettings.from_airflow(), plan, image)

    @task(retries=0)
    def analyse(plan: dict, deployed: dict) -> dict:
        from include.mlops import releasing
        from include.mlops.settings.project import ProjectSettings

        return releasing.analyse(ProjectSettings.from_airflow(), plan, deployed)

    @task.branch
    def needs_approval(plan: dict, analysis: dict) -> str:
        return "approve" if plan["params"]["require_approval"] and not analysis.get("skipped") else "promote"

    approve = ApprovalOperator(
        task_id="approve",
        subject="Promote {{ ti.xcom_pull(task_ids='check_params')['model_name'] }} "
        "v{{ ti.xcom_pull(task_ids='check_params')['version'] }} to 100 %?",
        body="Canary analysis so far ({{ ti.xcom_pull(task_ids='analyse')['reason'] }}):\n\n"
        "{% for line in ti.xcom_pull(task_ids='analyse').get('steps', []) %}- {{ line }}\n{% endfor %}\n"
        "Approve promotes the canary to 100 % and makes it champion; Reject rolls it back.",
        fail_on_reject=True,
        response_timeout=pendulum.duration(hours=4),
        retries=0,  # a rejection is an answer: retrying would ask the approver again
    )

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    def promote(plan: dict) -> dict:
        from include.mlops import releasing
        from include.mlops.settings.project import ProjectSettings

        return releasing.promote(ProjectSettings.from_airflow(), plan)

    @task(trigger_rule=TriggerRule.ONE_FAILED, retries=3)
    def rollback(ti=None) -> None:  # type: ignore[no-untyped-def]
        from airflow.sdk.exceptions import AirflowFailException

        from include.mlops import releasing
        from include.mlops.settings.project import ProjectSettings

        plan = ti.xcom_pull(task_ids="check_params")
        if plan is None:  # fail (not skip): a skipped leaf would mark the run successful
            raise AirflowFailException("release refused at check_params: nothing was built or deployed")
        done = releasing.rollback_release(ProjectSettings.from_airflow(), plan)
        # the run must end failed: the release did not happen, whatever the rollback achieved
        raise AirflowFailException(f"release of v{plan['version']} failed; serving stays on v{done['stable']}")

    plan = check_params()
    image = build_image(plan)
    deployed = deploy_canary(plan, image)
    analysis = analyse(plan, deployed)
    branch = needs_approval(plan, analysis)
    promoted = promote(plan)
    branch >> [approve, promoted]
    approve >> promoted
    [deployed, analysis, approve, promoted] >> rollback()


release()
