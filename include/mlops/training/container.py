"""Run the training entrypoint in a container on the local Docker engine (the Docker SDK).

For a ``docker`` placement: the router counted this machine's CPUs, memory and GPUs, and the
container gets exactly the placement's share (``cpus``, ``mem_limit``, and the very GPUs the router
reserved: a device request naming their ids, not a count the engine fills with any GPU). The data
root is bind-mounted at the same absolute path, so the config, batch, checkpoints and outputs have
one path on both sides (as with the pod's RWX volume). The container has no network, runs as the
worker's uid, drops every capability and cannot gain privileges (``no-new-privileges``).

The container is named after the run (``mlops-train-<run>``). A worker that died while it ran
leaves it behind: the retry reattaches to a running one (follows its log and takes its result,
one training, as the pod launcher does) and replaces a stopped one (training resumes from its
last checkpoint). DockerOperator is not used: it can neither drop capabilities nor reattach.

Settings (Airflow Variables): ``mlops_training_image`` (docker/train.Dockerfile; its entrypoint is
``python -m include.mlops.training.train``), optional ``mlops_training_docker_mounts``: a JSON list
of extra read-only ``"host:container"`` bind mounts (a shared dataset cache; in development, a
working tree and interpreter so a code change needs no image rebuild). The engine is the
``docker_default`` connection's host, else ``DOCKER_HOST``, else the local socket.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.errors import SettingsError
from include.mlops.routing.quantities import cpu_millicores, memory_mib
from include.mlops.training.config import TrainConfig, TrainingResult
from include.mlops.training.runner import (
    FAILURE_TAIL_LINES,
    TRAINING_IMAGE_VARIABLE,
    Lease,
    check_under_data_root,
    keep_renewed,
    launch_failed,
    placement_gpu_ids,
    write_config,
)

if TYPE_CHECKING:
    # by module path: the repo's own docker/ folder shadows the SDK's top-level name for mypy
    from docker.api.client import APIClient

MOUNTS_VARIABLE = "mlops_training_docker_mounts"
LABELS = {"app.kubernetes.io/name": "mlops-training", "app.kubernetes.io/component": "train"}
CAP_DROP = ["ALL"]
SECURITY_OPT = ["no-new-privileges"]


def worker_user() -> str:
    """The worker's own uid:gid: what the container writes on the bind mount belongs to the worker."""
    return f"{os.getuid()}:{os.getgid()}"


@dataclass(frozen=True)
class TrainingContainerSettings:
    image: str
    data_root: str
    docker_url: str | None = None
    extra_mounts: tuple[tuple[str, str], ...] = field(default=())
    user: str = field(default_factory=worker_user)

    @classmethod
    def from_values(
        cls, *, image: str | None, mounts: str | list[Any], data_root: str | Path, docker_url: str | None
    ) -> TrainingContainerSettings:
        """From the Variables' raw values (``include.mlops.airflow.config`` reads them)."""
        if not image:
            raise SettingsError(
                f"the router placed training on the local Docker engine but Variable {TRAINING_IMAGE_VARIABLE} "
                "(the training image, docker/train.Dockerfile) is not set (env AIRFLOW_VAR_<NAME> or "
                "airflow_settings.yaml)"
            )
        return cls(str(image), str(Path(data_root).resolve()), docker_url, parse_mounts(mounts))


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
    """cpus, mem_limit and the GPU device request (the claim's device ids) from the placement."""
    from docker.types import DeviceRequest

    requests = dict(placement.get("resources_requests") or {})
    limits = dict(placement.get("resources_limits") or {})
    out: dict[str, Any] = {}
    if "cpu" in requests:
        out["cpus"] = cpu_millicores(requests["cpu"]) / 1000
    memory = limits.get("memory") or requests.get("memory")
    if memory:
        out["mem_limit"] = f"{memory_mib(memory)}m"
    gpu_ids = placement_gpu_ids(placement)
    if gpu_ids:
        out["device_requests"] = [DeviceRequest(device_ids=gpu_ids, capabilities=[["gpu"]])]
    return out


def container_name(run_name: str) -> str:
    return f"mlops-train-{run_name}"[:120]


@dataclass(frozen=True)
class ContainerSpec:
    """What ``create_container`` gets: the container's own fields and its host config's."""

    name: str
    image: str
    create: dict[str, Any]
    host: dict[str, Any]

    def describe(self) -> str:
        ids = [i for d in self.host.get("device_requests") or [] for i in d.device_ids or []]
        return (
            f"cpus={self.host.get('cpu_shares', 0) / 1024:g}, mem_limit={self.host.get('mem_limit')}, gpus={ids}, "
            f"cap_drop={self.host['cap_drop']}, security_opt={self.host['security_opt']}"
        )


