"""The `kubernetes` serving target against a Kubernetes API stand-in over real HTTP (kmock).

What is proven here: the objects the target writes (server-side apply bodies, validated against the
Kubernetes 1.30 and 1.32 schemas), the HTTPRoute weights in the order the stand-in received them,
convergence of every move when repeated and after a worker is killed (SIGKILL) mid-move, and the
readiness deadline naming the pod's reason. What is not: real pods, a real Gateway splitting real
traffic, the HPA scaling, a real API server's apply semantics beyond the stand-in's (see
tests/k8s_serving_standin.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest

from include.mlops.deploy.k8s_manifests import ServingResources
from include.mlops.deploy.kubernetes import KubernetesServingConfig, KubernetesTarget
from include.mlops.deploy.target import DeployTarget, ModelRef
from include.mlops.errors import BackendNotReady, DeployError, ServingBusy
from tests.k8s_serving_standin import NAMESPACE, live_objects, serving_standin
from tests.k8s_standin import restricted_profile_violations
from tests.ports import listening_socket

pytestmark = pytest.mark.slow  # ~15-35 s in all: two workers started as processes and SIGKILLed

MODEL = "fraud-detector"
D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
STABLE, CANARY, ROUTE = f"mlops-{MODEL}-stable", f"mlops-{MODEL}-canary", f"mlops-{MODEL}"
OWNER = {"dag_id": "release", "run_id": "manual__1"}
SCHEMA_VERSIONS = ("1.30", "1.32")


def ref(version: str, digest: str) -> ModelRef:
    return ModelRef(MODEL, version, Path(f"/models/{MODEL}/{version}/model.onnx"), digest)


@pytest.fixture()
def standin(tmp_path: Path) -> Iterator[SimpleNamespace]:
    with serving_standin(tmp_path, NAMESPACE) as s:
        yield s


@pytest.fixture()
def make_target(standin: SimpleNamespace) -> Callable[[], KubernetesTarget]:
    """A fresh target object each call: what a retried task on another worker constructs."""

    def make() -> KubernetesTarget:
        cfg = KubernetesServingConfig(namespace=NAMESPACE, kube_config=standin.kubeconfig, workers_namespace="airflow")
        return KubernetesTarget(
            MODEL, registry="registry.example:5000", config=cfg, resources=ServingResources(min_replicas=2),
            poll_s=0.05, update_timeout_s=20,
        )  # fmt: skip

    return make


def route_history(standin: SimpleNamespace) -> list[dict[str, int]]:
    """Each HTTPRoute body applied, as service -> weight."""
    out = []
    for body in standin.applied:
        if body["kind"] == "HTTPRoute":
            out.append({r["name"]: r["weight"] for r in body["spec"]["rules"][0]["backendRefs"]})
    return out


def snapshot(standin: SimpleNamespace) -> dict[str, dict[str, Any]]:
    """Every live object's spec, generation and our annotations (what a repeated move must leave unchanged).
    Pods are left out: the controller removes old ones asynchronously; a new rollout shows in `generation`."""
    out: dict[str, dict[str, Any]] = {}
    for plural in ("deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets",
                   "networkpolicies", "httproutes"):  # fmt: skip
        for name, obj in live_objects(standin, plural).items():
            ann = {k: v for k, v in (obj["metadata"].get("annotations") or {}).items() if k != "mlops.dev/started-at"}
            out[f"{plural}/{name}"] = {
                "spec": obj.get("spec"),
                "annotations": ann,
                "generation": obj["metadata"].get("generation"),
            }
    return out


def test_target_is_a_deploy_target(make_target: Callable[[], KubernetesTarget]) -> None:
    assert isinstance(make_target(), DeployTarget)


def test_release_stable_canary_10_50_promote_routes_weights_in_order_and_leaves_one_stable_at_the_canary_digest(
    standin: SimpleNamespace, make_target: Callable[[], KubernetesTarget]
) -> None:
    t = make_target()
    stable = t.ensure_stable(ref("1", D1), ready_timeout_s=10)
    assert (stable.version, stable.image_digest) == ("1", D1)
    assert stable.url == f"http://{STABLE}.{NAMESPACE}.svc.cluster.local:8080"
    canary = t.start_canary(ref("2", D2), ready_timeout_s=10, owner=OWNER)
    assert canary.version == "2" and t.canary_owner() == OWNER
    hpas = live_objects(standin, "horizontalpodautoscalers")
    assert (hpas[CANARY]["spec"]["minReplicas"], hpas[CANARY]["spec"]["maxReplicas"]) == (1, 1)  # fixed for analysis
    assert (hpas[STABLE]["spec"]["minReplicas"], hpas[STABLE]["spec"]["maxReplicas"]) == (2, 6)
    for pct in (10, 50):
        t.set_canary_weight(pct)
        assert t.status().canary_weight_pct == pct
    promoted = t.promote()

    assert (promoted.version, promoted.image_digest) == ("2", D2)
    assert route_history(standin) == [
        {STABLE: 100},
        {STABLE: 100, CANARY: 0},
        {STABLE: 90, CANARY: 10},
        {STABLE: 50, CANARY: 50},
        {STABLE: 0, CANARY: 100},  # the canary serves everything while the stable rolls to its digest
        {STABLE: 100},
    ]
    for plural in ("deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets"):
        assert set(live_objects(standin, plural)) == {STABLE}, plural
    assert set(live_objects(standin, "httproutes")) == {ROUTE}
    assert set(live_objects(standin, "networkpolicies")) == {ROUTE}
    dep = live_objects(standin, "deployments")[STABLE]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == f"registry.example:5000/{MODEL}@{D2}"
    assert dep["metadata"]["annotations"]["mlops.dev/version"] == "2"
    assert dep["metadata"]["annotations"]["mlops.dev/promoted-from"] == json.dumps(OWNER, separators=(",", ":"))
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # the canary's pods go by garbage collection, after the Deployment (asynchronous, as in a cluster)
    _wait(lambda: all(p.startswith(f"{STABLE}-") for p in live_objects(standin, "pods")), 5, "canary pods gone")
    route = live_objects(standin, "httproutes")[ROUTE]
    assert route["spec"]["parentRefs"] == [{"name": "mlops-gateway", "namespace": "gateway-system"}]
    assert t.health().dead == () and t.status().canary is None


def test_server_pods_are_restricted_probed_limited_spread_and_scraped(
    standin: SimpleNamespace, make_target: Callable[[], KubernetesTarget]
) -> None:
    make_target().ensure_stable(ref("1", D1), ready_timeout_s=10)
    pod = live_objects(standin, "deployments")[STABLE]["spec"]["template"]
    spec, c = pod["spec"], pod["spec"]["containers"][0]
    assert restricted_profile_violations({"spec": spec}) == []
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in spec["volumes"]
    assert spec["automountServiceAccountToken"] is False
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == c["startupProbe"]["httpGet"]["path"] == "/health/live"
    assert c["resources"] == {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
    assert {t["topologyKey"] for t in spec["topologySpreadConstraints"]} >= {"kubernetes.io/hostname"}
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    policy = live_objects(standin, "networkpolicies")[ROUTE]["spec"]
    peers = [p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in policy["ingress"][0]["from"]]
    assert peers == ["gateway-system", "monitoring", "airflow"]
    assert [p["port"] for p in policy["egress"][0]["ports"]] == [53, 53]  # DNS only


def test_an_rps_target_adds_a_custom_metric_to_the_hpa_and_validates() -> None:
    from include.mlops.deploy import k8s_manifests as km

    scope = km.Scope(model_name=MODEL, namespace=NAMESPACE, registry="r")
    hpa = km.autoscaler(scope, "stable", ServingResources(rps_per_pod=50))
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Pods"]
    assert hpa["spec"]["metrics"][1]["pods"]["metric"]["name"] == km.RPS_METRIC
    for version in SCHEMA_VERSIONS:
        kubernetes_validate.validate(hpa, version, strict=True)
    with pytest.raises(DeployError, match="rps_per_pod=0"):
        ServingResources(rps_per_pod=0)


def test_rollback_moves_the_weights_to_the_stable_before_deleting_the_canary(
    standin: SimpleNamespace, make_target: Callable[[], KubernetesTarget]
) -> None:
    t = make_target()
    t.ensure_stable(ref("1", D1), ready_timeout_s=10)
    t.start_canary(ref("2", D2), ready_timeout_s=10, owner=OWNER)
    t.set_canary_weight(50)
    assert t.rollback("p99 too high", owner={"dag_id": "release", "run_id": "other"}) is False  # not its canary
    standin.calls.clear()
    assert t.rollback("p99 too high", owner=OWNER) is True

    route_apply = standin.calls.index(
        ("PATCH", f"/apis/gateway.networking.k8s.io/v1/namespaces/{NAMESPACE}/httproutes/{ROUTE}")
    )
    delete_canary = standin.calls.index(("DELETE", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{CANARY}"))
    assert route_apply < delete_canary
    assert route_history(standin)[-1] == {STABLE: 100}
    for plural in ("deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets"):
        assert set(live_objects(standin, plural)) == {STABLE}, plural
    last = json.loads(live_objects(standin, "httproutes")[ROUTE]["metadata"]["annotations"]["mlops.dev/last-rollback"])
    assert (last["reason"], last["version"], last["canary_owner"]) == ("p99 too high", "2", OWNER)
    assert live_objects(standin, "deployments")[STABLE]["metadata"]["annotations"]["mlops.dev/image-digest"] == D1


def test_every_move_repeated_converges_to_the_same_objects(
    standin: SimpleNamespace, make_target: Callable[[], KubernetesTarget]
) -> None:
    moves: list[Callable[[KubernetesTarget], Any]] = [
        lambda t: t.ensure_stable(ref("1", D1), ready_timeout_s=10),
        lambda t: t.start_canary(ref("2", D2), ready_timeout_s=10, owner=OWNER),
        lambda t: t.set_canary_weight(10),
        lambda t: t.set_record("pending_alias", {"version": "2"}),
        lambda t: t.promote(),
        lambda t: t.start_canary(ref("3", D3), ready_timeout_s=10, owner=OWNER),
        lambda t: t.rollback("bad", owner=OWNER),
    ]
    for move in moves:
        first = move(make_target())
        after_first = snapshot(standin)
        second = move(make_target())  # a retry on another worker
        assert snapshot(standin) == after_first
        assert first == second or (first is True and second is False)  # a second rollback finds nothing to do
    assert make_target().record("pending_alias") == {"version": "2"}  # records survive route re-applies
    assert set(live_objects(standin, "deployments")) == {STABLE}


def _start_worker(standin: SimpleNamespace, call: str) -> subprocess.Popen[bytes]:
    code = (
        "from pathlib import Path\n"
        "from include.mlops.deploy.k8s_manifests import ServingResources\n"
        "from include.mlops.deploy.kubernetes import KubernetesServingConfig, KubernetesTarget\n"
        "from include.mlops.deploy.target import ModelRef\n"
        f"cfg = KubernetesServingConfig(namespace={NAMESPACE!r}, kube_config={standin.kubeconfig!r})\n"
        f"t = KubernetesTarget({MODEL!r}, registry='registry.example:5000', config=cfg,\n"
        "    resources=ServingResources(min_replicas=2), poll_s=0.05, update_timeout_s=120)\n"
        f"{call}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=env["PYTHONPATH"])


def _wait(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.05)


def test_worker_killed_mid_promote_then_a_fresh_target_converges(
    standin: SimpleNamespace, make_target: Callable[[], KubernetesTarget]
) -> None:
    t = make_target()
    t.ensure_stable(ref("1", D1), ready_timeout_s=10)
    t.start_canary(ref("2", D2), ready_timeout_s=10, owner=OWNER)
    t.set_canary_weight(50)
    standin.faults[f"{STABLE}@{D2}"] = ("ContainerCreating", "pulling the image")  # the stable's rollout hangs
    worker = _start_worker(standin, "t.promote()")
    try:

        def rolling() -> bool:
            dep = live_objects(standin, "deployments")[STABLE]
            return dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith(D2)

        _wait(rolling, 60, "the killed worker's promote rolled the stable to the canary's digest")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    assert route_history(standin)[-1] == {STABLE: 0, CANARY: 100}  # users are on the canary meanwhile
    assert make_target().status().canary is not None  # the promotion is visibly unfinished

    del standin.faults[f"{STABLE}@{D2}"]
    promoted = make_target().promote()
    assert (promoted.version, promoted.image_digest) == ("2", D2)
    assert route_history(standin)[-1] == {STABLE: 100}
    assert set(live_objects(standin, "deployments")) == {STABLE}
    assert make_target().health().dead == ()


def test_worker_killed_while_its_canary_starts_then_the_retry_reuses_that_canary(
    standin: SimpleNamespace, make_target: Callable[[], KubernetesTarget]
) -> None:
    make_target().ensure_stable(ref("1", D1), ready_timeout_s=10)
    standin.faults[D2] = ("ContainerCreating", "pulling the image")
    worker = _start_worker(
        standin, f"t.start_canary(ModelRef({MODEL!r}, '2', Path('/m'), {D2!r}), 60, owner={OWNER!r})"
    )
    try:
        _wait(lambda: CANARY in live_objects(standin, "deployments"), 60, "the killed worker created the canary")
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    with pytest.raises(ServingBusy, match="manual__1"):  # another release must not take over
        make_target().start_canary(ref("3", D3), ready_timeout_s=1, owner={"dag_id": "release", "run_id": "b"})
    del standin.faults[D2]
    canary = make_target().start_canary(ref("2", D2), ready_timeout_s=10, owner=OWNER)
    assert canary.image_digest == D2
    assert set(live_objects(standin, "deployments")) == {STABLE, CANARY}
    assert route_history(standin)[-1] == {STABLE: 100, CANARY: 0}


def test_a_stable_that_cannot_roll_to_the_canary_goes_back_and_the_rollback_then_serves_it(
    standin: SimpleNamespace, make_target: Callable[[], KubernetesTarget]
) -> None:
    t = make_target()
    t.ensure_stable(ref("1", D1), ready_timeout_s=10)
    t.start_canary(ref("2", D2), ready_timeout_s=10, owner=OWNER)
    standin.faults[f"{STABLE}@{D2}"] = ("Unschedulable", "0/3 nodes are available: 3 Insufficient memory.")
    t.update_timeout_s = 1
    with pytest.raises(DeployError, match=r"Insufficient memory.*stable stays at v1; the canary keeps 100 %"):
        t.promote()
    dep = live_objects(standin, "deployments")[STABLE]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith(D1)
    assert route_history(standin)[-1] == {STABLE: 0, CANARY: 100}
    assert make_target().rollback("promotion failed", owner=OWNER) is True
    assert route_history(standin)[-1] == {STABLE: 100}
    _wait(lambda: make_target().health().stable is True, 5, "the old stable available")
    assert make_target().status().stable.version == "1"  # type: ignore[union-attr]


def test_two_releases_racing_to_start_a_canary_leave_exactly_one_owner(
    standin: SimpleNamespace, make_target: Callable[[], KubernetesTarget]
) -> None:
    make_target().ensure_stable(ref("1", D1), ready_timeout_s=10)
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def release(run_id: str, version: str, digest: str) -> None:
        target = make_target()
        barrier.wait()
        try:
            target.start_canary(ref(version, digest), ready_timeout_s=10, owner={"dag_id": "release", "run_id": run_id})
            outcomes[run_id] = "started"
        except ServingBusy:
            outcomes[run_id] = "busy"

    threads = [threading.Thread(target=release, args=a) for a in (("a", "2", D2), ("b", "3", D3))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert sorted(outcomes.values()) == ["busy", "started"]
    winner = next(k for k, v in outcomes.items() if v == "started")
    assert make_target().canary_owner() == {"dag_id": "release", "run_id": winner}


def test_a_canary_never_ready_is_removed_at_the_deadline_naming_the_pods_reason(
    standin: SimpleNamespace, make_target: Callable[[], KubernetesTarget]
) -> None:
    t = make_target()
    t.ensure_stable(ref("1", D1), ready_timeout_s=10)
    standin.faults[D2] = ("ImagePullBackOff", 'Back-off pulling image "registry.example:5000/fraud-detector"')
    with pytest.raises(BackendNotReady, match=r"canary .* v2 .*not available within 1 s: pod .*ImagePullBackOff"):
        t.start_canary(ref("2", D2), ready_timeout_s=1, owner=OWNER)
    for plural in ("deployments", "services", "horizontalpodautoscalers", "poddisruptionbudgets"):
        assert set(live_objects(standin, plural)) == {STABLE}, plural
    assert route_history(standin)[-1] == {STABLE: 100}


def test_an_unschedulable_stable_replacement_names_the_scheduler_and_keeps_the_old_stable(
    standin: SimpleNamespace, make_target: Callable[[], KubernetesTarget]
) -> None:
    t = make_target()
    t.ensure_stable(ref("1", D1), ready_timeout_s=10)
    standin.faults[D3] = ("Unschedulable", "0/3 nodes are available: 3 Insufficient cpu.")
    with pytest.raises(BackendNotReady, match=r"Pending, Unschedulable: 0/3 nodes .*stays at v1"):
        t.ensure_stable(ref("3", D3), ready_timeout_s=1)
    dep = live_objects(standin, "deployments")[STABLE]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith(D1)
    assert t.status().stable is not None and t.status().stable.version == "1"  # type: ignore[union-attr]


# The HTTPRoute's constraints from the Gateway API v1 CRD (standard channel) that our bodies touch;
# kubernetes-validate ships only the built-in kinds' schemas, and the CRD file is not vendored here.
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _check_http_route(body: dict[str, Any]) -> None:
    spec = body["spec"]
    assert 1 <= len(spec["parentRefs"]) <= 32 and all(_DNS1123.match(p["name"]) for p in spec["parentRefs"])
    assert 1 <= len(spec["rules"]) <= 16
    for rule in spec["rules"]:
        for m in rule["matches"]:
            assert m["path"]["type"] in ("Exact", "PathPrefix", "RegularExpression") and m["path"]["value"][0] == "/"
        assert len(rule["backendRefs"]) <= 16
        for b in rule["backendRefs"]:
            assert _DNS1123.match(b["name"]) and len(b["name"]) <= 253
            assert 1 <= b["port"] <= 65535  # required for a Service backend
            assert isinstance(b["weight"], int) and 0 <= b["weight"] <= 1_000_000


def test_every_applied_manifest_validates_against_the_kubernetes_schemas(
    standin: SimpleNamespace, make_target: Callable[[], KubernetesTarget]
) -> None:
    t = make_target()
    t.ensure_stable(ref("1", D1), ready_timeout_s=10)
    t.start_canary(ref("2", D2), ready_timeout_s=10, owner=OWNER)
    t.set_canary_weight(25)
    t.promote()
    kinds = set()
    for body in standin.applied:
        kinds.add(body["kind"])
        if body["kind"] == "HTTPRoute":
            _check_http_route(body)
            continue
        for version in SCHEMA_VERSIONS:
            kubernetes_validate.validate(body, version, strict=True)
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
                     "HTTPRoute"}  # fmt: skip


def test_a_route_the_gateway_refuses_or_a_lost_route_is_an_unhealthy_router_and_restore_reapplies_it(
    standin: SimpleNamespace, make_target: Callable[[], KubernetesTarget]
) -> None:
    t = make_target()
    t.ensure_stable(ref("1", D1), ready_timeout_s=10)
    assert t.health().router is True
    route = next(o for (res, _ns, name), o in standin.handler.objects.items() if res.plural == "httproutes")
    refused = {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound"}
    route.patch({"status": {"parents": [{"parentRef": {"name": "mlops-gateway"}, "conditions": [refused]}]}})
    assert t.health().router is False  # what a gateway controller reports on the route
    route.delete()  # the route was deleted by hand
    assert t.health().dead == ("router",)
    assert t.restore() == (f"HTTPRoute {ROUTE}",)
    assert t.health().dead == () and route_history(standin)[-1] == {STABLE: 100}


def test_serving_config_from_env_and_a_missing_registry_is_refused() -> None:
    cfg = KubernetesServingConfig.from_env(
        {"MLOPS_K8S_NAMESPACE": "serving", "MLOPS_K8S_GATEWAY": "gw/public", "MLOPS_K8S_GATEWAY_URL": "http://gw"}
    )
    assert (cfg.namespace, cfg.gateway.namespace, cfg.gateway.name, cfg.gateway_url) == (
        "serving", "gw", "public", "http://gw"
    )  # fmt: skip
    with pytest.raises(DeployError, match=r"extra\.registry"):
        KubernetesTarget(MODEL, registry="", config=cfg)


def test_an_unreachable_api_or_a_bad_kubeconfig_is_a_deploy_error_naming_it(tmp_path: Path) -> None:
    sock = listening_socket()  # a port nobody answers on: bound, then closed
    port = sock.getsockname()[1]
    sock.close()
    kubeconfig = tmp_path / "kubeconfig.yaml"
    kubeconfig.write_text(
        json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        })
    )  # fmt: skip
    cfg = KubernetesServingConfig(namespace=NAMESPACE, kube_config=str(kubeconfig))
    with pytest.raises(DeployError, match=rf"kubernetes API http://127.0.0.1:{port} unreachable for GET"):
        KubernetesTarget(MODEL, registry="r", config=cfg).status()
    missing = KubernetesServingConfig(namespace=NAMESPACE, kube_config=str(tmp_path / "nope.yaml"))
    with pytest.raises(DeployError, match=r"cannot configure the API client from kubeconfig .*nope\.yaml"):
        KubernetesTarget(MODEL, registry="r", config=missing).status()


def test_kubernetes_profile_serving_target_builds_a_kubernetes_target(tmp_path: Path) -> None:
    from include.mlops.deploy.factory import serving_target
    from include.mlops.settings.project import ProjectSettings

    s = ProjectSettings(
        profile="kubernetes", mlflow_tracking_uri="http://127.0.0.1:1", mlflow_backend_store=tmp_path,
        mlflow_artifact_root=tmp_path, data_root=tmp_path, serving_root=tmp_path, registered_model=MODEL,
        docker_base_url=None, image_registry="registry.example:5000", serving_replicas=3,
    )  # fmt: skip
    target = serving_target(s, MODEL)
    assert isinstance(target, KubernetesTarget)
    assert (target.resources.min_replicas, target.resources.max_replicas) == (3, 9)
