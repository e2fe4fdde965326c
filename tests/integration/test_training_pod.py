"""Training as a KubernetesPodOperator pod against a Kubernetes API stand-in over real HTTP.

kmock's KubernetesEmulator serves the API on 127.0.0.1; the provider's hook reaches it through a
kubeconfig named by the ``kubernetes_default`` connection. A kubelet stand-in (a thread talking to
the same API) runs each created pod's command with the training interpreter, reports Running then
Succeeded/Failed with the real exit code, and serves the output at the pod's ``log`` subresource.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest

from include.mlops.airflow.training_pod import TrainingPodSettings, run_training_pod
from include.mlops.errors import TrainingFailed
from include.mlops.routing.model import Claim, Explanation, Placement
from include.mlops.training.config import TrainConfig
from tests.k8s_standin import NAMESPACE, kubernetes_standin, live_pods, restricted_profile_violations
from tests.training_fixtures import FAST, fast_config, small_data_root

pytestmark = pytest.mark.slow

GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
K8S_SCHEMA_VERSION = "1.30"


def a100_placement(expected_wait_s: float = 30.0) -> Placement:
    return Placement(
        target="kubernetes",
        node_pool="a100-pool",
        node_name="gke-a100-1",
        gpu_type="NVIDIA-A100-SXM4-80GB",
        node_selector={"cloud.google.com/gke-nodepool": "a100-pool", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
        tolerations=(GPU_TAINT,),
        resources_requests={"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"},
        resources_limits={"memory": "4Gi", "nvidia.com/gpu": "1"},
        airflow_pool="gpu_a100",
        pool_slots=1,
        priority_class="training-high",
        expected_wait_s=expected_wait_s,
        explanation=Explanation(summary="1 free A100 on gke-a100-1"),
        claim=Claim(node_name="gke-a100-1"),
    )


@pytest.fixture()
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """API stand-in + kubelet stand-in; connection kubernetes_default points at them by kubeconfig."""
    with kubernetes_standin(tmp_path, NAMESPACE) as standin:
        monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", standin.conn_json)
        yield standin


@pytest.fixture()
def data_root(tmp_path: Path) -> Path:
    return small_data_root(tmp_path)


def _context(try_number: int = 1) -> dict[str, Any]:
    ti = SimpleNamespace(
        dag_id="retrain",
        task_id="train",
        run_id="manual__1",
        try_number=try_number,
        map_index=-1,
        xcom_push=lambda **kw: None,
    )
    return {"ti": ti, "task_instance": ti, "run_id": "manual__1", "dag": SimpleNamespace(dag_id="retrain")}


def _settings(data_root: Path) -> TrainingPodSettings:
    return TrainingPodSettings(
        image="registry.local/mlops-train:test", data_volume_claim="mlops-data", data_root=str(data_root)
    )


def _pod_objects(cluster: SimpleNamespace) -> list[Any]:
    return live_pods(cluster)


def test_pod_carries_the_placement_trains_on_the_shared_data_root_and_is_deleted(
    cluster: SimpleNamespace, data_root: Path
) -> None:
    config = fast_config(data_root)
    lines: list[str] = []
    t0 = time.monotonic()
    result = run_training_pod(
        config, a100_placement(), _settings(data_root), context=_context(), run_name="manual__1", log=lines.append
    )
    assert time.monotonic() - t0 < 60

    assert len(cluster.created) == 1
    manifest = cluster.created[0]
    kubernetes_validate.validate(manifest, K8S_SCHEMA_VERSION, strict=True)
    spec = manifest["spec"]
    assert spec["nodeSelector"] == dict(a100_placement().node_selector)
    assert spec["tolerations"] == [GPU_TAINT]
    assert spec["priorityClassName"] == "training-high"
    (container,) = spec["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "4Gi", "nvidia.com/gpu": "1"},
    }
    assert container["image"] == "registry.local/mlops-train:test"
    assert container["command"] == ["python", "-m", "include.mlops.training.train"]
    assert container["args"] == ["--config", str(Path(config.output_dir) / "train_config.json")]
    # the data root is the PVC, mounted where the Airflow worker sees it
    assert container["volumeMounts"] == [{"name": "mlops-data", "mountPath": str(data_root)}]
    assert spec["volumes"] == [{"name": "mlops-data", "persistentVolumeClaim": {"claimName": "mlops-data"}}]
    assert manifest["metadata"]["namespace"] == NAMESPACE
    assert manifest["metadata"]["labels"]["app.kubernetes.io/name"] == "mlops-training"

    name = manifest["metadata"]["name"]
    assert cluster.kubelet.exit_codes == {name: 0}
    assert Path(result.model_onnx_path).is_file() and Path(result.metrics_path).is_file()
    assert Path(result.model_onnx_path).parent == Path(config.output_dir)
    assert (result.epochs_run, result.epochs_total) == (1, 1)
    assert _pod_objects(cluster) == []  # on_finish_action=delete_pod


def test_retraining_train_dispatches_kubernetes_placement_and_returns_the_local_shape(
    cluster: SimpleNamespace, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from include.mlops import retraining
    from include.mlops.airflow import retrain
    from include.mlops.data.batches import fingerprint
    from include.mlops.routing.providers.local import LocalMachineProvider
    from include.mlops.routing.reservations import ReservationBook
    from include.mlops.routing.router import ResourceRouter

    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_TRAINING_IMAGE", "registry.local/mlops-train:test")
    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_DATA_VOLUME_CLAIM", "mlops-data")
    settings = SimpleNamespace(data_root=data_root, runs_dir=data_root / "runs")
    batch = next((data_root / "landing").iterdir())
    placement = {**a100_placement().to_dict(), "explanation_text": "A100 pool"}
    ident = retraining.RunIdentity("retrain", "manual__2")
    router = ResourceRouter(LocalMachineProvider(), ReservationBook(data_root / "book.sqlite"))
    start = retrain.launcher(settings, ident, placement=placement, router=router, context=_context())  # type: ignore[arg-type]
    out = retraining.train(
        settings,  # type: ignore[arg-type]
        ident,
        validation={"batch_path": str(batch), "fingerprint": fingerprint(batch)},  # as validate_data pinned it
        placement=placement,
        hyperparams=dict(FAST),
        router=router,
        launcher=start,
        log=lambda _line: None,
    )
    assert set(out) == {
        "output_dir",
        "model_onnx_path",
        "metrics_path",
        "device",
        "epochs_run",
        "resumed_from_epoch",
        "duration_s",
        "holdout",
        "config",
    }
    assert Path(out["model_onnx_path"]).is_file()
    assert out["output_dir"] == str(data_root / "runs" / "manual__2" / "output")
    assert _pod_objects(cluster) == []


def test_failed_training_pod_names_the_pod_exit_code_and_log_tail(cluster: SimpleNamespace, data_root: Path) -> None:
    config = fast_config(data_root, batch=data_root / "landing" / "missing.parquet")
    with pytest.raises(TrainingFailed) as err:
        run_training_pod(config, a100_placement(), _settings(data_root), context=_context(), run_name="manual__1")
    name = cluster.created[0]["metadata"]["name"]
    message = str(err.value)
    assert f"{NAMESPACE}/{name}" in message
    assert f"exit code {cluster.kubelet.exit_codes[name]}" in message and cluster.kubelet.exit_codes[name] != 0
    assert "missing.parquet" in message  # the trainer's own error, from the pod log
    assert _pod_objects(cluster) == []


def test_pod_left_pending_past_schedule_timeout_fails_clearly(cluster: SimpleNamespace, data_root: Path) -> None:
    cluster.kubelet.schedulable = False
    t0 = time.monotonic()
    with pytest.raises(
        TrainingFailed, match=r"did not start within schedule_timeout_seconds=2 .*expected a wait of 30s"
    ):
        run_training_pod(
            fast_config(data_root),
            a100_placement(expected_wait_s=30),
            _settings(data_root),
            context=_context(),
            run_name="manual__1",
            schedule_timeout_s=2,
        )
    assert time.monotonic() - t0 < 20
    assert _pod_objects(cluster) == []


# --- deferrable: the worker hands the pod to the triggerer and resumes from its event ---------------


def _deferred(config: TrainConfig, data_root: Path, cluster: SimpleNamespace, hold: bool = False, **kw: Any) -> Any:
    """Start the pod deferrable; the kubelet waits until the task has deferred (as a busy node would)."""
    from airflow.sdk.exceptions import TaskDeferred

    cluster.kubelet.schedulable = False
    with pytest.raises(TaskDeferred) as deferred:
        run_training_pod(
            config,
            a100_placement(),
            _settings(data_root),
            context=_context(),
            run_name="manual__d",
            deferrable=True,
            **kw,
        )
    cluster.kubelet.schedulable = not hold
    return deferred.value


def _trigger_event(deferred: Any, timeout_s: float = 90) -> dict[str, Any]:
    """What the triggerer does: rebuild the trigger from its serialized form and run it to its event."""
    from airflow.sdk.module_loading import import_string

    classpath, kwargs = deferred.trigger.serialize()
    trigger = import_string(classpath)(**kwargs)

    async def first() -> dict[str, Any]:
        async for event in trigger.run():
            return dict(event.payload)
        raise AssertionError("trigger ended without an event")

    return asyncio.run(asyncio.wait_for(first(), timeout_s))


def test_deferrable_pod_frees_the_worker_and_resumes_from_the_trigger_event(
    cluster: SimpleNamespace, data_root: Path
) -> None:
    from include.mlops.airflow.training_pod import resume_training_pod

    config = fast_config(data_root)
    deferred = _deferred(config, data_root, cluster)
    assert deferred.method_name == "trigger_reentry"
    assert len(cluster.created) == 1 and not cluster.kubelet.exit_codes  # created, not yet run
    kubernetes_validate.validate(cluster.created[0], K8S_SCHEMA_VERSION, strict=True)

    event = _trigger_event(deferred)
    assert event["status"] == "success", event
    result = resume_training_pod(
        config, a100_placement(), _settings(data_root), event=event, context=_context(), run_name="manual__d"
    )
    assert Path(result.model_onnx_path).is_file() and result.epochs_run == 1
    assert _pod_objects(cluster) == []  # re-entry deleted the pod


def test_deferrable_pod_failure_names_the_pod_exit_code_and_log_tail(cluster: SimpleNamespace, data_root: Path) -> None:
    from include.mlops.airflow.training_pod import resume_training_pod

    config = fast_config(data_root, batch=data_root / "landing" / "missing.parquet")
    event = _trigger_event(_deferred(config, data_root, cluster))
    assert event["status"] == "failed", event
    with pytest.raises(TrainingFailed) as err:
        resume_training_pod(
            config, a100_placement(), _settings(data_root), event=event, context=_context(), run_name="manual__d"
        )
    name = cluster.created[0]["metadata"]["name"]
    message = str(err.value)
    assert f"{NAMESPACE}/{name} failed with exit code {cluster.kubelet.exit_codes[name]}" in message, message
    assert "missing.parquet" in message, message
    assert _pod_objects(cluster) == []


def test_deferrable_pod_never_scheduled_times_out_in_the_trigger(cluster: SimpleNamespace, data_root: Path) -> None:
    from include.mlops.airflow.training_pod import resume_training_pod

    config = fast_config(data_root)
    deferred = _deferred(config, data_root, cluster, hold=True, schedule_timeout_s=2)  # the node never frees up
    event = _trigger_event(deferred, timeout_s=30)
    assert event["status"] == "timeout", event
    with pytest.raises(TrainingFailed, match=r"did not start within schedule_timeout_seconds=2"):
        resume_training_pod(
            config,
            a100_placement(),
            _settings(data_root),
            event=event,
            context=_context(),
            run_name="manual__d",
            schedule_timeout_s=2,
        )
    assert _pod_objects(cluster) == []


def test_a_retry_after_the_worker_died_reattaches_to_the_running_pod(cluster: SimpleNamespace, data_root: Path) -> None:
    """The worker created the pod and died before the deferral was recorded; the retry (try 2) finds
    the pod by its run/task labels and watches it instead of starting a second training."""
    from airflow.sdk.exceptions import TaskDeferred

    from include.mlops.airflow.training_pod import resume_training_pod

    config = fast_config(data_root)
    _deferred(config, data_root, cluster, hold=True)  # the pod stays Pending until the retry watches it
    with pytest.raises(TaskDeferred) as again:
        run_training_pod(
            config,
            a100_placement(),
            _settings(data_root),
            context=_context(try_number=2),
            run_name="manual__d",
            deferrable=True,
        )
    assert len(cluster.created) == 1, "the retry created a second pod"
    cluster.kubelet.schedulable = True
    event = _trigger_event(again.value)
    assert event["status"] == "success", event
    result = resume_training_pod(
        config,
        a100_placement(),
        _settings(data_root),
        event=event,
        context=_context(try_number=2),
        run_name="manual__d",
    )
    assert Path(result.model_onnx_path).is_file()
    assert len(cluster.kubelet.exit_codes) == 1 and _pod_objects(cluster) == []


def test_the_training_pod_meets_the_restricted_pod_security_profile(cluster: SimpleNamespace, data_root: Path) -> None:
    """The pod as created on the API: valid (strict schema), admitted by Pod Security "restricted"
    (non-root, no privilege escalation, every capability dropped, seccomp RuntimeDefault) and
    without the service-account token (training never calls the API server)."""
    _deferred(fast_config(data_root), data_root, cluster, hold=True)  # created, never run
    (manifest,) = cluster.created
    kubernetes_validate.validate(manifest, K8S_SCHEMA_VERSION, strict=True)
    assert restricted_profile_violations(manifest) == []
    spec = manifest["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsUser"] == 10001 and spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
