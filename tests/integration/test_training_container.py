"""Training as a DockerOperator container on the real local Docker engine.

The image under test is a thin one on the offline base image whose entrypoint is the training
module, with the training venv and the working tree bind-mounted read-only through the
``mlops_training_docker_mounts`` setting (the development mode that launcher documents): the same
entrypoint and config as the full training image, without baking a 1.4 GB torch venv in CI.
Needs docker/start_engine.sh and docker/bootstrap_base.sh (CI runs both); skips only when no
engine answers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from include.mlops.build import engine_available
from include.mlops.errors import SettingsError, TrainingFailed
from include.mlops.training.config import TrainConfig
from include.mlops.training.container import (
    TrainingContainerSettings,
    container_limits,
    parse_mounts,
    run_training_container,
)
from tests.docker_trainer import dev_trainer_image, interpreter_mounts
from tests.training_fixtures import fast_config, small_data_root

ENGINE_UP, ENGINE_REASON = engine_available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ENGINE_UP, reason=f"{ENGINE_REASON}; CI runs docker/start_engine.sh first"),
]
LABEL = "io.mlops.test"


@pytest.fixture(scope="module")
def trainer_image() -> Iterator[str]:
    with dev_trainer_image() as tag:
        yield tag


@pytest.fixture()
def data_root(tmp_path: Path) -> Path:
    return small_data_root(tmp_path)


def _placement(cpu: str = "1", memory: str = "2Gi", gpus: int = 0) -> dict[str, Any]:
    requests = {"cpu": cpu, "memory": memory}
    if gpus:
        requests["nvidia.com/gpu"] = str(gpus)
    return {
        "target": "docker",
        "node_pool": "docker-engine",
        "airflow_pool": "default_pool",
        "pool_slots": 1,
        "resources_requests": requests,
        "resources_limits": {"memory": memory},
    }


def _context() -> dict[str, Any]:
    ti = SimpleNamespace(dag_id="retrain", task_id="train.cpu", run_id="manual__1", try_number=1, map_index=-1)
    return {"ti": ti, "task_instance": ti, "run_id": "manual__1"}


def test_training_runs_in_a_container_with_the_placements_limits(trainer_image: str, data_root: Path) -> None:
    import docker

    settings = TrainingContainerSettings(
        image=trainer_image, data_root=str(data_root), extra_mounts=tuple(interpreter_mounts())
    )
    client = docker.from_env()
    logs: list[str] = []
    started = int(time.time()) - 1
    result = run_training_container(
        fast_config(data_root),
        _placement(cpu="1500m", memory="3Gi"),
        settings,
        context=_context(),
        run_name="manual__1",
        log=logs.append,
    )
    created = list(
        client.events(
            since=started,
            until=int(time.time()) + 1,
            decode=True,
            filters={"type": "container", "event": "create", "label": "mlops/run=manual__1"},
        )
    )
    assert Path(result.model_onnx_path).is_file() and Path(result.metrics_path).is_file()
    assert result.epochs_run == 1 and result.device == "cpu"
    # the container is gone (auto_remove) and was created with the placement's share of the machine
    assert not client.containers.list(all=True, filters={"name": "mlops-train-manual__1"})
    assert len(created) == 1, created
    attrs = created[0]["Actor"]["Attributes"]
    assert attrs["app.kubernetes.io/component"] == "train" and attrs["mlops/run"] == "manual__1"
    assert any("cpus=1.5" in line and "mem_limit=3072m" in line for line in logs), logs
    # written as the worker's user: the worker can read and clean up what training wrote
    assert Path(result.model_onnx_path).stat().st_uid == os.getuid()


def test_a_failing_training_names_the_container_exit_and_log_tail(trainer_image: str, data_root: Path) -> None:
    settings = TrainingContainerSettings(
        image=trainer_image, data_root=str(data_root), extra_mounts=tuple(interpreter_mounts())
    )
    broken = data_root / "landing" / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(TrainingFailed) as err:
        run_training_container(
            fast_config(data_root, broken), _placement(), settings, context=_context(), run_name="manual__2"
        )
    text = str(err.value)
    assert "training container mlops-train-manual__2" in text and trainer_image in text
    assert "Last log lines:" in text and "broken.parquet" in text, text


def test_config_outside_the_data_root_is_refused_before_any_container(data_root: Path, tmp_path: Path) -> None:
    settings = TrainingContainerSettings(image="never-pulled:1", data_root=str(data_root))
    config = TrainConfig(
        data_path="/elsewhere/b.parquet",
        output_dir=str(data_root / "out"),
        checkpoint_dir=str(data_root / "ck"),
    )
    with pytest.raises(SettingsError, match=r"outside the data root .* the training container"):
        run_training_container(config, _placement(), settings, context=_context())


def test_limits_and_mount_settings() -> None:
    limits = container_limits(_placement(cpu="2", memory="512Mi", gpus=2))
    assert limits["cpus"] == 2.0 and limits["mem_limit"] == "512m"
    (req,) = limits["device_requests"]
    assert req.count == 2 and req.capabilities == [["gpu"]]
    assert "device_requests" not in container_limits(_placement())
    assert parse_mounts(json.dumps(["/a:/b", "/c:/c"])) == (("/a", "/b"), ("/c", "/c"))
    assert parse_mounts("") == parse_mounts("[]") == ()
    with pytest.raises(SettingsError, match="'relative:/b' must be 'HOST_PATH:CONTAINER_PATH', both absolute"):
        parse_mounts('["relative:/b"]')
    with pytest.raises(SettingsError, match="is not JSON"):
        parse_mounts("[/a:/b")
