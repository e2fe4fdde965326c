"""Run the training entrypoint as a Kubernetes pod where the router placed it (KubernetesPodOperator).

Contract with the cluster: the project's data root (Variable ``mlops_data_root``) is a ReadWriteMany
volume, claim named by Variable ``mlops_data_volume_claim``, mounted in the pod at the same absolute
path the Airflow worker sees it. The batch, the config, the checkpoints and the outputs therefore
have one path for both sides: the pod writes model.onnx and metrics.json, evaluate/register read them.
The image (Variable ``mlops_training_image``, docker/train.Dockerfile) has ``python`` with torch and
the repo's ``include/`` in its working directory. Kubernetes is imported inside functions only.

The pod meets the Pod Security "restricted" profile: it runs as the image's non-root uid
(``RUN_AS_USER``), cannot gain privileges, drops every capability, uses the runtime's default
seccomp profile, and mounts no service-account token (training never talks to the API server).
"""

from __future__ import annotations

import collections
import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.errors import PlacementError, SettingsError, TrainingFailed
from include.mlops.routing.model import Placement
from include.mlops.training.config import TrainConfig, TrainingResult
from include.mlops.training.runner import (
    FAILURE_TAIL_LINES,
    TRAIN_MODULE,
    TRAINING_IMAGE_VARIABLE,
    check_under_data_root,
    launch_failed,
    write_config,
)

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.callbacks import KubernetesPodOperatorCallback
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.sdk import Context
    from kubernetes.client import models as k8s

DATA_VOLUME_CLAIM_VARIABLE = "mlops_data_volume_claim"
KUBERNETES_CONN_ID = "kubernetes_default"
CONTAINER_NAME = "base"  # KPO's base container: its exit code decides the task's outcome
DATA_VOLUME_NAME = "mlops-data"
POD_LABELS = {"app.kubernetes.io/name": "mlops-training", "app.kubernetes.io/component": "train"}
# KPO-level (task-level) keys of kpo_kwargs: they belong on the Airflow task, not on the pod
TASK_LEVEL_KEYS = ("pool", "pool_slots")
RUN_AS_USER = 10001  # the training image's `mlops` user (docker/train.Dockerfile); numeric for runAsNonRoot


def pod_security_context() -> k8s.V1PodSecurityContext:
    """Pod level of the "restricted" profile; fsGroup makes the RWX data volume writable to the uid."""
    from kubernetes.client import models as k8s

    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=RUN_AS_USER,
        run_as_group=RUN_AS_USER,
        fs_group=RUN_AS_USER,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def container_security_context() -> k8s.V1SecurityContext:
    """Container level of the "restricted" profile (also on the container: some admission checks look there)."""
    from kubernetes.client import models as k8s

    return k8s.V1SecurityContext(
        run_as_non_root=True,
        run_as_user=RUN_AS_USER,
        allow_privilege_escalation=False,
        privileged=False,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


class TrainingPodSettingsMissing(SettingsError):
    """A Variable the Kubernetes training launcher needs is not set."""


@dataclass(frozen=True)
class TrainingPodSettings:
    """Where the pod's image comes from and which volume holds the data root."""

    image: str
    data_volume_claim: str
    data_root: str
    kubernetes_conn_id: str = KUBERNETES_CONN_ID

    @classmethod
    def from_airflow(cls, data_root: str | Path) -> TrainingPodSettings:
        from airflow.sdk import Variable

        image = Variable.get(TRAINING_IMAGE_VARIABLE, default=None)
        claim = Variable.get(DATA_VOLUME_CLAIM_VARIABLE, default=None)
        missing = [
            f"{name} ({why})"
            for name, value, why in (
                (TRAINING_IMAGE_VARIABLE, image, "the training image, e.g. registry/mlops-train@sha256:..."),
                (DATA_VOLUME_CLAIM_VARIABLE, claim, f"a ReadWriteMany PVC holding the data root {data_root}"),
            )
            if not value
        ]
        if missing:
            raise TrainingPodSettingsMissing(
                f"the router placed training on Kubernetes but Variable(s) {', '.join(missing)} are not set "
                f"(env AIRFLOW_VAR_<NAME> or airflow_settings.yaml)"
            )
        return cls(image=str(image), data_volume_claim=str(claim), data_root=str(Path(data_root).resolve()))


def _dns_label(text: str, limit: int = 40) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:limit].strip("-") or "run"


