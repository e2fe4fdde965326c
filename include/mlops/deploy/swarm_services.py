"""Docker Swarm services for the `docker` profile: one hardened, digest-pinned service per track.

What a track's service looks like (spec), where its replicas answer (task addresses on the
serving network) and what Swarm said about the tasks that failed (`docker service ps`' errors).
The deploy target (swarm.py) decides when to create, update and remove them.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from include.mlops.errors import DeployError

if TYPE_CHECKING:
    # by module path: the repo's own docker/ folder shadows the SDK's top-level name for mypy
    from docker.client import DockerClient

LABEL = "io.mlops"
CONTAINER_PORT = 8080
SERVING_NETWORK = "mlops-serving"
SERVER_UID = "10001:10001"  # the serving image's user (docker/serve.Dockerfile)
NS = 1_000_000_000
# the image's own HEALTHCHECK polls every 10 s; a replica must be judged ready within a release's
# ready_timeout_s, so the service polls every 2 s (a Python start per poll: ~40 ms of CPU). A server
# loads its model in 5-8 s here; one still failing after the 15 s start period and 3 more polls is
# unhealthy, and Swarm replaces it, which `docker service ps` then names (the readiness error).
HEALTH_CMD = [
    "CMD",
    "python",
    "-c",
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health/ready', timeout=2)",
]
# a poll starts a Python interpreter: 0.1 s idle, over 2 s seen while two other replicas load their
# model on this 2-core machine; a 2 s timeout then had Swarm replace healthy replicas as unhealthy
HEALTH_TIMEOUT_S = 8
_NAME_BAD = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class ServiceLimits:
    """Per-replica resources: limits cap a replica, reservations keep Swarm from over-packing the node."""

    # half a core: replicas that load their model at once cannot starve those serving (2-core host)
    cpu_limit: float = 0.5
    memory_limit_bytes: int = 512 * 2**20
    cpu_reservation: float = 0.1
    memory_reservation_bytes: int = 160 * 2**20
    # GPUs as Swarm generic resources, only where the node advertises them (dockerd --node-generic-resource)
    gpus: int = 0
    gpu_kind: str = "NVIDIA-GPU"


def service_name(model_name: str, track: str) -> str:
    """A DNS-label-safe service name (Swarm's rule), e.g. mlops-fraud-detector-stable."""
    base = _NAME_BAD.sub("-", model_name.lower()).strip("-")[: 63 - len(f"mlops--{track}")]
    return f"mlops-{base}-{track}"


def image_reference(registry: str, model_name: str, digest: str) -> str:
    """`<registry>/<model>@sha256:...`: the repository build_image pushed to, pinned by digest."""
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest or ""):
        raise DeployError(f"image digest {digest!r} of {model_name} is not a sha256 digest: cannot pin the image")
    return f"{registry}/{model_name.strip().lower().replace(' ', '-')}@{digest}"


def ensure_swarm(client: DockerClient) -> None:
    """Raise DeployError unless this engine is an active Swarm manager."""
    swarm = client.info().get("Swarm", {})
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        raise DeployError(
            f"the Docker engine is not a Swarm manager (state {swarm.get('LocalNodeState')!r}): run "
            "docker/start_engine.sh, which runs `docker swarm init --advertise-addr 127.0.0.1` once"
        )


def ensure_network(client: DockerClient, name: str = SERVING_NETWORK) -> str:
    """The serving network, created once: a swarm-scoped bridge, so replicas get addresses this
    host reaches directly and no port is published on any host interface (see docs/DESIGN.md)."""
    from docker.errors import APIError

    for net in client.networks.list(names=[name]):
        if net.name == name:
            return name
    try:
        client.networks.create(name, driver="bridge", scope="swarm", labels={f"{LABEL}.network": "serving"})
    except APIError as exc:  # another worker created it first
        if not any(n.name == name for n in client.networks.list(names=[name])):
            raise DeployError(f"cannot create the serving network {name}: {exc}") from exc
    return name


def _node_gpus(client: DockerClient, kind: str) -> int:
    total = 0
    for node in client.nodes.list():
        for res in node.attrs.get("Description", {}).get("Resources", {}).get("GenericResources") or []:
            discrete = res.get("DiscreteResourceSpec") or {}
            if discrete.get("Kind") == kind:
                total += int(discrete.get("Value", 0))
    return total


