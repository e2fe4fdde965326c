"""The shapes of the release history: Airflow's facts about a release run, MLflow's facts about the
version it released, and the record both make together (what the API returns and the page shows).

``assemble`` is the only place the two sources meet; ``outcome_of`` decides a run's outcome from
Airflow's task states alone, so filtering by outcome never needs MLflow.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

# outcomes a release run ends in (or is in); the API's `outcome` filter accepts exactly these
OUTCOMES = ("promoted", "rolled-back", "failed", "refused", "no-op", "dry-run", "awaiting-approval", "running")


@dataclass(frozen=True)
class TaskFacts:
    state: str | None
    start: dt.datetime | None
    end: dt.datetime | None
    duration_s: float | None
    try_number: int = 0


@dataclass(frozen=True)
class ApprovalFacts:
    """The human answer to the release's approval request (Airflow's HITL detail)."""

    requested_at: dt.datetime | None
    responded_at: dt.datetime | None
    responded_by: str | None
    chosen: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReleaseRunFacts:
    """What Airflow knows about one run of the release DAG (read by the plugin, passed in here)."""

    dag_id: str
    run_id: str
    state: str
    run_type: str
    triggered_by: str | None
    triggering_user: str | None
    queued_at: dt.datetime | None
    start: dt.datetime | None
    end: dt.datetime | None
    conf: dict[str, Any]
    plan: dict[str, Any] | None  # check_params' return value; None when check_params refused the run
    tasks: dict[str, TaskFacts]
    approval: ApprovalFacts | None = None
    # the asset events that triggered the run: "<dag_id>/<run_id>" of each producing run
    triggering_runs: tuple[str, ...] = ()

    @property
    def model_name(self) -> str | None:
        if self.plan:
            return str(self.plan["model_name"])
        name = self.conf.get("model_name")
        return str(name) if name else None

    @property
    def version(self) -> str | None:
        if self.plan:
            return str(self.plan["version"])
        v = self.conf.get("version")
        return str(v) if v else None


@dataclass(frozen=True)
class VersionFacts:
    """What MLflow knows about a model version and the training run that made it."""

    name: str
    version: str
    tags: dict[str, str]
    run_id: str | None
    experiment_id: str | None
    created_at: dt.datetime | None
    training_start: dt.datetime | None
    training_end: dt.datetime | None
    canary_steps: tuple[dict[str, Any], ...] = ()  # from the run's canary/analysis.json artifact
    has_plot: bool = False


@dataclass(frozen=True)
class Links:
    airflow_run: str
    logs: str
    mlflow_version: str | None
    mlflow_run: str | None
    training_airflow_run: str | None
    canary_plot: str | None
    validation_report: str | None


@dataclass(frozen=True)
class ReleaseRecord:
    """One release's story: what was released, what it was made from, what happened and why."""

    run_id: str
    model_name: str | None
    version: str | None
    outcome: str
    verdict: str | None
    reason: str
    first_release: bool
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    duration_s: float | None
    task_durations_s: dict[str, float]
    approval_wait_s: float | None
    canary_duration_s: float | None
    triggered_by: str
    approved_by: str | None
    training_run_id: str | None
    training_airflow_run: str | None
    data_batch: str | None
    data_rows: str | None
    data_fingerprint: str | None
    validation: str | None
    placement: str | None
    placement_summary: str | None
    training_device: str | None
    gate: str | None
    image_digest: str | None
    image_reference: str | None
    canary_steps: tuple[dict[str, Any], ...]
    links: Links
    facts_missing: tuple[str, ...] = field(default=())  # what could not be read, and why

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 UTC (the page shows them in the UI's timezone)."""
        out = asdict(self)
        for key in ("started_at", "ended_at"):
            value = getattr(self, key)
            out[key] = value.astimezone(dt.UTC).isoformat() if value else None
        return out


def _ran(task: TaskFacts | None) -> bool:
    return task is not None and task.start is not None and task.state not in (None, "skipped", "upstream_failed")


def outcome_of(run: ReleaseRunFacts) -> str:
    """The run's outcome from its task states (Airflow's facts only)."""
    tasks = run.tasks
    approve = tasks.get("approve")
    if run.state in ("queued", "running"):
        if approve is not None and approve.state in ("deferred", "awaiting_input"):
            return "awaiting-approval"
        return "running"
    if run.plan is None:
        return "refused" if run.state == "failed" else "running"
    if run.plan.get("dry_run"):
        return "dry-run"
    if run.plan.get("noop"):
        return "no-op"
    promote = tasks.get("promote")
    if promote is not None and promote.state == "success":
        return "promoted"
    if _ran(tasks.get("rollback")):
        return "rolled-back"
    return "failed"


def _failed_task(run: ReleaseRunFacts) -> str | None:
    order = ["check_params", "build_image", "deploy_canary", "analyse", "needs_approval", "approve", "promote"]
    for task_id in order:
        t = run.tasks.get(task_id)
        if t is not None and t.state == "failed":
            return task_id
    return None


def _reason(run: ReleaseRunFacts, outcome: str, tags: dict[str, str]) -> tuple[str | None, str]:
    """(verdict, reason): the canary's own words where it judged, else what Airflow shows."""
    approval = run.approval
    rejected = approval is not None and approval.responded_at is not None and "Approve" not in approval.chosen
    if outcome == "promoted":
        if run.plan and run.plan.get("first_release"):
            return "first release", "no stable to compare with: served at 100 % without a canary"
        who = f"; approved by {approval.responded_by}" if approval and approval.responded_by else ""
        return tags.get("canary.verdict", "passed"), (tags.get("canary.reason") or "canary within thresholds") + who
    if outcome == "rolled-back":
        if rejected and approval is not None:
            return "rejected", f"approval rejected by {approval.responded_by or 'unknown'}; canary rolled back"
        if tags.get("canary.verdict") == "failed" and tags.get("canary.reason"):
            return "failed", tags["canary.reason"]
        failed = _failed_task(run)
        if tags.get("release.status") == "rejected" and tags.get("release.reason"):
            return "failed", tags["release.reason"]
        return "failed", f"task {failed or 'unknown'} failed; canary rolled back (see its log)"
    if outcome == "refused":
        return "refused", "check_params refused the params (see its log): nothing was built or deployed"
    if outcome == "failed":
        return "failed", f"task {_failed_task(run) or 'unknown'} failed (see its log)"
    if outcome == "no-op":
        return None, "this version already serves as stable: nothing changed"
    if outcome == "dry-run":
        return None, "dry run: validated and planned only"
    if outcome == "awaiting-approval":
        return None, "the canary passed its analysis so far; waiting for an approver"
    return None, "in progress"


def _trigger(run: ReleaseRunFacts) -> str:
    how = run.triggered_by or run.run_type
    if run.triggering_runs:
        return f"{how}: {', '.join(run.triggering_runs)}"
    if run.triggering_user:
        return f"{how} by {run.triggering_user}"
    return how


def _seconds(a: dt.datetime | None, b: dt.datetime | None) -> float | None:
    return round((b - a).total_seconds(), 1) if a and b else None


def assemble(
    run: ReleaseRunFacts,
    version: VersionFacts | None,
    *,
    airflow_ui: str,
    mlflow_ui: str | None,
    api_prefix: str,
    missing: tuple[str, ...] = (),
) -> ReleaseRecord:
    """One record from the run's facts and its version's facts (None: MLflow did not have it)."""
    outcome = outcome_of(run)
    tags = version.tags if version else {}
    verdict, reason = _reason(run, outcome, tags)
    run_url = f"{airflow_ui}/dags/{quote(run.dag_id, safe='')}/runs/{quote(run.run_id, safe='')}"
    log_task = _failed_task(run) or ("analyse" if "analyse" in run.tasks else "check_params")
    training_dag, training_run = tags.get("airflow.dag_id"), tags.get("airflow.run_id")
    run_id = version.run_id if version else (run.plan or {}).get("run_id")
    mlflow_run = (
        f"{mlflow_ui}/#/experiments/{version.experiment_id}/runs/{run_id}"
        if mlflow_ui and version and version.experiment_id and run_id
        else None
    )
    approval = run.approval
    gate = tags.get("gate.decision")
    return ReleaseRecord(
        run_id=run.run_id,
        model_name=run.model_name,
        version=run.version,
        outcome=outcome,
        verdict=verdict,
        reason=reason,
        first_release=bool(run.plan and run.plan.get("first_release")),
        started_at=run.start or run.queued_at,
        ended_at=run.end,
        duration_s=_seconds(run.start, run.end),
        task_durations_s={
            k: round(t.duration_s, 1) for k, t in run.tasks.items() if _ran(t) and t.duration_s is not None
        },
        approval_wait_s=_seconds(approval.requested_at, approval.responded_at) if approval else None,
        canary_duration_s=float(tags["canary.duration_s"]) if tags.get("canary.duration_s") else None,
        triggered_by=_trigger(run),
        approved_by=approval.responded_by if approval and "Approve" in approval.chosen else None,
        training_run_id=run_id,
        training_airflow_run=f"{training_dag}/{training_run}" if training_dag and training_run else None,
        data_batch=tags.get("data.path"),
        data_rows=tags.get("data.rows"),
        data_fingerprint=tags.get("data.fingerprint"),
        validation=_validation(tags),
        placement=tags.get("placement.target"),
        placement_summary=tags.get("placement.summary"),
        training_device=tags.get("training.device"),
        gate=f"{gate}: {tags.get('gate.reason', '')}".rstrip(": ") if gate else None,
        image_digest=tags.get("image.digest"),
        image_reference=tags.get("image.reference"),
        canary_steps=version.canary_steps if version else (),
        links=Links(
            airflow_run=run_url,
            logs=f"{run_url}/tasks/{log_task}",
            mlflow_version=f"{mlflow_ui}/#/models/{run.model_name}/versions/{run.version}"
            if mlflow_ui and run.model_name and run.version
            else None,
            mlflow_run=mlflow_run,
            training_airflow_run=f"{airflow_ui}/dags/{training_dag}/runs/{training_run}"
            if training_dag and training_run
            else None,
            canary_plot=f"{api_prefix}/releases/{quote(run.run_id, safe='')}/canary.png"
            if version and version.has_plot
            else None,
            validation_report=f"{mlflow_run}/artifacts/validation" if mlflow_run else None,
        ),
        facts_missing=missing,
    )


def _validation(tags: dict[str, str]) -> str | None:
    success = tags.get("validation.success")
    if success is None:
        return None
    n = tags.get("validation.expectations", "?")
    return f"{'passed' if success == 'True' else 'failed'} ({n} expectations)"
