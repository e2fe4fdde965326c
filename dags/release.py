"""Release a model version: check_params -> build_image -> deploy_canary -> analyse -> promote, or rollback."""

from __future__ import annotations

import datetime

import pendulum
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Asset, Param, TriggerRule, dag, task

from include.mlops.airflow.alerts import ReleaseAlertNotifier
from include.mlops.assets import MODEL_CHALLENGER_READY
from include.mlops.release_params import MAX_ANALYSIS_S, MAX_STEPS, PARAM_MAXIMA

CHALLENGER_READY = Asset(MODEL_CHALLENGER_READY)
MAX = PARAM_MAXIMA

# Hard bounds per task. execution_timeout cannot be templated from the run's params, so each is
# the worst case any valid form allows (ReleaseParams caps every param and the whole analysis at
# MAX_ANALYSIS_S) plus a margin; a hung task fails, and its run's rollback task cleans up.
# A plain timedelta, not pendulum's Duration: on Airflow 3.3 the approval parks the task in
# AWAITING_INPUT and sends this timeout to the task's supervisor over msgpack, which refuses a
# Duration (the task then fails at once under the real scheduler; `dags test` never sends it).
APPROVAL_WAIT = datetime.timedelta(hours=4)
TIMEOUTS = {
    "check_params": pendulum.duration(minutes=5),
    "build_image": pendulum.duration(minutes=30),
    # model download + readiness (<= ready_timeout_s maximum) + router start
    "deploy_canary": pendulum.duration(seconds=MAX["ready_timeout_s"] * 2 + 300),
    "analyse": pendulum.duration(seconds=MAX_ANALYSIS_S + 900),
    "needs_approval": pendulum.duration(minutes=5),
    # the phase before the human wait only; the wait itself is bounded by response_timeout
    "approve": pendulum.duration(minutes=10),
    "promote": pendulum.duration(minutes=15),  # drains the old stable (bounded by its drain timeout)
    "rollback": pendulum.duration(minutes=15),
}
# A run never outlives its tasks' bounds and the approval wait (plus retries' delays and scheduling).
DAGRUN_TIMEOUT = APPROVAL_WAIT + pendulum.duration(seconds=sum(t.total_seconds() for t in TIMEOUTS.values()) + 1800)

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
   `champion` unchanged, version tagged rejected (only when its own canary failed).

