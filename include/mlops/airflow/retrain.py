"""The retrain DAG's Airflow side: settings, run identity, the router and the launchers go into the
library's steps (``include.mlops.retraining``), and its outcomes come back as Airflow's.

``CapacityWait`` becomes a reschedule (no worker slot held, no retry spent), ``PlacementError``
a failure without retries; a Kubernetes pod defers the task (``TaskDeferred`` passes through, and
the reservation stays with the running pod).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from include.mlops import retraining
from include.mlops.airflow import config
from include.mlops.errors import CapacityWait, PlacementError
from include.mlops.retraining import RunIdentity, TrainingLauncher

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import DagRunProtocol, RuntimeTaskInstanceProtocol

    from include.mlops.routing.router import ResourceRouter
    from include.mlops.settings.project import ProjectSettings
    from include.mlops.training.config import TrainConfig, TrainingResult

Log = Callable[[str], None]


def settings() -> ProjectSettings:
    """Settings of the Airflow deployment this task runs in (Connections + Variables)."""
    return config.project_settings()


def identity(dag_run: DagRunProtocol, ti: RuntimeTaskInstanceProtocol | None) -> RunIdentity:
    return RunIdentity(dag_id=dag_run.dag_id, run_id=dag_run.run_id, try_number=int(getattr(ti, "try_number", 1) or 1))


def route_or_reschedule(
    ident: RunIdentity, request: dict[str, Any] | None, ti: RuntimeTaskInstanceProtocol | None, *, context: Context
) -> dict[str, Any]:
    """The `route` task body: place, or give the worker slot back and run again when the router says
    to look again (Airflow reschedule: state up_for_reschedule, no retry spent). Errors that waiting
    cannot fix fail the task at once, without retries."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException

    first = ti.get_first_reschedule_date(context) if ti is not None else None
    now = dt.datetime.now(dt.UTC)
    waited_s = max(0.0, (now - first).total_seconds()) if first else 0.0
    try:
        return retraining.route_training(
            ident, request, router=config.router(), policy=config.resource_policy(), waited_s=waited_s
        )
    except CapacityWait as wait:
        print(f"waiting for capacity ({waited_s:.0f}s so far), next look in {wait.recheck_after_s:.0f}s: {wait.reason}")
        raise AirflowRescheduleException(now + dt.timedelta(seconds=wait.recheck_after_s)) from None
    except PlacementError as exc:
        raise AirflowFailException(str(exc)) from exc


def launcher(
    settings: ProjectSettings,
    ident: RunIdentity,
    *,
    placement: Mapping[str, Any],
    router: ResourceRouter,
    context: Context | None,
    deferrable: bool = False,
    log: Log = print,
) -> TrainingLauncher:
    """What starts a config's training where the placement says: a local process, a Kubernetes pod
    (KubernetesPodOperator; ``deferrable``: the task defers once the pod is created) or a container
    on the local Docker engine. A placement no launcher serves fails when called (inside the
    library's ``train``, which then releases the reservation)."""

    def start(cfg: TrainConfig) -> TrainingResult:
        target = placement.get("target")
        if target == "local":
            from include.mlops.routing.training import reservation_lease
            from include.mlops.training.runner import run_training_process, training_python

            lease = reservation_lease(placement, router=router, log=log)  # renewed while training runs
            return run_training_process(cfg, training_python(), log=log, placement=placement, lease=lease)
        if target == "kubernetes":
            from include.mlops.airflow.training_pod import TrainingPodSettings, run_training_pod

            pod_settings = TrainingPodSettings.from_airflow(settings.data_root)
            return run_training_pod(
                cfg, placement, pod_settings, context=context, run_name=ident.safe_name, log=log, deferrable=deferrable
            )
        if target == "docker":
            from include.mlops.routing.training import reservation_lease
            from include.mlops.training.container import run_training_container

            box = config.training_container_settings(settings.data_root, settings.docker_base_url)
            lease = reservation_lease(placement, router=router, log=log)
            return run_training_container(cfg, placement, box, run_name=ident.safe_name, log=log, lease=lease)
        if placement.get("decision") == "wait":
            raise PlacementError(f"the router says wait: {placement.get('explanation_text') or placement}")
        raise PlacementError(
            f"placement target {target!r} has no training launcher here (supported: 'local', 'kubernetes', "
            f"'docker'); placement: {placement.get('explanation_text') or placement}"
        )

    return start


def is_deferral(exc: BaseException) -> bool:
    """A deferred task's pod runs on: its reservation is kept (released when the task resumes)."""
    from airflow.sdk.exceptions import TaskDeferred

    return isinstance(exc, TaskDeferred)
