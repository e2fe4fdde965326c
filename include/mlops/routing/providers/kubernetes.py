"""Capacity of a Kubernetes cluster: nodes' allocatable minus the requests of their live pods.

Reads GPU products from GPU feature discovery labels (nvidia.com/gpu.product, -SHARED for
time-slicing), MIG slices from nvidia.com/mig-* resources, and skips cordoned, NotReady nodes
with a reason. Uses the official client; lists return raw JSON (faster than model objects).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from include.mlops.errors import PlacementError
from include.mlops.routing.model import FULL_GPU_MILLI, SHARED_SUFFIX, CapacitySnapshot, NodeCapacity, Taint
from include.mlops.routing.quantities import parse_quantity

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api

GPU_RESOURCE = "nvidia.com/gpu"
MIG_PREFIX = "nvidia.com/mig-"
PRODUCT_LABEL = "nvidia.com/gpu.product"
REPLICAS_LABEL = "nvidia.com/gpu.replicas"
# the first label present names the node's pool; instance type is the last resort
POOL_LABELS = (
    "cloud.google.com/gke-nodepool",
    "karpenter.sh/nodepool",
    "eks.amazonaws.com/nodegroup",
    "kubernetes.azure.com/agentpool",
    "node.kubernetes.io/instance-type",
)
_TERMINAL = ("Succeeded", "Failed")


def pod_requests(pod: Mapping[str, Any]) -> dict[str, float]:
    """Effective requests of a pod as the scheduler counts them: max(sum(containers), any init) + overhead."""
    spec = pod.get("spec") or {}

    def reqs(container: Mapping[str, Any]) -> dict[str, float]:
        r = ((container.get("resources") or {}).get("requests")) or {}
        lim = ((container.get("resources") or {}).get("limits")) or {}
        out = {k: float(parse_quantity(v)) for k, v in r.items()}
        for k, v in lim.items():  # a limit without a request defaults the request to it
            out.setdefault(k, float(parse_quantity(v)))
        return out

    total: dict[str, float] = {}
    for c in spec.get("containers") or []:
        for k, v in reqs(c).items():
            total[k] = total.get(k, 0.0) + v
    for c in spec.get("initContainers") or []:
        for k, v in reqs(c).items():
            total[k] = max(total.get(k, 0.0), v)
    for k, v in (spec.get("overhead") or {}).items():
        total[k] = total.get(k, 0.0) + float(parse_quantity(v))
    return total


def node_capacity(node: Mapping[str, Any], used: Mapping[str, float]) -> NodeCapacity:
    """One node's free capacity from its JSON and the summed requests of pods bound to it."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    labels = meta.get("labels") or {}
    alloc = {k: float(parse_quantity(v)) for k, v in (status.get("allocatable") or {}).items()}
    pool_label = next((k for k in POOL_LABELS if k in labels), None)
    pool = labels[pool_label] if pool_label else "default"

    reason = ""
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if spec.get("unschedulable"):
        reason = "node is cordoned (spec.unschedulable)"
    elif ready is None or ready.get("status") != "True":
        reason = f"node is NotReady ({(ready or {}).get('reason', 'no Ready condition')})"

    product = labels.get(PRODUCT_LABEL)
    gpu_alloc = int(alloc.get(GPU_RESOURCE, 0))
    gpu_used = round(used.get(GPU_RESOURCE, 0.0))
    if gpu_alloc and product is None:
        product = "unknown-gpu"  # device plugin without GPU feature discovery
    replicas = int(labels.get(REPLICAS_LABEL, "1") or 1)
    time_sliced = bool(product and (product.upper().endswith(SHARED_SUFFIX) or replicas > 1))
    free_units = max(0, gpu_alloc - gpu_used)
    mig_alloc = {k[len(MIG_PREFIX) :]: int(v) for k, v in alloc.items() if k.startswith(MIG_PREFIX)}
    mig_free = tuple((p, max(0, n - round(used.get(MIG_PREFIX + p, 0.0)))) for p, n in sorted(mig_alloc.items()))
    cpu_alloc = int(alloc.get("cpu", 0) * 1000)
    mem_alloc = int(alloc.get("memory", 0) / 2**20)
    return NodeCapacity(
        name=meta.get("name", "?"),
        node_pool=pool,
        target="kubernetes",
        pool_label=pool_label,
        cpu_free_millicores=max(0, cpu_alloc - int(used.get("cpu", 0.0) * 1000)),
        memory_free_mib=max(0, mem_alloc - int(used.get("memory", 0.0) / 2**20)),
        cpu_allocatable_millicores=cpu_alloc,
        memory_allocatable_mib=mem_alloc,
        gpu_type=product if (gpu_alloc or mig_alloc) else None,
        gpu_sharing="time-sliced" if time_sliced else "exclusive",
        gpu_resource=GPU_RESOURCE,
        gpu_free_milli=tuple([0] * (gpu_alloc - free_units) + [FULL_GPU_MILLI] * free_units),
        mig_free=mig_free,
        mig_allocatable=tuple(sorted(mig_alloc.items())),
        schedulable=not reason,
        unschedulable_reason=reason,
        taints=tuple(
            Taint(t["key"], t.get("value", "") or "", t.get("effect", "NoSchedule")) for t in spec.get("taints") or []
        ),
    )