def service_spec(
    client: DockerClient,
    *,
    name: str,
    image: str,
    replicas: int,
    labels: dict[str, str],
    env: dict[str, str],
    limits: ServiceLimits,
    network: str,
    monitor_s: float,
    stop_grace_s: float,
) -> dict[str, Any]:
    """Keyword arguments of `client.services.create` for one track."""
    from docker.types import Healthcheck, Mount, Resources, RestartPolicy, RollbackConfig, ServiceMode, UpdateConfig

    generic: dict[str, int] | None = None
    if limits.gpus:
        have = _node_gpus(client, limits.gpu_kind)
        if have < limits.gpus:
            raise DeployError(
                f"serving asks for {limits.gpus} {limits.gpu_kind} per replica but the Swarm nodes advertise {have}"
            )
        generic = {limits.gpu_kind: limits.gpus}
    update = {"parallelism": 1, "delay": 0, "order": "start-first", "monitor": int(monitor_s * NS)}
    return {
        "image": image,
        "name": name,
        "labels": labels,
        "container_labels": labels,
        "env": [f"{k}={v}" for k, v in env.items()],
        "mode": ServiceMode("replicated", replicas=replicas),
        "networks": [network],
        "healthcheck": Healthcheck(
            test=HEALTH_CMD, interval=2 * NS, timeout=HEALTH_TIMEOUT_S * NS, retries=3, start_period=15 * NS
        ),
        "resources": Resources(
            cpu_limit=int(limits.cpu_limit * NS),
            mem_limit=limits.memory_limit_bytes,
            cpu_reservation=int(limits.cpu_reservation * NS),
            mem_reservation=limits.memory_reservation_bytes,
            generic_resources=generic,
        ),
        # "any", not "on-failure": a replica Swarm stops as unhealthy exits 0 on SIGTERM, and Swarm 20.10
        # records it 'complete', which on-failure never restarts (seen: a service left with 0 replicas)
        "restart_policy": RestartPolicy(condition="any", delay=NS, max_attempts=0),
        "update_config": UpdateConfig(failure_action="rollback", max_failure_ratio=0.0, **update),
        "rollback_config": RollbackConfig(failure_action="pause", **update),
        "read_only": True,
        "mounts": [Mount(target="/tmp", source=None, type="tmpfs", tmpfs_size=64 * 2**20)],
        "user": SERVER_UID,
        "cap_drop": ["ALL"],
        "stop_grace_period": int(stop_grace_s * NS),
    }


def create_service(client: DockerClient, spec: dict[str, Any]) -> Any:
    """Create the service; no-new-privileges rides along in the raw spec (Privileges.NoNewPrivileges,
    engine API >= 1.46); older engines set it daemon-wide (dockerd --no-new-privileges, start_engine.sh)."""
    from docker.models.services import _get_create_service_kwargs

    kwargs = _get_create_service_kwargs("create", dict(spec))
    kwargs["task_template"]["ContainerSpec"]["Privileges"] = {"NoNewPrivileges": True}
    created = client.api.create_service(**kwargs)
    return client.services.get(created["ID"])


@dataclass(frozen=True)
class Replica:
    task_id: str
    container_id: str
    address: str  # ip on the serving network

    @property
    def dial(self) -> str:
        return f"{self.address}:{CONTAINER_PORT}"

    @property
    def url(self) -> str:
        return f"http://{self.dial}"


def running_replicas(service: Any, network: str = SERVING_NETWORK) -> list[Replica]:
    """Tasks Swarm reports running (with a healthcheck: healthy) and meant to run, with their addresses.

    A swarm-scoped bridge network lists no addresses in the task: the container's own network
    settings have it (one engine call per replica).
    """
    from docker.errors import NotFound

    out = []
    for t in service.tasks(filters={"desired-state": "running"}):
        st = t.get("Status", {})
        cid = st.get("ContainerStatus", {}).get("ContainerID", "")
        if st.get("State") != "running" or not cid:
            continue
        try:
            nets = service.client.api.inspect_container(cid)["NetworkSettings"]["Networks"]
        except NotFound:  # gone between the two calls
            continue
        ip = (nets.get(network) or {}).get("IPAddress")
        if ip:
            out.append(Replica(t["ID"], cid, ip))
    return sorted(out, key=lambda r: tuple(int(p) for p in r.address.split(".")))


