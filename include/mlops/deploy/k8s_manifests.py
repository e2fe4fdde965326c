"""The Kubernetes objects of the `kubernetes` serving target, as plain dicts (server-side apply bodies).

Per track (stable, canary): a Deployment pinned to the image digest, a Service, a
HorizontalPodAutoscaler (autoscaling/v2, CPU) and a PodDisruptionBudget. Per model: one Gateway API
v1 HTTPRoute whose backendRefs weights are the split, and one NetworkPolicy. Pure functions, no
client: the target applies them and the tests validate them against the Kubernetes schema.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from include.mlops.errors import DeployError

CONTAINER_PORT = 8080
SERVER_UID = 10001  # the serving image's user (docker/serve.Dockerfile: USER 10001:10001)
PREFIX = "mlops.dev"
MANAGED_BY = "mlops-release"
TRACKS = ("stable", "canary")
# the per-pod rate of the server's predict_requests_total, as prometheus-adapter names it
RPS_METRIC = "predict_requests_per_second"
# Object name per model and track; DNS-1035 labels (Services need them): 63 chars, [a-z0-9-]
_NAME_BAD = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class GatewayRef:
    """The Gateway (installed by the platform team) the model's HTTPRoute attaches to."""

    name: str = "mlops-gateway"
    namespace: str = "gateway-system"


@dataclass(frozen=True)
class ServingResources:
    """Requests and limits of one model-server container, HPA bounds and target CPU utilisation."""

    cpu_request: str = "250m"
    cpu_limit: str = "1"
    memory_request: str = "512Mi"
    memory_limit: str = "512Mi"
    min_replicas: int = 2
    max_replicas: int = 6
    canary_replicas: int = 1
    cpu_utilization_pct: int = 70
    # optional second HPA metric: requests per second per pod, from the custom metrics API
    # (prometheus-adapter rule in deploy/k8s/base/prometheus-scrape.yaml); None: CPU only
    rps_per_pod: int | None = None

    def __post_init__(self) -> None:
        for name in ("min_replicas", "max_replicas", "canary_replicas"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 100:
                raise DeployError(f"serving resources {name}={v!r}: must be an integer in 1..100")
        if self.max_replicas < self.min_replicas:
            raise DeployError(
                f"serving resources max_replicas={self.max_replicas}: must be >= min_replicas={self.min_replicas}"
            )
        if self.rps_per_pod is not None and not (isinstance(self.rps_per_pod, int) and self.rps_per_pod >= 1):
            raise DeployError(f"serving resources rps_per_pod={self.rps_per_pod!r}: must be an integer >= 1 or None")
        if not 1 <= self.cpu_utilization_pct <= 100:
            raise DeployError(f"serving resources cpu_utilization_pct={self.cpu_utilization_pct!r}: must be in 1..100")


@dataclass(frozen=True)
class Scope:
    """Where one model's objects live and what they may talk to."""

    model_name: str
    namespace: str
    registry: str
    gateway: GatewayRef = GatewayRef()
    # namespaces whose pods may reach the servers: Prometheus (scrapes /metrics) and the Airflow
    # workers (read /samples for the canary analysis when no Prometheus is configured)
    prometheus_namespace: str = "monitoring"
    workers_namespace: str | None = None

    @property
    def base(self) -> str:
        return _NAME_BAD.sub("-", self.model_name.lower()).strip("-")[:40] or "model"

    def name(self, track: str) -> str:
        return f"mlops-{self.base}-{track}"

    @property
    def route_name(self) -> str:
        return f"mlops-{self.base}"

    def labels(self, track: str | None = None) -> dict[str, str]:
        out = {
            "app.kubernetes.io/name": "mlops-model-server",
            "app.kubernetes.io/instance": self.base,
            "app.kubernetes.io/managed-by": MANAGED_BY,
        }
        if track is not None:
            out[f"{PREFIX}/track"] = track
        return out

    def selector(self, track: str) -> dict[str, str]:
        return {"app.kubernetes.io/instance": self.base, f"{PREFIX}/track": track}

    def image(self, digest: str | None) -> str:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest or ""):
            raise DeployError(f"image digest {digest!r} of {self.model_name} is not a sha256 digest: cannot pin it")
        if not self.registry:
            raise DeployError("the kubernetes profile pulls images from a registry: set the image registry")
        return f"{self.registry}/{self.model_name.strip().lower().replace(' ', '-')}@{digest}"

    def meta(self, name: str, track: str | None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
        m: dict[str, Any] = {"name": name, "namespace": self.namespace, "labels": self.labels(track)}
        if annotations:
            m["annotations"] = annotations
        return m


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period_s,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def deployment(scope: Scope, track: str, *, digest: str, version: str, annotations: dict[str, str],
               res: ServingResources) -> dict[str, Any]:  # fmt: skip
    """A track's Deployment. No `replicas`: the HPA owns it (a field both set would flap under apply)."""
    pod_labels = scope.labels(track)
    container = {
        "name": "server",
        "image": scope.image(digest),
        "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        "env": [
            {"name": "MLOPS_MODEL_NAME", "value": scope.model_name},
            {"name": "MLOPS_MODEL_VERSION", "value": str(version)},
            {"name": "MLOPS_IMAGE_DIGEST", "value": digest},
        ],
        # startup covers the model load (up to 60 s); liveness only restarts a wedged process;
        # readiness takes a pod out of the Service while it cannot serve
        "startupProbe": _probe("/health/live", 2, 30),
        "livenessProbe": _probe("/health/live", 10, 3),
        "readinessProbe": _probe("/health/ready", 2, 3),
        "resources": {
            "requests": {"cpu": res.cpu_request, "memory": res.memory_request},
            "limits": {"cpu": res.cpu_limit, "memory": res.memory_limit},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": SERVER_UID,
            "runAsGroup": SERVER_UID,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": scope.meta(scope.name(track), track, annotations),
        "spec": {
            "selector": {"matchLabels": scope.selector(track)},
            "revisionHistoryLimit": 3,
            # a rollout never lowers the ready count: new pods start before old ones stop
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(CONTAINER_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": SERVER_UID,
                        "runAsGroup": SERVER_UID,
                        "fsGroup": SERVER_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": key,
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": scope.selector(track)},
                        }
                        for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
                    ],
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                },
            },
        },
    }


