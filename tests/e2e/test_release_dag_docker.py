"""The release DAG end to end on the `docker` profile: images built and pushed, served on Docker Swarm.

`airflow dags test release` with Variable mlops_profile=docker and docker_default pointing at the
local engine and registry: build_image pushes the serving image, the canary and the stable are
Swarm services, and this test's own traffic goes through the router the whole time. Needs
docker/start_engine.sh (engine, registry, swarm); skips without an engine, fails under CI=true.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator

import httpx
import pytest

from include.mlops.canary.load import LoadGenerator, RequestResult
from include.mlops.dag_test import DagTestRun
from include.mlops.deploy import swarm_services as sv
from include.mlops.deploy.swarm import SwarmTarget
from include.mlops.registry.mlflow_registry import CHAMPION, MlflowRegistry, TrainingRecord
from tests.e2e.conftest import Deployment
from tests.model_fixtures import build_faulty_model, build_logistic_model, sample_records

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures("docker_engine")]

REGISTRY = f"127.0.0.1:{os.environ.get('MLOPS_REGISTRY_PORT', '5001')}"
RECORDS = sample_records(40, seed=3)
FAST = {"steps_pct": [50, 100], "interval_s": 3, "min_requests": 10, "load_rps": 20, "max_p99_latency_ratio": 2.5}
# one replica per track keeps this file's three releases short; 2 per track: test_swarm_serving.py
DOCKER_ENV = {
    "AIRFLOW_VAR_MLOPS_PROFILE": "docker",
    "AIRFLOW_VAR_MLOPS_SERVING_REPLICAS": "1",
    "AIRFLOW_CONN_DOCKER_DEFAULT": json.dumps(
        {"conn_type": "docker", "host": "unix:///var/run/docker.sock", "extra": {"registry": REGISTRY}}
    ),
}


class DockerReleases:
    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.reg = MlflowRegistry(dep.mlflow_uri)
        self.models = dep.base / "models"
        self.target = SwarmTarget(dep.serving_root / dep.model_name, dep.model_name, registry=REGISTRY, replicas=1)

    def register(self, onnx_path: object, key: str) -> str:
        run_id = self.reg.log_training(
            TrainingRecord(
                run_key=f"e2e-docker/{key}",
                params={"source": key},
                history=[],
                holdout_metrics={"auc": 0.9},
                model_onnx_path=onnx_path,  # type: ignore[arg-type]
                input_example_path=None,
                tags={},
                artifacts={},
            ),
            f"e2e-{self.dep.model_name}",
        )
        return str(
            self.reg.register_version(self.dep.model_name, run_id, key, tags={"gate.decision": "passed"}).version
        )

    def release(self, version: str) -> DagTestRun:
        conf = {"model_name": self.dep.model_name, "version": version, **FAST}
        return self.dep.dags_test("release", conf, env=DOCKER_ENV)

    def served_by(self, n: int = 10) -> set[str]:
        url = self.target.status().router_url
        with httpx.Client(timeout=10) as c:
            return {
                c.post(f"{url}/predict", json={"records": RECORDS[:2]}).headers["x-model-version"] for _ in range(n)
            }

    def stable_image(self) -> str:
        svc = self.target.client.services.get(sv.service_name(self.dep.model_name, "stable"))
        return str(svc.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"])

    def digest(self, version: str) -> str:
        return self.reg.get_version(self.dep.model_name, version).tags["image.digest"]


@pytest.fixture(scope="module")
def rel(deployment: Deployment) -> Iterator[DockerReleases]:
    deployment.write_batch("2026-11-02", n_rows=3_000, seed=21)
    r = DockerReleases(deployment)
    yield r
    r.target.stop_all()


def _failed_not_by(results: list[RequestResult], version: str | None = None) -> list[RequestResult]:
    return [r for r in results if r.status != 200 and not (version and r.served_version == version)]


def test_first_release_on_docker_serves_the_image_build_image_recorded(rel: DockerReleases) -> None:
    v = rel.register(build_logistic_model(rel.models / "good1.onnx", seed=0), "good1")
    run = rel.release(v)
    assert run.state == "success", run.explain()
    assert rel.reg.get_alias(rel.dep.model_name, CHAMPION).version == v  # type: ignore[union-attr]
    assert rel.stable_image() == f"{REGISTRY}/{rel.dep.model_name}@{rel.digest(v)}"
    assert rel.served_by() == {v}


def test_a_good_canary_is_promoted_on_swarm_without_a_failed_request(rel: DockerReleases) -> None:
    old = rel.target.status().stable
    assert old is not None
    v = rel.register(build_logistic_model(rel.models / "good2.onnx", seed=0), "good2")
    stop = threading.Event()
    with LoadGenerator(rel.target.status().router_url or "", RECORDS, rps=8, stop_event=stop) as load:
        run = rel.release(v)
    results = load.results()
    assert run.state == "success", run.explain()
    assert run.tasks["promote"] == "success" and "step 50 %: pass" in run.log, run.explain()
    assert rel.stable_image() == f"{REGISTRY}/{rel.dep.model_name}@{rel.digest(v)}"
    assert rel.target.status().canary is None and rel.served_by() == {v}
    assert len(results) > 40 and _failed_not_by(results) == [], _failed_not_by(results)[:3]
    assert {r.served_version for r in results} >= {old.version, v}


def test_a_faulty_canary_is_rolled_back_on_swarm_and_the_stable_keeps_serving(rel: DockerReleases) -> None:
    stable_before = rel.target.status().stable
    assert stable_before is not None
    image_before = rel.stable_image()
    v = rel.register(build_faulty_model(rel.models / "faulty.onnx"), "faulty")
    stop = threading.Event()
    with LoadGenerator(rel.target.status().router_url or "", RECORDS, rps=8, stop_event=stop) as load:
        run = rel.release(v)
    results = load.results()
    assert run.state == "failed", run.explain()
    assert run.tasks["rollback"] == "failed" and "canary error rate 100.0% > max" in run.log, run.explain()
    assert rel.target.status().canary is None and rel.stable_image() == image_before
    assert rel.served_by() == {stable_before.version}
    assert rel.reg.get_version(rel.dep.model_name, v).tags["release.status"] == "rejected"
    assert len(results) > 20 and _failed_not_by(results, v) == [], _failed_not_by(results, v)[:3]