def training_pod_operator(
    config_path: str,
    placement: Placement,
    settings: TrainingPodSettings,
    *,
    run_name: str,
    task_id: str = "train_pod",
    schedule_timeout_s: int | None = None,
    callbacks: type[KubernetesPodOperatorCallback] | None = None,
    deferrable: bool = False,
) -> KubernetesPodOperator:
    """A KubernetesPodOperator running ``python -m include.mlops.training.train --config <config_path>``
    with the placement's node selector, tolerations, resources, priority class and schedule timeout."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    from include.mlops.routing.kpo import kpo_kwargs

    pod_kwargs = kpo_kwargs(placement)
    for key in TASK_LEVEL_KEYS:
        pod_kwargs.pop(key, None)
    if schedule_timeout_s is not None:
        pod_kwargs["schedule_timeout_seconds"] = schedule_timeout_s
    labels = {**POD_LABELS, "mlops/node-pool": _dns_label(placement.node_pool, 63)}
    return KubernetesPodOperator(
        task_id=task_id,
        kubernetes_conn_id=settings.kubernetes_conn_id,
        namespace=None,  # the connection's namespace (extra "namespace"), else the pod's own
        name=f"train-{_dns_label(run_name)}",
        image=settings.image,
        cmds=["python", "-m", TRAIN_MODULE],
        arguments=["--config", config_path],
        env_vars=[k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1")],
        labels=labels,
        volumes=[
            k8s.V1Volume(
                name=DATA_VOLUME_NAME,
                persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=settings.data_volume_claim),
            )
        ],
        volume_mounts=[k8s.V1VolumeMount(name=DATA_VOLUME_NAME, mount_path=settings.data_root)],
        security_context=pod_security_context(),
        container_security_context=container_security_context(),
        automount_service_account_token=False,
        get_logs=True,
        on_finish_action="delete_pod",
        log_events_on_failure=True,
        callbacks=callbacks,
        deferrable=deferrable,
        **pod_kwargs,
    )


def _tail_callback(tail: collections.deque[str]) -> type[KubernetesPodOperatorCallback]:
    """A KPO callback class that keeps the last log lines of the pod (for the failure message)."""
    from airflow.providers.cncf.kubernetes.callbacks import KubernetesPodOperatorCallback

    class TailLogLines(KubernetesPodOperatorCallback):
        @staticmethod
        def progress_callback(*, line: str, **kwargs: Any) -> None:  # type: ignore[override]
            tail.append(line.rstrip("\n"))

    return TailLogLines


def _exit_code(remote_pod: Any) -> int | None:
    statuses = getattr(getattr(remote_pod, "status", None), "container_statuses", None) or []
    for cs in statuses:
        if cs.name == CONTAINER_NAME and cs.state is not None and cs.state.terminated is not None:
            return int(cs.state.terminated.exit_code)
    return None


@dataclass
class _PodRun:
    op: KubernetesPodOperator
    placement: Placement
    config_path: Path
    tail: collections.deque[str]


def _pod_run(
    config: TrainConfig,
    placement: Placement | Mapping[str, Any],
    settings: TrainingPodSettings,
    *,
    run_name: str,
    schedule_timeout_s: int | None,
    deferrable: bool,
) -> _PodRun:
    if isinstance(placement, Mapping):
        placement = placement_from_dict(placement)
    check_under_data_root(config, settings.data_root, where=f"the training pod (volume {DATA_VOLUME_CLAIM_VARIABLE})")
    config_path = write_config(config)
    tail: collections.deque[str] = collections.deque(maxlen=FAILURE_TAIL_LINES)
    op = training_pod_operator(
        str(config_path),
        placement,
        settings,
        run_name=run_name,
        schedule_timeout_s=schedule_timeout_s,
        callbacks=_tail_callback(tail),
        deferrable=deferrable,
    )
    return _PodRun(op, placement, config_path, tail)


def run_training_pod(
    config: TrainConfig,
    placement: Placement | Mapping[str, Any],
    settings: TrainingPodSettings,
    *,
    context: Context | None = None,
    run_name: str = "run",
    log: Callable[[str], None] = print,
    schedule_timeout_s: int | None = None,
    deferrable: bool = False,
) -> TrainingResult:
    """Launch the training pod, follow it to the end, then read the result from the output dir.

    ``context`` is the running task's context (default: Airflow's current one). Raises
    TrainingFailed naming the pod with its exit code and last log lines, or the schedule timeout.
    ``deferrable``: once the pod is created the task defers (``TaskDeferred`` propagates: the
    worker slot is freed, the triggerer watches the pod) and resumes in ``resume_training_pod``;
    a pod already finished when it would defer is read at once.
    """
    run = _pod_run(
        config, placement, settings, run_name=run_name, schedule_timeout_s=schedule_timeout_s, deferrable=deferrable
    )
    if context is None:
        from airflow.sdk import get_current_context

        context = get_current_context()
    log(
        f"training pod on node pool {run.placement.node_pool!r} ({run.placement.gpu_type or 'no GPU'}), image "
        f"{settings.image}, data root {settings.data_root} from PVC {settings.data_volume_claim}, "
        f"schedule timeout {run.op.schedule_timeout_seconds}s (expected wait {run.placement.expected_wait_s:.0f}s)"
        f"{', deferrable: the triggerer watches the pod' if deferrable else ''}"
    )
    with _failures_named(run):
        run.op.execute(context)
    return TrainingResult.from_output_dir(config.output_dir)


def resume_training_pod(
    config: TrainConfig,
    placement: Placement | Mapping[str, Any],
    settings: TrainingPodSettings,
    *,
    event: dict[str, Any],
    context: Context,
    run_name: str = "run",
    log: Callable[[str], None] = print,
    schedule_timeout_s: int | None = None,
) -> TrainingResult:
    """Pick a deferred training pod up again from the trigger's event: its log into the task log,
    the pod deleted, and the result (or a TrainingFailed as ``run_training_pod`` names it)."""
    run = _pod_run(
        config, placement, settings, run_name=run_name, schedule_timeout_s=schedule_timeout_s, deferrable=True
    )
    log(f"training pod {event.get('namespace')}/{event.get('name')}: trigger says {event.get('status')!r}")
    from airflow.providers.cncf.kubernetes.utils.pod_manager import PodLaunchTimeoutException

    if event.get("status") != "success":
        # re-entry writes the log but calls no progress callback, and deletes the pod: keep the tail now
        run.tail.extend(_log_tail(run.op, event))
    with _failures_named(run):
        try:
            run.op.trigger_reentry(context, event)
        except Exception as exc:
            # the trigger turns a pod that never started into status "timeout" (an execution_timeout
            # deadline also says timeout, naming the deadline): name it as the synchronous path does
            message = str(event.get("message", ""))
            if event.get("status") == "timeout" and "deadline" not in message:
                raise PodLaunchTimeoutException(message) from exc
            raise
    return TrainingResult.from_output_dir(config.output_dir)


@contextlib.contextmanager
def _failures_named(run: _PodRun) -> Iterator[None]:
    """KPO's errors -> TrainingFailed naming the pod, its exit code and last log lines (or the schedule
    timeout); TaskDeferred (a BaseException) passes through untouched."""
    from airflow.providers.cncf.kubernetes.utils.pod_manager import PodLaunchTimeoutException

    op, placement = run.op, run.placement
    try:
        yield
    except Exception as exc:
        # KPO's cleanup (delete_pod) re-raises a generic "returned a failure" with the pod dump; the
        # cause it hides (schedule timeout) is in the chain
        if _in_chain(exc, PodLaunchTimeoutException):
            raise TrainingFailed(
                f"training pod {_pod_ref(op)} did not start within schedule_timeout_seconds="
                f"{op.schedule_timeout_seconds} (placement expected a wait of {placement.expected_wait_s:.0f}s on "
                f"node pool {placement.node_pool!r}); the pod was deleted. Clear `route` to place it again"
            ) from exc
        code = _exit_code(op.remote_pod or op.pod)
        how = f" with exit code {code}" if code is not None else ""
        raise launch_failed(f"training pod {_pod_ref(op)}", run.config_path, exc, tail=run.tail, how=how) from exc


def _log_tail(op: KubernetesPodOperator, event: Mapping[str, Any]) -> list[str]:
    try:
        text = op.client.read_namespaced_pod_log(
            name=event["name"], namespace=event["namespace"], container=CONTAINER_NAME, tail_lines=FAILURE_TAIL_LINES
        )
    except Exception:  # noqa: BLE001 - the tail only decorates the failure message
        return []
    return str(text).splitlines()[-FAILURE_TAIL_LINES:]


def _in_chain(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, kind):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _pod_ref(op: KubernetesPodOperator) -> str:
    pod = op.pod or op.pod_request_obj
    meta = getattr(pod, "metadata", None)
    if meta is None:
        return repr(op.name)
    return f"{meta.namespace}/{meta.name}"


def placement_from_dict(data: Mapping[str, Any]) -> Placement:
    """The Placement back from its XCom form (``Placement.to_dict``); only the fields a pod needs matter."""
    from include.mlops.routing.model import Claim, Explanation

    try:
        return Placement(
            target=data["target"],
            node_pool=str(data["node_pool"]),
            node_name=str(data.get("node_name", "")),
            gpu_type=data.get("gpu_type"),
            node_selector=dict(data.get("node_selector") or {}),
            tolerations=tuple(dict(t) for t in data.get("tolerations") or ()),
            resources_requests=dict(data.get("resources_requests") or {}),
            resources_limits=dict(data.get("resources_limits") or {}),
            airflow_pool=str(data.get("airflow_pool", "default_pool")),
            pool_slots=int(data.get("pool_slots", 1)),
            priority_class=data.get("priority_class"),
            expected_wait_s=float(data.get("expected_wait_s", 0.0)),
            explanation=Explanation(summary=str((data.get("explanation") or {}).get("summary", ""))),
            claim=Claim(node_name=str(data.get("node_name", ""))),
            reservation_id=data.get("reservation_id"),
        )
    except KeyError as exc:
        raise PlacementError(f"placement is missing {exc.args[0]!r}: {dict(data)!r}") from exc
