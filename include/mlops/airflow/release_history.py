"""The release history's Airflow side: the release DAG's runs read from the metadata DB (task states,
check_params' plan, the approval answer, the asset events that triggered them), and where MLflow and
the Airflow UI are. The library (include/mlops/history) gets these as plain values.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from include.mlops.history.api import HistorySources

if TYPE_CHECKING:
    from include.mlops.history.metrics import RetrainFacts, ServingFacts
    from include.mlops.history.mlflow_facts import MlflowVersionFacts
    from include.mlops.history.query import Urls
    from include.mlops.history.records import ReleaseRunFacts

RELEASE_DAG_ID = "release"
RETRAIN_DAG_ID = "retrain"
URL_PREFIX = "/release-history"
log = logging.getLogger(__name__)
MAX_RUNS = 1000  # newest release runs considered per request (a year of daily releases, with retries)


def release_runs(dag_id: str = RELEASE_DAG_ID) -> list[ReleaseRunFacts]:
    """The newest release runs with their task states, plan (check_params' XCom) and approval answer."""
    from airflow.models.dagrun import DagRun
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from include.mlops.history.records import ApprovalFacts, ReleaseRunFacts, TaskFacts

    with create_session() as session:
        runs = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.run_after.desc()).limit(MAX_RUNS)
        ).all()
        ids = [r.run_id for r in runs]
        in_runs = (TaskInstance.dag_id == dag_id, TaskInstance.run_id.in_(ids))
        tasks: dict[str, dict[str, TaskFacts]] = {}
        for ti in session.scalars(select(TaskInstance).where(*in_runs)):
            tasks.setdefault(ti.run_id, {})[ti.task_id] = TaskFacts(
                state=str(ti.state) if ti.state else None,
                start=ti.start_date,
                end=ti.end_date,
                duration_s=ti.duration,
                try_number=ti.try_number or 0,
            )
        plans: dict[str, Any] = {}
        for xcom in session.scalars(
            select(XComModel).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id.in_(ids),
                XComModel.task_id == "check_params",
                XComModel.key == "return_value",
            )
        ):
            plan = XComModel.deserialize_value(xcom)
            plans[xcom.run_id] = plan if isinstance(plan, dict) else None
        approvals: dict[str, ApprovalFacts] = {}
        for run_id, detail in session.execute(
            select(TaskInstance.run_id, HITLDetail)
            .join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
            .where(*in_runs, TaskInstance.task_id == "approve")
        ):
            approvals[run_id] = ApprovalFacts(
                requested_at=detail.created_at,
                responded_at=detail.responded_at,
                responded_by=detail.responded_by_user_name,
                chosen=tuple(detail.chosen_options or ()),
            )
        return [
            ReleaseRunFacts(
                dag_id=r.dag_id,
                run_id=r.run_id,
                state=str(r.state),
                run_type=str(r.run_type),
                triggered_by=str(r.triggered_by.value) if r.triggered_by else None,
                triggering_user=r.triggering_user_name,
                queued_at=r.queued_at,
                start=r.start_date,
                end=r.end_date,
                conf=dict(r.conf or {}),
                plan=plans.get(r.run_id),
                tasks=tasks.get(r.run_id, {}),
                approval=approvals.get(r.run_id),
                triggering_runs=tuple(
                    f"{e.source_dag_id}/{e.source_run_id}" for e in r.consumed_asset_events if e.source_run_id
                ),
            )
            for r in runs
        ]


def _mlflow_uri() -> str:
    """MLflow as the connection mlflow_default names it (read per request: a changed connection applies at once)."""
    from airflow.sdk import BaseHook

    from include.mlops.settings.project import MLFLOW_CONN_ID

    ml = BaseHook.get_connection(MLFLOW_CONN_ID)
    return f"{ml.schema or 'http'}://{ml.host}:{ml.port}"


def mlflow_version_facts() -> MlflowVersionFacts:
    from include.mlops.history.mlflow_facts import MlflowVersionFacts

    return MlflowVersionFacts(_mlflow_uri())


def history_urls() -> Urls:
    from airflow.configuration import conf

    from include.mlops.history.query import Urls

    # links into the Airflow UI start at its base URL (a sub-path behind a reverse proxy included)
    base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
    return Urls(airflow_ui=base, mlflow_ui=_mlflow_uri(), api_prefix=base + URL_PREFIX)


def retrain_facts(dag_id: str = RETRAIN_DAG_ID) -> RetrainFacts:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    from include.mlops.history.metrics import RetrainFacts

    with create_session() as session:
        runs = DagRun.dag_id == dag_id
        return RetrainFacts(
            last_success_end=session.scalar(select(func.max(DagRun.end_date)).where(runs, DagRun.state == "success")),
            failed_runs=session.scalar(select(func.count()).where(runs, DagRun.state == "failed")) or 0,
            validation_failures=session.scalar(
                select(func.count()).where(
                    TaskInstance.dag_id == dag_id,
                    TaskInstance.task_id == "validate_data",
                    TaskInstance.state == "failed",
                )
            )
            or 0,
        )


def serving_facts(models: set[str]) -> dict[str, ServingFacts]:
    """Per model: MLflow's champion and the serving target's canary weight (left out when unknown)."""
    from include.mlops.airflow.config import project_settings
    from include.mlops.deploy.factory import serving_target
    from include.mlops.errors import MlopsError
    from include.mlops.history.metrics import ServingFacts
    from include.mlops.registry.mlflow_registry import CHAMPION, MlflowRegistry

    settings = project_settings()
    registry = MlflowRegistry(settings.mlflow_tracking_uri)
    out: dict[str, ServingFacts] = {}
    for model in sorted(models | {settings.registered_model}):
        champion: str | None = None
        weight: int | None = None
        try:
            ref = registry.get_alias(model, CHAMPION)
            champion = ref.version if ref else None
        except MlopsError as e:
            log.warning("metrics: no champion of %s: %s", model, e)
        try:
            status = serving_target(settings, model).status()
            weight = status.canary_weight_pct if status.canary is not None else 0
        except (MlopsError, OSError) as e:
            log.warning("metrics: no serving state of %s: %s", model, e)
        out[model] = ServingFacts(champion_version=champion, canary_weight_pct=weight)
    return out


def metrics_text() -> str:
    from include.mlops.history.metrics import pipeline_metrics

    releases = release_runs()
    models = {r.model_name for r in releases if r.model_name}
    return pipeline_metrics(releases, retrain_facts(), serving_facts(models))


def history_sources() -> HistorySources:
    """Each request reads Airflow's DB, the Connection and MLflow afresh: nothing is cached to drift."""
    return HistorySources(runs=release_runs, versions=mlflow_version_facts, urls=history_urls, metrics=metrics_text)
