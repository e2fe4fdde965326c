"""The retrain DAG's launch tasks (``train.local``, ``train.cpu``, ``train.gpu_N``) as one operator.

Each instance is declared with its launch's Airflow pool and pool_slots (see ``launch.py``) and runs
the placement ``route`` chose: a local process, a Docker container, or a Kubernetes pod. A pod is
watched by the triggerer (``deferrable=True``, the default): the worker slot is free while the pod
runs, while the pool slots stay taken (``gpu_training`` counts deferred tasks), and the task
resumes in ``resume`` with the trigger's event. This is an operator, not a ``@task``, because a
deferred task resumes by calling a method of its own operator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from include.mlops.training.launch import Launch

if TYPE_CHECKING:
    from airflow.sdk import Context

    from include.mlops.retraining import RunIdentity
    from include.mlops.settings.project import ProjectSettings
    from include.mlops.training.config import TrainConfig, TrainingResult


class TrainingLaunchOperator(BaseOperator):
    ui_color = "#d8e8f8"

    def __init__(
        self,
        *,
        launch: Launch,
        route_task_id: str = "route",
        validation_task_id: str = "validate_data",
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(pool=launch.pool, pool_slots=launch.pool_slots, **kwargs)
        self.launch = launch
        self.route_task_id = route_task_id
        self.validation_task_id = validation_task_id
        self.deferrable = deferrable

    def _inputs(
        self, context: Context
    ) -> tuple[ProjectSettings, RunIdentity, dict[str, Any], dict[str, Any], dict[str, Any]]:
        from include.mlops import retraining
        from include.mlops.airflow import retrain

        ti = context["ti"]
        placement = ti.xcom_pull(task_ids=self.route_task_id, key="placement")
        validation = ti.xcom_pull(task_ids=self.validation_task_id)
        if not placement or not validation:
            raise RuntimeError(
                f"{self.task_id}: no placement from {self.route_task_id!r} or no batch from "
                f"{self.validation_task_id!r} in XCom; clear those tasks to run them again"
            )
        hyperparams = retraining.hyperparams(context["params"])
        ident = retrain.identity(context["dag_run"], ti)
        return retrain.settings(), ident, validation, placement, hyperparams

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import TaskDeferred

        from include.mlops import retraining
        from include.mlops.airflow import config, retrain

        settings, ident, validation, placement, hyperparams = self._inputs(context)
        router = config.router()
        start = retrain.launcher(
            settings,
            ident,
            placement=placement,
            router=router,
            context=context,
            deferrable=self.deferrable,
            log=self.log.info,
        )
        try:
            return retraining.train(
                settings,
                ident,
                validation=validation,
                placement=placement,
                hyperparams=hyperparams,
                router=router,
                launcher=start,
                launch=self.launch,
                keeps_reservation=retrain.is_deferral,
                log=self.log.info,
            )
        except TaskDeferred as deferred:
            # KPO asked to resume in its own trigger_reentry; this task resumes in self.resume
            raise TaskDeferred(
                trigger=deferred.trigger, method_name="resume", kwargs=deferred.kwargs, timeout=deferred.timeout
            ) from None

    def resume(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        from include.mlops import retraining
        from include.mlops.airflow import config
        from include.mlops.airflow.training_pod import TrainingPodSettings, resume_training_pod

        settings, ident, validation, placement, hyperparams = self._inputs(context)
        pod_settings = TrainingPodSettings.from_airflow(settings.data_root)

        def resumer(cfg: TrainConfig) -> TrainingResult:
            return resume_training_pod(
                cfg,
                placement,
                pod_settings,
                event=event or {},
                context=context,
                run_name=ident.safe_name,
                log=self.log.info,
            )

        return retraining.resume_training(
            settings,
            ident,
            validation=validation,
            hyperparams=hyperparams,
            router=config.router(),
            resumer=resumer,
            log=self.log.info,
        )