An asset-triggered run releases the model name and version in the event (what retrain gated), not
whatever `challenger` names when it starts; values set explicitly in the run's conf still win.
Each model name is served on its own (`<mlops_serving_root>/<model_name>`). A second release while
one is in progress is refused, naming it; its rollback never touches the other's canary (the
**rollback** DAG may: it is the operator's override). If the serving state file is lost while a
champion exists, the release is refused naming the file; `reset_serving_state` serves the version
as a first release (100 %, no canary) on purpose. Every param has a maximum, the whole analysis
is bounded (steps x (1 + max_extensions) x interval_s <= 2 h), every task has an execution
timeout and the run a `dagrun_timeout`.
"""


@dag(
    dag_id="release",
    description="Canary release of a registered model version with automatic rollback",
    doc_md=DOC,
    schedule=[CHALLENGER_READY],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=DAGRUN_TIMEOUT,
    tags=["mlops", "release"],
    # pool `releases` (1 slot) serialises the release's working tasks; `approve` waits outside it
    # (see below), and the rollback DAG never asks for it. Concurrent releases are refused by the
    # serving target's owner record, whatever the pools say.
    default_args={"owner": "mlops", "retries": 1, "retry_delay": pendulum.duration(seconds=5), "pool": "releases"},
    params={
        "model_name": Param("fraud-detector", type="string", minLength=1, description="Registered model name"),
        "version": Param("challenger", type="string", minLength=1, description="Version number or alias"),
        "steps_pct": Param(
            [10, 25, 50, 100],
            type="array",
            minItems=1,
            maxItems=MAX_STEPS,
            items={"type": "integer", "minimum": 1, "maximum": 100},
            description="Canary weights, strictly increasing, ending at 100 (promotion)",
        ),
        "interval_s": Param(
            20,
            type="number",
            exclusiveMinimum=0,
            maximum=MAX["interval_s"],
            description="Step interval (s)",
        ),
        "min_requests": Param(
            30,
            type="integer",
            minimum=1,
            maximum=MAX["min_requests"],
            description="Requests per side before judging a step",
        ),
        "max_extensions": Param(
            2,
            type="integer",
            minimum=0,
            maximum=MAX["max_extensions"],
            description="Extensions of a step without enough data",
        ),
        "max_error_rate": Param(0.02, type="number", minimum=0, maximum=1, description="Max canary error rate"),
        "max_p99_latency_ratio": Param(
            1.5,
            type="number",
            minimum=1,
            maximum=MAX["max_p99_latency_ratio"],
            description="Max canary/stable latency ratio (p99 or p50)",
        ),
        "max_prediction_drift": Param(
            0.3, type="number", exclusiveMinimum=0, maximum=1, description="Max KS distance of predictions"
        ),
        "ready_timeout_s": Param(
            60, type="number", exclusiveMinimum=0, maximum=MAX["ready_timeout_s"], description="Readiness deadline (s)"
        ),
        "load_rps": Param(
            20,
            type="number",
            exclusiveMinimum=0,
            maximum=MAX["load_rps"],
            description="Replayed traffic (req/s)",
        ),
        "require_approval": Param(False, type="boolean", description="Wait for a human before the last step"),
        "allow_gate_rejected": Param(False, type="boolean", description="Release a version the gate rejected"),
        "dry_run": Param(False, type="boolean", description="Validate and plan only; change nothing"),
        "reset_serving_state": Param(
            False,
            type="boolean",
            description="The serving state file was lost on purpose: serve this version as a first release "
            "(100 %, no canary). Without it, a missing state while a champion exists is refused",
        ),
    },
)
def release() -> None:
    @task(retries=0, execution_timeout=TIMEOUTS["check_params"])
    def check_params(params: dict, dag_run=None, triggering_asset_events=None) -> dict:  # type: ignore[no-untyped-def]
        from include.mlops import releasing
        from include.mlops.airflow.config import project_settings

        # an asset-triggered run releases the version its event names, not whatever `challenger` is now
        requested = releasing.requested_params(
            dict(params),
            explicit=set((dag_run.conf or {}) if dag_run else ()),
            event=releasing.release_event(triggering_asset_events),
        )
        run = {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id} if dag_run else None
        return releasing.plan_release(project_settings(), requested, run=run)

    @task(pool="image_builds", execution_timeout=TIMEOUTS["build_image"])
    def build_image(plan: dict) -> dict:
        from airflow.sdk.exceptions import AirflowSkipException

        from include.mlops import releasing
        from include.mlops.airflow.config import project_settings

        built = releasing.build_image(project_settings(), plan)
        if "skipped" in built:
            raise AirflowSkipException(built["skipped"])
        return built

    @task(trigger_rule=TriggerRule.NONE_FAILED, execution_timeout=TIMEOUTS["deploy_canary"])
    def deploy_canary(plan: dict, image: dict | None) -> dict:
        from include.mlops import releasing
        from include.mlops.airflow.config import project_settings

        return releasing.deploy_canary(project_settings(), plan, image)

    @task(retries=0, execution_timeout=TIMEOUTS["analyse"])
    def analyse(plan: dict, deployed: dict) -> dict:
        from include.mlops import releasing
        from include.mlops.airflow.config import project_settings

        return releasing.analyse(project_settings(), plan, deployed)

    @task.branch(execution_timeout=TIMEOUTS["needs_approval"])
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
        response_timeout=APPROVAL_WAIT,
        execution_timeout=TIMEOUTS["approve"],
        retries=0,  # a rejection is an answer: retrying would ask the approver again
        # Waiting for a human holds no slot a rollback needs: `releases` counts deferred tasks, so a
        # release waiting here (up to 4 h) would block every other user of that pool, the rollback
        # DAG included. default_pool does not count deferred tasks.
        pool="default_pool",
    )

    @task(trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS, execution_timeout=TIMEOUTS["promote"])
    def promote(plan: dict) -> dict:
        from include.mlops import releasing
        from include.mlops.airflow.config import project_settings

        return releasing.promote(project_settings(), plan)

    # the rollback task fails exactly when a release did not happen: one alert per failed release
    @task(
        trigger_rule=TriggerRule.ONE_FAILED,
        retries=3,
        execution_timeout=TIMEOUTS["rollback"],
        on_failure_callback=ReleaseAlertNotifier(),
    )
    def rollback(ti=None) -> None:  # type: ignore[no-untyped-def]
        from airflow.sdk.exceptions import AirflowFailException

        from include.mlops import releasing
        from include.mlops.airflow.config import project_settings

        plan = ti.xcom_pull(task_ids="check_params")
        if plan is None:  # fail (not skip): a skipped leaf would mark the run successful
            raise AirflowFailException("release refused at check_params: nothing was built or deployed")
        done = releasing.rollback_release(project_settings(), plan)
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