class KubernetesCapacityProvider:
    """Lists nodes and non-terminal pods through the Kubernetes API at ``host`` (or a kubeconfig)."""

    def __init__(
        self,
        host: str | None = None,
        *,
        token: str | None = None,
        verify_ssl: bool = True,
        ssl_ca_cert: str | None = None,
        kubeconfig: str | None = None,
        context: str | None = None,
        in_cluster: bool = False,
        request_timeout_s: float = 30.0,
        page_size: int = 500,
    ) -> None:
        self._args = {
            "host": host,
            "token": token,
            "verify_ssl": verify_ssl,
            "ssl_ca_cert": ssl_ca_cert,
            "kubeconfig": kubeconfig,
            "context": context,
            "in_cluster": in_cluster,
        }
        self.request_timeout_s = request_timeout_s
        self.page_size = page_size
        self._api: Any = None

    @classmethod
    def from_connection(cls, host: str | None, extra: Mapping[str, Any]) -> KubernetesCapacityProvider:
        """From an Airflow `kubernetes` connection's host and extras (kube_config_path, in_cluster, ...)."""
        return cls(
            host=host or None,
            token=extra.get("token"),
            verify_ssl=not extra.get("disable_verify_ssl", False),
            kubeconfig=extra.get("kube_config_path"),
            context=extra.get("cluster_context"),
            in_cluster=bool(extra.get("in_cluster", False)),
        )

    def _core(self) -> CoreV1Api:
        if self._api is not None:
            return self._api
        from kubernetes import client, config

        a = self._args
        if a["in_cluster"]:
            config.load_incluster_config()
            cfg = client.Configuration.get_default_copy()
        elif a["kubeconfig"]:
            cfg = client.Configuration()
            config.load_kube_config(config_file=a["kubeconfig"], context=a["context"], client_configuration=cfg)
        else:
            if not a["host"]:
                raise PlacementError("Kubernetes capacity: no host, kubeconfig or in_cluster set on the connection")
            cfg = client.Configuration()
            cfg.host = str(a["host"]).rstrip("/")
        if a["token"]:
            cfg.api_key = {"authorization": f"Bearer {a['token']}"}
        cfg.verify_ssl = bool(a["verify_ssl"])
        if a["ssl_ca_cert"]:
            cfg.ssl_ca_cert = a["ssl_ca_cert"]
        self._api = client.CoreV1Api(client.ApiClient(cfg))
        return self._api

    def _pages(self, method: Any, **kw: Any) -> Iterator[dict[str, Any]]:
        token = None
        for _ in range(10_000):  # bounded: 5 M objects at 500 a page
            if token:
                kw["_continue"] = token
            resp = method(limit=self.page_size, _preload_content=False, _request_timeout=self.request_timeout_s, **kw)
            body = json.loads(resp.data)
            yield from body.get("items") or []
            token = (body.get("metadata") or {}).get("continue")
            if not token:
                return

    def snapshot(self) -> CapacitySnapshot:
        from kubernetes.client.exceptions import ApiException

        api = self._core()
        try:
            nodes = list(self._pages(api.list_node))
            pods = self._pages(
                api.list_pod_for_all_namespaces,
                field_selector="status.phase!=Succeeded,status.phase!=Failed",
            )
            used: dict[str, dict[str, float]] = {}
            for pod in pods:
                node_name = (pod.get("spec") or {}).get("nodeName")
                # the server filters terminal phases; filter again in case a proxy or old server did not
                if not node_name or (pod.get("status") or {}).get("phase") in _TERMINAL:
                    continue
                acc = used.setdefault(node_name, {})
                for k, v in pod_requests(pod).items():
                    acc[k] = acc.get(k, 0.0) + v
        except ApiException as exc:
            raise PlacementError(
                f"Kubernetes capacity: listing nodes/pods failed with HTTP {exc.status} {exc.reason}; "
                "the router's service account needs list on nodes and pods (cluster-wide)"
            ) from exc
        caps = tuple(node_capacity(n, used.get((n.get("metadata") or {}).get("name", ""), {})) for n in nodes)
        return CapacitySnapshot(caps, source=f"kubernetes:{self._args['host'] or 'kubeconfig'}", taken_at_s=time.time())
