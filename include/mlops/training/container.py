"""Run the training entrypoint in a container on the local Docker engine (DockerOperator).

For a ``docker`` placement: the router counted this machine's CPUs, memory and GPUs, and the
container gets exactly the placement's share (``cpus``, ``mem_limit``, GPUs through a device
request). The data root is bind-mounted at the same absolute path, so the config, batch,
checkpoints and outputs have one path on both sides (as with the pod's RWX volume). The container
has no network: training reads and writes files only.

Settings (Airflow Variables): ``mlops_training_image`` (docker/train.Dockerfile; its entrypoint is
``python -m include.mlops.training.train``), optional ``mlops_training_docker_mounts``: a JSON list
of extra read-only ``"host:container"`` bind mounts (a shared dataset cache; in development, a
working tree and interpreter so a code change needs no image rebuild). The engine is the
``docker_default`` connection's host, else ``DOCKER_HOST``, else the local socket.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from include.mlops.errors import SettingsError
from include.mlops.routing.quantities import cpu_millicores, memory_mib
from include.mlops.training.config import TrainConfig, TrainingResult
from include.mlops.training.pod import TRAINING_IMAGE_VARIABLE, check_under_data_root
from include.mlops.training.runner import FAILURE_TAIL_LINES, launch_failed, write_config

MOUNTS_VARIABLE = "mlops_training_docker_mounts"
GPU_RESOURCE_PREFIXES = ("nvidia.com/gpu",)
LABELS = {"app.kubernetes.io/name": "mlops-training", "app.kubernetes.io/component": "train"}


def worker_user() -> str:
    """The worker's own uid:gid: what the container writes on the bind mount belongs to the worker."""
    import os

    return f"{os.getuid()}:{os.getgid()}"


@dataclass(frozen=True)
class TrainingContainerSettings:
    image: str
    data_root: str
    docker_url: str | None = None
    extra_mounts: tuple[tuple[str, str], ...] = field(default=())
    user: str = field(default_factory=worker_user)

    @classmethod
    def from_airflow(cls, data_root: str | Path, docker_url: str | None) -> TrainingContainerSettings:
        from airflow.sdk import Variable

        image = Variable.get(TRAINING_IMAGE_VARIABLE, default=None)
        if not image:
            raise SettingsError(
                f"the router placed training on the local Docker engine but Variable {TRAINING_IMAGE_VARIABLE} "
                "(the training image, docker/train.Dockerfile) is not set (env AIRFLOW_VAR_<NAME> or "
                "airflow_settings.yaml)"
            )
        mounts = parse_mounts(Variable.get(MOUNTS_VARIABLE, default="[]"))
        return cls(str(image), str(Path(data_root).resolve()), docker_url, mounts)


def parse_mounts(raw: str | list[Any]) -> tuple[tuple[str, str], ...]:
    """``["host:container", ...]`` (JSON or a list) -> ((host, container), ...), absolute paths only."""
    if isinstance(raw, str) and not raw.strip():
        return ()
    try:
        items = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as exc:
        raise SettingsError(f"Variable {MOUNTS_VARIABLE} is not JSON: {exc}") from exc
    if not isinstance(items, list):
        raise SettingsError(f"Variable {MOUNTS_VARIABLE} must be a JSON list of 'host:container', got {items!r}")
    out = []
    for item in items:
        host, sep, container = str(item).partition(":")
        if not sep or not host.startswith("/") or not container.startswith("/"):
            raise SettingsError(
                f"Variable {MOUNTS_VARIABLE}: {item!r} must be 'HOST_PATH:CONTAINER_PATH', both absolute"
            )
        out.append((host, container))
    return tuple(out)


def container_limits(placement: Mapping[str, Any]) -> dict[str, Any]:
    """cpus, mem_limit and GPU device requests from the placement's requests/limits."""
    from docker.types import DeviceRequest

    requests = dict(placement.get("resources_requests") or {})
    limits = dict(placement.get("resources_limits") or {})
    out: dict[str, Any] = {}
    if "cpu" in requests:
        out["cpus"] = cpu_millicores(requests["cpu"]) / 1000
    memory = limits.get("memory") or requests.get("memory")
    if memory:
        out["mem_limit"] = f"{memory_mib(memory)}m"
    gpus = sum(int(v) for k, v in requests.items() if k.startswith(GPU_RESOURCE_PREFIXES))
    if gpus:
        out["device_requests"] = [DeviceRequest(count=gpus, capabilities=[["gpu"]])]
    return out


def training_container_operator(
    config_path: str,
    placement: Mapping[str, Any],
    settings: TrainingContainerSettings,
    *,
    run_name: str,
    task_id: str = "train_container",
) -> Any:
    """A DockerOperator running the training image's entrypoint with ``--config <config_path>``."""
    from airflow.providers.docker.operators.docker import DockerOperator
    from docker.types import Mount

    mounts = [Mount(target=settings.data_root, source=settings.data_root, type="bind")]
    mounts += [Mount(target=c, source=h, type="bind", read_only=True) for h, c in settings.extra_mounts]
    return DockerOperator(
        task_id=task_id,
        image=settings.image,
        command=["--config", config_path],
        docker_url=settings.docker_url,
        container_name=f"mlops-train-{run_name}"[:120],
        environment={"PYTHONUNBUFFERED": "1"},
        mounts=mounts,
        mount_tmp_dir=False,
        network_mode="none",
        user=settings.user,
        auto_remove="force",
        labels={**LABELS, "mlops/run": run_name[:63]},
        **container_limits(placement),
    )


def run_training_container(
    config: TrainConfig,
    placement: Mapping[str, Any],
    settings: TrainingContainerSettings,
    *,
    context: Any = None,
    run_name: str = "run",
    log: Callable[[str], None] = print,
) -> TrainingResult:
    """Run the training container to its end, then read the result from the output dir.

    Raises TrainingFailed naming the image, the exit status and the last log lines."""
    check_under_data_root(config, settings.data_root, where="the training container (bind mount)")
    config_path = write_config(config)
    if context is None:
        from airflow.sdk import get_current_context

        context = get_current_context()
    op = training_container_operator(str(config_path), placement, settings, run_name=run_name)
    log(
        f"training container {op.container_name} on {settings.docker_url or 'the local engine'}: image "
        f"{settings.image}, cpus={op.cpus}, mem_limit={op.mem_limit}, "
        f"gpus={sum(d.count for d in op.device_requests or [])}, data root {settings.data_root} bind-mounted"
    )
    try:
        op.execute(context)
    except Exception as exc:
        logs = [x.decode() if isinstance(x, bytes) else str(x) for x in getattr(exc, "logs", None) or []]
        tail = collections.deque((ln.rstrip("\n") for chunk in logs for ln in chunk.splitlines()), FAILURE_TAIL_LINES)
        what = f"training container {op.container_name} on {op.docker_url} (image {settings.image})"
        raise launch_failed(what, config_path, exc, tail) from exc
    return TrainingResult.from_output_dir(config.output_dir)