def task_errors(service: Any, limit: int = 4) -> list[str]:
    """Why the newest tasks are not running: `docker service ps --no-trunc`'s state and error, with the
    container's last healthcheck output and log line (Swarm 20.10 records a replica it stopped as
    unhealthy as 'complete' with no error: the probe and the log say why)."""
    from docker.errors import APIError

    tasks = sorted(service.tasks(), key=lambda t: t.get("CreatedAt", ""), reverse=True)
    out = []
    for t in tasks:
        st = t.get("Status", {})
        if st.get("State") == "running" and t.get("DesiredState") == "running":
            continue
        cs = st.get("ContainerStatus") or {}
        line = f"task {t['ID'][:12]} {st.get('State')} ({st.get('Message')}, exit {cs.get('ExitCode')})"
        if st.get("Err"):
            line += f": {st['Err']}"
        if cs.get("ContainerID"):
            try:
                c = service.client.api.inspect_container(cs["ContainerID"])
                probes = (c.get("State", {}).get("Health") or {}).get("Log") or []
                if probes:
                    last = (probes[-1]["Output"].strip().splitlines() or [""])[-1]
                    line += f"; health {c['State']['Health']['Status']}: {last[-200:]}"
                logs = service.client.api.logs(cs["ContainerID"], tail=40).decode(errors="replace").splitlines()
                why = [x for x in logs if re.search(r"error|failed|exception", x, re.IGNORECASE)] or logs
                if why:
                    line += f"; log: {why[-1].strip()[-300:]}"
            except APIError:
                pass
        out.append(line)
        if len(out) >= limit:
            break
    return out


def labels_of(service: Any) -> dict[str, str]:
    return dict(service.attrs.get("Spec", {}).get("Labels") or {})


def set_labels(client: DockerClient, service: Any, changes: dict[str, str | None]) -> None:
    """Change service labels only (tasks keep running); retried on a concurrent update's version clash."""
    from docker.errors import APIError

    for attempt in range(5):
        service.reload()
        labels = labels_of(service)
        for k, v in changes.items():
            if v is None:
                labels.pop(k, None)
            else:
                labels[k] = v
        spec = service.attrs["Spec"]
        try:
            client.api.update_service(
                service.id,
                service.version,
                task_template=spec["TaskTemplate"],
                name=spec["Name"],
                labels=labels,
                mode=spec.get("Mode"),
                update_config=spec.get("UpdateConfig"),
                rollback_config=spec.get("RollbackConfig"),
                endpoint_spec=spec.get("EndpointSpec"),
            )
            return
        except APIError as exc:
            if "out of sequence" not in str(exc) or attempt == 4:
                raise DeployError(f"cannot update the labels of service {spec['Name']}: {exc}") from exc
            time.sleep(0.1)


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def update_image(client: DockerClient, service: Any, image: str, changes: dict[str, str]) -> None:
    """Roll the service to `image` with its own update_config (start-first, rollback on failure)."""
    from docker.errors import APIError

    service.reload()
    spec = service.attrs["Spec"]
    template = json.loads(json.dumps(spec["TaskTemplate"]))
    cs = template["ContainerSpec"]
    cs["Image"] = image
    cs["Labels"] = {**(cs.get("Labels") or {}), **changes}
    digest = image.rsplit("@", 1)[-1]
    cs["Env"] = [e for e in cs.get("Env") or [] if not e.startswith("MLOPS_IMAGE_DIGEST=")]
    cs["Env"].append(f"MLOPS_IMAGE_DIGEST={digest}")
    try:
        client.api.update_service(
            service.id,
            service.version,
            task_template=template,
            name=spec["Name"],
            labels={**labels_of(service), **changes},
            mode=spec.get("Mode"),
            update_config=spec.get("UpdateConfig"),
            rollback_config=spec.get("RollbackConfig"),
            endpoint_spec=spec.get("EndpointSpec"),
        )
    except APIError as exc:
        raise DeployError(f"cannot update service {spec['Name']} to {image}: {exc}") from exc


def wait_update(service: Any, *, image: str, replicas: int, timeout_s: float) -> None:
    """Until every replica meant to run is `image` and running, and Swarm calls the update done; DeployError
    naming Swarm's message if it rolled back. (UpdateStatus is still empty just after the update call.)"""
    deadline = time.monotonic() + timeout_s
    while True:
        service.reload()
        status = service.attrs.get("UpdateStatus") or {}
        state = status.get("State")
        if state in ("rollback_started", "rollback_completed", "rollback_paused", "paused"):
            raise DeployError(
                f"Swarm did not finish updating {service.name} ({state}): {status.get('Message')}; "
                f"task errors: {'; '.join(task_errors(service)) or 'none reported'}"
            )
        tasks = service.tasks(filters={"desired-state": "running"})
        new = [t for t in tasks if t["Spec"]["ContainerSpec"]["Image"] == image]
        ready = [t for t in new if t.get("Status", {}).get("State") == "running"]
        if state in (None, "completed") and len(ready) >= replicas and len(new) == len(tasks):
            return
        if time.monotonic() > deadline:
            raise DeployError(
                f"the update of {service.name} to {image} is still {state} after {timeout_s:g} s "
                f"({len(ready)} of {replicas} replicas on it running)"
            )
        time.sleep(0.25)
