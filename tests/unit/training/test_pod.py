"""The Kubernetes training launcher's settings and checks, and train's dispatch on the placement target."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from include.mlops import retraining
from include.mlops.airflow import retrain
from include.mlops.airflow.training_pod import (
    TrainingPodSettings,
    TrainingPodSettingsMissing,
    placement_from_dict,
    run_training_pod,
    training_pod_operator,
)
from include.mlops.errors import PlacementError, SettingsError
from include.mlops.routing.model import Claim, Explanation, Placement
from include.mlops.routing.providers.local import LocalMachineProvider
from include.mlops.routing.reservations import ReservationBook
from include.mlops.routing.router import ResourceRouter
from include.mlops.training.config import TrainConfig


def _placement() -> Placement:
    return Placement(
        target="kubernetes",
        node_pool="t4-shared",
        node_name="karp-t4-1",
        gpu_type="Tesla-T4-SHARED",
        node_selector={"karpenter.sh/nodepool": "t4-shared"},
        tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
        resources_requests={"cpu": "1", "nvidia.com/gpu": "1"},
        resources_limits={"nvidia.com/gpu": "1"},
        airflow_pool="gpu_t4",
        pool_slots=2,
        priority_class=None,
        expected_wait_s=200.0,
        explanation=Explanation(summary="shared T4"),
        claim=Claim(node_name="karp-t4-1"),
    )


def test_missing_variables_are_named_with_what_they_hold(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AIRFLOW_VAR_MLOPS_TRAINING_IMAGE", raising=False)
    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_DATA_VOLUME_CLAIM", "mlops-data")
    with pytest.raises(TrainingPodSettingsMissing, match=r"mlops_training_image \(the training image"):
        TrainingPodSettings.from_airflow(tmp_path)


def test_variables_give_image_claim_and_resolved_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_TRAINING_IMAGE", "reg/train@sha256:abc")
    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_DATA_VOLUME_CLAIM", "mlops-data")
    s = TrainingPodSettings.from_airflow(tmp_path)
    assert (s.image, s.data_volume_claim, s.data_root) == (
        "reg/train@sha256:abc",
        "mlops-data",
        str(tmp_path.resolve()),
    )


def test_operator_takes_pod_fields_from_placement_and_leaves_pool_to_the_task(tmp_path: Path) -> None:
    settings = TrainingPodSettings(image="reg/train:1", data_volume_claim="mlops-data", data_root=str(tmp_path))
    p = _placement()
    op = training_pod_operator("/data/cfg.json", p, settings, run_name="scheduled__2026-11-02T03:00:00+00:00")
    assert op.node_selector == {"karpenter.sh/nodepool": "t4-shared"}
    assert op.schedule_timeout_seconds == 800  # 4x the expected wait
    assert op.pool != "gpu_t4" and op.pool_slots == 1  # task-level: the outer train task holds the pool
    assert op.arguments == ["--config", "/data/cfg.json"]
    assert op.on_finish_action.value == "delete_pod"
    assert op.name.startswith("train-scheduled-2026-11-02t03-00-00")


def test_config_outside_the_data_root_is_refused_before_any_pod(tmp_path: Path) -> None:
    settings = TrainingPodSettings(image="reg/train:1", data_volume_claim="c", data_root=str(tmp_path / "data"))
    config = TrainConfig(
        data_path="/elsewhere/b.parquet",
        output_dir=str(tmp_path / "data" / "out"),
        checkpoint_dir=str(tmp_path / "data" / "ck"),
    )
    with pytest.raises(SettingsError, match=r"TrainConfig.data_path=/elsewhere/b.parquet is outside the data root"):
        run_training_pod(config, _placement(), settings, context={})


def test_placement_round_trips_through_its_xcom_dict() -> None:
    p = _placement()
    back = placement_from_dict({**p.to_dict(), "explanation_text": "x"})
    assert (back.node_selector, back.tolerations, back.resources_limits, back.expected_wait_s) == (
        p.node_selector,
        p.tolerations,
        p.resources_limits,
        p.expected_wait_s,
    )


def test_train_refuses_a_target_without_launcher(tmp_path: Path) -> None:
    from include.mlops.data.batches import fingerprint

    settings = SimpleNamespace(data_root=tmp_path, runs_dir=tmp_path / "runs")
    batch = tmp_path / "b.parquet"
    batch.write_bytes(b"validated bytes")
    ident = retraining.RunIdentity("retrain", "r1")
    placement = {"target": "slurm", "explanation_text": "an HPC queue"}
    router = ResourceRouter(LocalMachineProvider(), ReservationBook(tmp_path / "book.sqlite"))
    start = retrain.launcher(settings, ident, placement=placement, router=router, context=None)  # type: ignore[arg-type]
    with pytest.raises(PlacementError, match=r"placement target 'slurm' has no training launcher"):
        retraining.train(
            settings,  # type: ignore[arg-type]
            ident,
            validation={"batch_path": str(batch), "fingerprint": fingerprint(batch)},
            placement=placement,
            hyperparams={},
            router=router,
            launcher=start,
            log=lambda _l: None,
        )
