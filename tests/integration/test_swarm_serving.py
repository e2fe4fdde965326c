"""The docker profile's serving target on a real Docker engine in Swarm mode, under steady traffic.

Images are built and pushed to the local registry by the project's own builder; each track runs
2 replicas; 20 requests/s go through the Caddy router the whole time. Needs docker/start_engine.sh
(engine, registry, one-node swarm) and the offline base image; skips without an engine, fails
under CI=true. The tests share one deployment and run in file order (promotion, rollback, a
killed replica, a canary that never becomes healthy).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from include.mlops.canary.load import LoadGenerator, RequestResult
from include.mlops.deploy import supervisor
from include.mlops.deploy import swarm_services as sv
from include.mlops.deploy.swarm import SwarmTarget
from include.mlops.deploy.target import ModelRef
from include.mlops.errors import BackendNotReady
from tests.model_fixtures import build_faulty_model, build_logistic_model, build_unloadable_model, sample_records

REGISTRY = f"127.0.0.1:{os.environ.get('MLOPS_REGISTRY_PORT', '5001')}"
RPS = 20.0
pytestmark = pytest.mark.usefixtures("docker_engine")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from docker.client import DockerClient

    from tests.services import service_missing

    c = DockerClient(version="auto", timeout=120)
    if c.info().get("Swarm", {}).get("LocalNodeState") != "active":
        service_missing("the Docker engine is not in Swarm mode: run docker/start_engine.sh (it inits the swarm)")
    yield c
    c.close()


@pytest.fixture(scope="module")
def model_name() -> str:
    return f"swarm-it-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def images(client: Any, model_name: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelRef]:
    """v1, v2 (good), v3 (every prediction fails), v4 (never loads): built and pushed, pinned by digest."""
    from include.mlops.serving_image import DockerImageBuilder, ModelArtifact

    builder = DockerImageBuilder(client.api, REGISTRY)
    makers = {"1": lambda p: build_logistic_model(p, seed=1), "2": lambda p: build_logistic_model(p, seed=2),
              "3": build_faulty_model, "4": build_unloadable_model}  # fmt: skip
    refs = {}
    for version, make in makers.items():
        path = make(tmp_path_factory.mktemp(f"m{version}") / "model.onnx")
        built = builder.build_and_push(ModelArtifact(model_name, version, path), tag=f"v{version}")
        refs[version] = ModelRef(model_name, version, path, built.digest)
    return refs


@pytest.fixture(scope="module")
def target(
    client: Any, images: dict[str, ModelRef], model_name: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SwarmTarget]:
    t = SwarmTarget(tmp_path_factory.mktemp("serving"), model_name, registry=REGISTRY, replicas=2, monitor_s=2.0)
    try:
        t.ensure_stable(images["1"], ready_timeout_s=90)
        yield t
    finally:
        t.stop_all()


class Traffic:
    """20 requests/s through the router for the duration of a `with` block."""

    def __init__(self, url: str) -> None:
        self.stop = threading.Event()
        self.load = LoadGenerator(url, sample_records(60, seed=3), rps=RPS, stop_event=self.stop, timeout_s=10.0)

    def __enter__(self) -> Traffic:
        self.load.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.load.stop()

    def between(self, t0: float, t1: float) -> list[RequestResult]:
        return [r for r in self.load.results() if t0 <= r.started_at_unix < t1]


def _failed(results: list[RequestResult]) -> list[RequestResult]:
    return [r for r in results if r.status != 200]


def _share(results: list[RequestResult], version: str) -> float:
    return 100.0 * sum(r.served_version == version for r in results) / max(1, len(results))


def _service_image(client: Any, name: str) -> str:
    return str(client.services.get(name).attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"])


def test_promotion_under_traffic_fails_no_request_and_splits_by_weight(
    target: SwarmTarget, images: dict[str, ModelRef], client: Any, model_name: str
) -> None:
    router = target.status().router_url
    assert router is not None
    observed: dict[int, float] = {}
    with Traffic(router) as traffic:
        t_start = time.time()
        target.start_canary(images["2"], ready_timeout_s=90, owner={"dag_id": "release", "run_id": "r1"})
        for pct in (25, 50):
            target.set_canary_weight(pct)
            t0 = time.time()
            time.sleep(8.0)
            observed[pct] = _share(traffic.between(t0 + 0.5, time.time()), "2")
        stable = target.promote()
        time.sleep(2.0)
        t_end = time.time()
        results = traffic.between(t_start, t_end)
    assert len(results) > 30 * RPS * 0.6, f"only {len(results)} requests went out"
    assert _failed(results) == [], f"{len(_failed(results))} of {len(results)} failed: {_failed(results)[:3]}"
    print(f"promotion: {len(results)} requests, 0 failed; canary share observed {observed}")
    for pct, share in observed.items():
        assert abs(share - pct) <= 10, f"at {pct} % the canary answered {share:.1f} % of requests"
    assert stable.version == "2" and target.status().canary is None
    assert _share(traffic.between(t_end - 1.5, t_end), "2") == 100.0
    # the stable service runs exactly the digest the builder pushed, on every replica
    stable_svc = sv.service_name(model_name, "stable")
    assert _service_image(client, stable_svc).endswith(f"@{images['2'].image_digest}")
    replicas = sv.running_replicas(client.services.get(stable_svc))
    assert len(replicas) == 2
    containers = [client.containers.get(r.container_id) for r in replicas]
    for c in containers:
        assert c.attrs["Config"]["Image"].endswith(f"@{images['2'].image_digest}")
        host = c.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] and host["CapDrop"] == ["ALL"] and c.attrs["Config"]["User"] == sv.SERVER_UID
        assert host["NanoCpus"] > 0 and host["Memory"] > 0 and not host.get("PortBindings")
    with pytest.raises(Exception):  # the canary service is gone
        client.services.get(sv.service_name(model_name, "canary"))
    # repeated, promotion changes nothing
    assert target.promote().version == "2"


def test_rollback_of_a_faulty_canary_fails_no_request_on_the_stable_share(
    target: SwarmTarget, images: dict[str, ModelRef]
) -> None:
    router = target.status().router_url
    assert router is not None
    owner = {"dag_id": "release", "run_id": "r2"}
    with Traffic(router) as traffic:
        t_start = time.time()
        target.start_canary(images["3"], ready_timeout_s=90, owner=owner)
        target.set_canary_weight(50)
        time.sleep(4.0)
        t_rb = time.time()
        assert target.rollback("faulty canary", owner=owner) is True
        time.sleep(3.0)
        results = traffic.between(t_start, time.time())
        after = traffic.between(time.time() - 2.0, time.time())
    canary_errors = [r for r in results if r.served_version == "3"]
    assert canary_errors and all(r.status >= 500 for r in canary_errors), "the faulty canary took no traffic"
    stable_share = [r for r in results if r.served_version != "3"]
    assert _failed(stable_share) == [], _failed(stable_share)[:3]
    assert all(r.started_at_unix < t_rb + 1.0 for r in canary_errors)
    assert after and {r.served_version for r in after} == {"2"} and _failed(after) == []
    assert target.status().canary is None
    assert target.rollback("again", owner=owner) is False  # repeated: nothing left to remove


def test_a_killed_stable_replica_is_replaced_by_swarm_with_under_one_percent_failed(
    target: SwarmTarget, client: Any, model_name: str
) -> None:
    router = target.status().router_url
    assert router is not None
    target.keep_supervised()
    assert target.keep_supervised() == supervisor.running_pid(target.state_dir)  # one per deployment
    svc = client.services.get(sv.service_name(model_name, "stable"))
    before = sv.running_replicas(svc)
    assert len(before) == 2
    with Traffic(router) as traffic:
        time.sleep(2.0)
        t0 = time.time()
        client.containers.get(before[0].container_id).kill()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = sv.running_replicas(svc)
            if len(now) == 2 and before[0].container_id not in {r.container_id for r in now}:
                break
            time.sleep(0.25)
        replaced_s = time.time() - t0
        assert len(now) == 2, f"Swarm did not replace the killed replica within 60 s: {sv.task_errors(svc)}"
        # the replacement has a new address: the supervisor (started by promote on this profile, as
        # here) sees the router out of date and routes to it, within about a second
        rerouted_s = None
        t_replaced = time.monotonic()
        while time.monotonic() - t_replaced < 10:
            if target.health().router is True:
                rerouted_s = time.monotonic() - t_replaced
                break
            time.sleep(0.1)
        assert rerouted_s is not None, (target.state_dir / supervisor.LOG_FILE).read_text()[-2000:]
        assert "route to the running replicas" in (target.state_dir / supervisor.LOG_FILE).read_text()
        time.sleep(4.0)
        results = traffic.between(t0, time.time())
    failed = _failed(results)
    assert len(failed) <= 0.01 * len(results), f"{len(failed)} of {len(results)} failed: {failed[:3]}"
    new = next(r for r in now if r.container_id != before[1].container_id)
    import httpx

    served = httpx.get(f"{new.url}/samples", params={"since": 0}, timeout=5).json()["status"]
    assert served, "the replacement replica got no traffic after restore()"
    print(
        f"replica replaced in {replaced_s:.1f} s, rerouted by the supervisor {rerouted_s:.1f} s later; "
        f"{len(failed)} of {len(results)} requests failed"
    )


def test_a_canary_that_never_becomes_healthy_is_removed_naming_the_task_error(
    target: SwarmTarget, images: dict[str, ModelRef], client: Any, model_name: str
) -> None:
    t0 = time.monotonic()
    with pytest.raises(BackendNotReady) as err:
        target.start_canary(images["4"], ready_timeout_s=40, owner={"dag_id": "release", "run_id": "r3"})
    waited = time.monotonic() - t0
    assert 40 <= waited < 55
    # Swarm stopped the replicas as unhealthy; the error carries its task list, the probe and the log
    message = str(err.value)
    assert "docker service ps: task " in message and "health unhealthy" in message, message
    assert "0 of 2 replicas healthy" in message and "cannot load ONNX model" in message
    assert target.status().canary is None
    assert not client.services.list(filters={"name": sv.service_name(model_name, "canary")})
    assert target.health().stable is True


def test_image_reference_refuses_a_missing_digest(tmp_path: Path) -> None:
    from include.mlops.errors import DeployError

    with pytest.raises(DeployError, match="is not a sha256 digest"):
        sv.image_reference(REGISTRY, "m", "latest")
