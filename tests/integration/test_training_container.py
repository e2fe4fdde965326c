"""Training as a container on the real local Docker engine.

The image under test is a thin one on the offline base image whose entrypoint is the training
module, with the training venv and the working tree bind-mounted read-only through the
``mlops_training_docker_mounts`` setting (the development mode that launcher documents): the same
entrypoint and config as the full training image, without baking a 1.4 GB torch venv in CI.
Needs docker/start_engine.sh and docker/bootstrap_base.sh (CI runs both); a test that uses the
engine skips only when no engine answers, and fails instead under CI=true.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from include.mlops.errors import PlacementError, SettingsError, TrainingFailed
from include.mlops.training.config import TrainConfig
from include.mlops.training.container import (
    TrainingContainerSettings,
    container_limits,
    container_spec,
    create_container,
    docker_client,
    parse_mounts,
    run_training_container,
)
from include.mlops.training.runner import repo_root
from tests.docker_trainer import dev_trainer_image, interpreter_mounts
from tests.training_fixtures import fast_config, small_data_root

pytestmark = pytest.mark.slow
LABEL = "io.mlops.test"


@pytest.fixture(scope="module")
def trainer_image(docker_engine: str) -> Iterator[str]:
    """Every test that touches the engine takes this image, so only those need the engine: without
    one they skip, and under CI=true fail (the docker_engine fixture); the pure tests always run."""
    with dev_trainer_image() as tag:
        yield tag


@pytest.fixture()
def data_root(tmp_path: Path) -> Path:
    return small_data_root(tmp_path)


def _placement(cpu: str = "1", memory: str = "2Gi", gpu_devices: tuple[int, ...] = ()) -> dict[str, Any]:
    """A docker placement as the router makes it: the claim names the GPU devices it reserved."""
    requests = {"cpu": cpu, "memory": memory}
    if gpu_devices:
        requests["nvidia.com/gpu"] = str(len(gpu_devices))
    return {
        "target": "docker",
        "node_pool": "docker-engine",
        "node_name": "this-host",
        "airflow_pool": "default_pool",
        "pool_slots": 1,
        "resources_requests": requests,
        "resources_limits": {"memory": memory},
        "claim": {"node_name": "this-host", "gpu_milli_by_device": [[d, 1000] for d in gpu_devices]},
    }


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
        run_training_container(fast_config(data_root, broken), _placement(), settings, run_name="manual__2")
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
        run_training_container(config, _placement(), settings)


def test_limits_and_mount_settings() -> None:
    limits = container_limits(_placement(cpu="2", memory="512Mi", gpu_devices=(2, 0)))
    assert limits["cpus"] == 2.0 and limits["mem_limit"] == "512m"
    (req,) = limits["device_requests"]
    # the very devices the router reserved, not "any 2 GPUs"
    assert req.device_ids == ["0", "2"] and not req.count and req.capabilities == [["gpu"]]
    assert "device_requests" not in container_limits(_placement())
    unnamed = {**_placement(), "resources_requests": {"nvidia.com/gpu": "1"}}
    with pytest.raises(PlacementError, match="claim names no GPU device"):
        container_limits(unnamed)
    assert parse_mounts(json.dumps(["/a:/b", "/c:/c"])) == (("/a", "/b"), ("/c", "/c"))
    assert parse_mounts("") == parse_mounts("[]") == ()
    with pytest.raises(SettingsError, match="'relative:/b' must be 'HOST_PATH:CONTAINER_PATH', both absolute"):
        parse_mounts('["relative:/b"]')
    with pytest.raises(SettingsError, match="is not JSON"):
        parse_mounts("[/a:/b")


# --- the router's GPUs, least privilege, and a retry after the worker died ------------------------


def _settings(trainer_image: str, data_root: Path) -> TrainingContainerSettings:
    return TrainingContainerSettings(
        image=trainer_image, data_root=str(data_root), extra_mounts=tuple(interpreter_mounts())
    )


def test_a_gpu_placement_asks_the_engine_for_exactly_the_claimed_devices(trainer_image: str, data_root: Path) -> None:
    """The container the launcher creates, inspected on the engine: a device request naming the
    claimed GPU ids (this host has no NVIDIA runtime, so it is created, not started)."""
    spec = container_spec(
        "/nowhere/train_config.json",
        _placement(gpu_devices=(3, 1)),
        _settings(trainer_image, data_root),
        run_name="manual__gpu",
    )
    cli = docker_client(None)
    cid = create_container(cli, spec)
    try:
        host = cli.inspect_container(cid)["HostConfig"]
    finally:
        cli.remove_container(cid, force=True)
    (request,) = host["DeviceRequests"]
    assert request["DeviceIDs"] == ["1", "3"] and request["Capabilities"] == [["gpu"]]
    assert not request.get("Count")  # not "any N GPUs"


def test_the_engine_holds_the_container_to_the_placements_share_and_no_network(
    trainer_image: str, data_root: Path
) -> None:
    """Read back from the engine's HostConfig, not from the launcher's own log line: 1.5 CPUs is a
    CPU share of 1.5 x 1024 (a weight, not a cap), 3Gi is a hard memory limit of 3 x 2^30 bytes."""
    spec = container_spec(
        "/nowhere/train_config.json",
        _placement(cpu="1500m", memory="3Gi"),
        _settings(trainer_image, data_root),
        run_name="manual__limits",
    )
    cli = docker_client(None)
    cid = create_container(cli, spec)
    try:
        host = cli.inspect_container(cid)["HostConfig"]
    finally:
        cli.remove_container(cid, force=True)
    assert host["CpuShares"] == 1536 and host["Memory"] == 3 * 2**30
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]


def test_the_training_container_drops_every_capability_and_cannot_gain_privileges(
    trainer_image: str, data_root: Path
) -> None:
    import docker

    client = docker.from_env()
    seen: list[dict[str, Any]] = []
    done = threading.Event()

    def watch() -> None:  # inspect the container while it trains (it is removed at the end)
        while not done.is_set() and not seen:
            for c in client.containers.list(filters={"name": "mlops-train-manual__caps"}):
                seen.append(c.attrs)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = run_training_container(
            fast_config(data_root, run="manual__caps"),
            _placement(),
            _settings(trainer_image, data_root),
            run_name="manual__caps",
            log=lambda _: None,
        )
    finally:
        done.set()
        watcher.join()
    assert result.epochs_run == 1
    assert seen, "the training container was never seen running"
    host = seen[0]["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd") and host["Privileged"] is False
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["NetworkMode"] == "none" and not host.get("DeviceRequests")
    assert seen[0]["Config"]["User"] == f"{os.getuid()}:{os.getgid()}"


LAUNCHER = """
import json, sys
from include.mlops.training.config import TrainConfig
from include.mlops.training.container import TrainingContainerSettings, run_training_container
args = json.loads(sys.argv[1])
settings = TrainingContainerSettings(
    image=args["image"], data_root=args["data_root"], extra_mounts=tuple(tuple(m) for m in args["mounts"])
)
run_training_container(
    TrainConfig.from_dict(args["config"]), args["placement"], settings, run_name=args["run"], log=print
)
"""


def test_a_retry_after_the_worker_was_killed_reattaches_to_the_running_container(
    trainer_image: str, tmp_path: Path
) -> None:
    """A launcher (a worker's task) is kill -9'd while its container trains; the retry follows that
    container to its end and takes its result: one container, one training, no 409."""
    import docker

    data_root = small_data_root(tmp_path, n_rows=4000)
    config = TrainConfig.from_dict({**fast_config(data_root, run="manual__re").to_dict(), "epochs": 12})
    placement = _placement()
    settings = _settings(trainer_image, data_root)
    client = docker.from_env()
    started = int(time.time()) - 1
    args = {
        "image": trainer_image,
        "data_root": str(data_root),
        "mounts": [list(m) for m in settings.extra_mounts],
        "config": config.to_dict(),
        "placement": placement,
        "run": "manual__re",
    }
    worker = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, json.dumps(args)],
        cwd=str(repo_root()),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the container is training: its first epoch is logged
            found = client.containers.list(filters={"name": "mlops-train-manual__re"})
            if found and b"epoch 1/12" in found[0].logs():
                break
            assert worker.poll() is None, "the launcher ended before its container trained"
            time.sleep(0.2)
        else:
            pytest.fail("the training container never logged its first epoch")
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    (orphan,) = client.containers.list(filters={"name": "mlops-train-manual__re"})
    assert orphan.status == "running"  # the worker died; its container trains on

    lines: list[str] = []
    result = run_training_container(config, placement, settings, run_name="manual__re", log=lines.append)
    assert any("reattaching to training container mlops-train-manual__re" in line for line in lines), lines
    assert (result.epochs_run, result.epochs_total, result.resumed_from_epoch) == (12, 12, None)  # one training
    created = list(
        client.events(
            since=started,
            until=int(time.time()) + 1,
            decode=True,
            filters={"type": "container", "event": "create", "label": "mlops/run=manual__re"},
        )
    )
    assert len(created) == 1, created
    assert not client.containers.list(all=True, filters={"name": "mlops-train-manual__re"})


def test_a_stopped_container_left_by_an_earlier_try_is_replaced(trainer_image: str, data_root: Path) -> None:
    """A container of this run that is not running (the engine restarted, or it was created and the
    worker died before starting it) is removed and training starts again: no 409 on the fixed name."""
    settings = _settings(trainer_image, data_root)
    config = fast_config(data_root, run="manual__left")
    cli = docker_client(None)
    create_container(cli, container_spec("/nowhere.json", _placement(), settings, run_name="manual__left"))
    lines: list[str] = []
    result = run_training_container(config, _placement(), settings, run_name="manual__left", log=lines.append)
    assert result.epochs_run == 1
    assert any("replacing training container mlops-train-manual__left left created" in line for line in lines), lines