def container_spec(
    config_path: str, placement: Mapping[str, Any], settings: TrainingContainerSettings, *, run_name: str
) -> ContainerSpec:
    """The training container for a placement: image entrypoint with ``--config <config_path>``."""
    from docker.types import Mount

    mounts = [Mount(target=settings.data_root, source=settings.data_root, type="bind")]
    mounts += [Mount(target=c, source=h, type="bind", read_only=True) for h, c in settings.extra_mounts]
    limits = container_limits(placement)
    host: dict[str, Any] = {
        "mounts": mounts,
        "network_mode": "none",
        "mem_limit": limits.get("mem_limit"),
        "device_requests": limits.get("device_requests"),
        "cap_drop": list(CAP_DROP),
        "security_opt": list(SECURITY_OPT),
        "auto_remove": False,  # removed by the launcher once its result is read
    }
    if "cpus" in limits:
        host["cpu_shares"] = round(limits["cpus"] * 1024)  # a share, not a cap: throttling slows training
    name = container_name(run_name)
    create = {
        "command": ["--config", config_path],
        "environment": {"PYTHONUNBUFFERED": "1"},
        "user": settings.user,
        "labels": {**LABELS, "mlops/run": run_name[:63]},
    }
    return ContainerSpec(name=name, image=settings.image, create=create, host=host)


def docker_client(docker_url: str | None) -> APIClient:
    """The low-level client of ``docker_url``, else of DOCKER_HOST / the local socket."""
    from docker.api.client import APIClient

    url = docker_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    return APIClient(base_url=url, timeout=120)


def create_container(cli: Any, spec: ContainerSpec) -> str:
    """Create (not start) the container; returns its id. Pulls the image when the engine lacks it."""
    if not cli.images(name=spec.image):
        cli.pull(spec.image)
    host_config = cli.create_host_config(**{k: v for k, v in spec.host.items() if v is not None})
    created = cli.create_container(image=spec.image, name=spec.name, host_config=host_config, **spec.create)
    return str(created["Id"])


def _existing(cli: Any, name: str) -> dict[str, Any] | None:
    import docker.errors

    try:
        info: dict[str, Any] = cli.inspect_container(name)
    except docker.errors.NotFound:
        return None
    labels = (info.get("Config") or {}).get("Labels") or {}
    if labels.get("app.kubernetes.io/name") != LABELS["app.kubernetes.io/name"]:
        raise SettingsError(
            f"a container named {name} exists on the engine but is not a training container (labels {labels}); "
            "remove or rename it"
        )
    return info


def _follow(chunks: Iterable[bytes | str], tail: collections.deque[str], log: Callable[[str], None]) -> None:
    """Log a container's output line by line as it comes (chunks are not line-aligned)."""
    pending = ""
    for chunk in chunks:
        pending += chunk.decode(errors="replace") if isinstance(chunk, bytes) else chunk
        *lines, pending = pending.split("\n")
        for line in lines:
            tail.append(line)
            log(line)
    if pending:
        tail.append(pending)
        log(pending)


def _run_or_reattach(cli: Any, spec: ContainerSpec, tail: collections.deque[str], log: Callable[[str], None]) -> int:
    """Exit code of this run's training container: the running one a dead worker left, else a new one."""
    found = _existing(cli, spec.name)
    if found is not None and found["State"].get("Running"):
        log(
            f"reattaching to training container {spec.name} (running since {found['State'].get('StartedAt')}): "
            "an earlier try's worker died while it ran; following it instead of starting a second training"
        )
        cid = str(found["Id"])
        try:
            _follow(cli.logs(cid, stdout=True, stderr=True, stream=True, follow=True), tail, log)
            return int(cli.wait(cid, timeout=None)["StatusCode"])
        finally:
            cli.remove_container(cid, force=True)
    if found is not None:
        state = found["State"]
        log(
            f"replacing training container {spec.name} left {state.get('Status')} (exit code {state.get('ExitCode')}) "
            "by an earlier try; training resumes from its last checkpoint"
        )
        cli.remove_container(found["Id"], force=True)
    cid = create_container(cli, spec)
    try:
        stream = cli.attach(cid, stdout=True, stderr=True, stream=True)  # before start: no line is missed
        cli.start(cid)
        _follow(stream, tail, log)
        return int(cli.wait(cid, timeout=None)["StatusCode"])
    finally:
        cli.remove_container(cid, force=True)


def run_training_container(
    config: TrainConfig,
    placement: Mapping[str, Any],
    settings: TrainingContainerSettings,
    *,
    run_name: str = "run",
    log: Callable[[str], None] = print,
    lease: Lease | None = None,
) -> TrainingResult:
    """Run the training container to its end (or follow the one an earlier try left running), then
    read the result from the output dir. ``lease``: renewed while the container runs.

    Raises TrainingFailed naming the container, the image, the exit status and the last log lines."""
    check_under_data_root(config, settings.data_root, where="the training container (bind mount)")
    config_path = write_config(config)
    spec = container_spec(str(config_path), placement, settings, run_name=run_name)
    engine = settings.docker_url or os.environ.get("DOCKER_HOST") or "the local engine"
    log(
        f"training container {spec.name} on {engine}: image {settings.image}, {spec.describe()}, "
        f"data root {settings.data_root} bind-mounted"
    )
    what = f"training container {spec.name} on {engine} (image {settings.image})"
    tail: collections.deque[str] = collections.deque(maxlen=FAILURE_TAIL_LINES)
    with keep_renewed(lease, log):
        try:
            code = _run_or_reattach(docker_client(settings.docker_url), spec, tail, log)
        except Exception as exc:
            raise launch_failed(what, config_path, exc, tail=tail) from exc
    if code != 0:
        raise launch_failed(
            what, config_path, RuntimeError(f"exit code {code}"), tail=tail, how=f" with exit code {code}"
        )
    return TrainingResult.from_output_dir(config.output_dir)