def service(scope: Scope, track: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": scope.meta(scope.name(track), track),
        "spec": {
            "type": "ClusterIP",
            "selector": scope.selector(track),
            "ports": [{"name": "http", "port": CONTAINER_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def autoscaler(scope: Scope, track: str, res: ServingResources) -> dict[str, Any]:
    """CPU autoscaling; the canary's min == max, so its replica count (and the split) holds during analysis."""
    low, high = (
        (res.canary_replicas, res.canary_replicas) if track == "canary" else (res.min_replicas, res.max_replicas)
    )
    metrics: list[dict[str, Any]] = [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": res.cpu_utilization_pct},
            },
        }
    ]
    if res.rps_per_pod is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": RPS_METRIC},
                    "target": {"type": "AverageValue", "averageValue": str(res.rps_per_pod)},
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": scope.meta(scope.name(track), track),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": scope.name(track)},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": metrics,
        },
    }


def disruption_budget(scope: Scope, track: str) -> dict[str, Any]:
    """At most one pod of a track evicted at a time (maxUnavailable, so a 1-replica canary never blocks a drain)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": scope.meta(scope.name(track), track),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": scope.selector(track)}},
    }


def network_policy(scope: Scope) -> dict[str, Any]:
    """Ingress on the server port only from the gateway's and Prometheus' namespaces (and the workers',
    when set); egress only DNS: a model server calls nothing."""
    peers = [scope.gateway.namespace, scope.prometheus_namespace]
    if scope.workers_namespace:
        peers.append(scope.workers_namespace)
    dns_ports = [{"protocol": p, "port": 53} for p in ("UDP", "TCP")]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": scope.meta(scope.route_name, None),
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/instance": scope.base}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [
                        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}} for ns in peers
                    ],
                    "ports": [{"protocol": "TCP", "port": CONTAINER_PORT}],
                }
            ],
            "egress": [
                {
                    "to": [
                        {
                            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                        }
                    ],
                    "ports": dns_ports,
                }
            ],
        },
    }


def http_route(scope: Scope, canary_weight_pct: int | None, annotations: dict[str, str]) -> dict[str, Any]:
    """The split: stable only (None), or stable and canary with weights summing to 100."""
    refs = [{"name": scope.name("stable"), "port": CONTAINER_PORT, "weight": 100}]
    if canary_weight_pct is not None:
        refs = [
            {"name": scope.name("stable"), "port": CONTAINER_PORT, "weight": 100 - canary_weight_pct},
            {"name": scope.name("canary"), "port": CONTAINER_PORT, "weight": canary_weight_pct},
        ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": scope.meta(scope.route_name, None, annotations),
        "spec": {
            "parentRefs": [{"name": scope.gateway.name, "namespace": scope.gateway.namespace}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": refs}],
        },
    }


def route_weights(route: dict[str, Any] | None, scope: Scope) -> dict[str, int]:
    """Service name -> weight of the route's first rule ({} without a route)."""
    if not route:
        return {}
    rules = (route.get("spec") or {}).get("rules") or [{}]
    return {r["name"]: int(r.get("weight", 1)) for r in rules[0].get("backendRefs") or []}


# apiVersion/kind -> REST collection path (namespaced) for the generic apply/get/delete
PATHS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "Service": "/api/v1/namespaces/{ns}/services",
    "HorizontalPodAutoscaler": "/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    "HTTPRoute": "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes",
    "Pod": "/api/v1/namespaces/{ns}/pods",
}
TRACK_KINDS = ("HorizontalPodAutoscaler", "PodDisruptionBudget", "Service", "Deployment")
