"""KubernetesCapacityProvider against a Kubernetes API stand-in (kmock) over real HTTP.

Nodes and pods are created through the official client (POSTs), then listed back by the
provider: GPU products, time-slicing (-SHARED), MIG resources, cordoned/NotReady nodes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import kmock  # dev requirement: imported, never skipped when missing
import pytest

from include.mlops.routing.model import Placement, TaskRequest
from include.mlops.routing.placement import place_task
from include.mlops.routing.providers.kubernetes import KubernetesCapacityProvider


@pytest.fixture()
def k8s_api_url() -> Iterator[str]:
    """A kmock KubernetesEmulator on a free 127.0.0.1 port, run in its own thread and loop."""
    from kmock._internal.apps import Server

    state: dict[str, object] = {}
    ready = threading.Event()

    async def serve() -> None:
        async with kmock.KubernetesEmulator() as handler, Server(handler) as server:
            stop = asyncio.Event()
            state.update(url=str(server.url).rstrip("/"), loop=asyncio.get_running_loop(), stop=stop)
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    assert ready.wait(15), "kmock did not start"
    yield str(state["url"])
    state["loop"].call_soon_threadsafe(state["stop"].set)  # type: ignore[attr-defined]
    thread.join(10)


NOT_READY = [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]
READY = [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]


def k8s_node(name, labels, allocatable, *, taints=(), unschedulable=False, conditions=READY):
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
        "spec": {"unschedulable": unschedulable, "taints": list(taints)},
        "status": {"allocatable": allocatable, "capacity": allocatable, "conditions": conditions},
    }


def k8s_pod(name, node, requests=None, limits=None, phase="Running", init=None, ns="ml"):
    spec = {
        "containers": [
            {"name": "main", "image": "trainer:1", "resources": {"requests": requests or {}, "limits": limits or {}}}
        ],
    }
    if node:
        spec["nodeName"] = node
    if init:
        spec["initContainers"] = [{"name": "init", "image": "busybox", "resources": {"requests": init}}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
        "status": {"phase": phase},
    }


GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@pytest.fixture()
def cluster(k8s_api_url: str) -> str:
    from kubernetes import client

    cfg = client.Configuration()
    cfg.host = k8s_api_url
    api = client.CoreV1Api(client.ApiClient(cfg))
    a100 = {
        "cloud.google.com/gke-nodepool": "a100-pool",
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
        "nvidia.com/gpu.count": "8",
    }
    big = {"cpu": "95690m", "memory": "1056762308Ki", "nvidia.com/gpu": "8", "pods": "110"}
    nodes = [
        k8s_node("gke-a100-1", a100, big, taints=[GPU_TAINT]),
        k8s_node("gke-a100-2", a100, big, taints=[GPU_TAINT], unschedulable=True),
        k8s_node(
            "gke-a100-3", a100, big, conditions=[{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]
        ),
        k8s_node(
            "karp-t4-1",
            {
                "karpenter.sh/nodepool": "t4-shared",
                "nvidia.com/gpu.product": "Tesla-T4-SHARED",
                "nvidia.com/gpu.replicas": "4",
            },
            {"cpu": "15890m", "memory": "63Gi", "nvidia.com/gpu": "16"},
        ),
        k8s_node(
            "gke-mig-1",
            {"cloud.google.com/gke-nodepool": "mig-pool", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"},
            {
                "cpu": "11",
                "memory": "80Gi",
                "nvidia.com/gpu": "0",
                "nvidia.com/mig-1g.5gb": "4",
                "nvidia.com/mig-3g.20gb": "1",
            },
        ),
        k8s_node("cpu-1", {"node.kubernetes.io/instance-type": "n2-standard-16"}, {"cpu": "15", "memory": "60Gi"}),
    ]
    for n in nodes:
        api.create_node(n)
    pods = [
        # GPU given as a limit only: the request defaults to it
        k8s_pod("train-a", "gke-a100-1", {"cpu": "16", "memory": "64Gi"}, {"nvidia.com/gpu": "3"}),
        k8s_pod(
            "train-b",
            "gke-a100-1",
            {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"},
            {"nvidia.com/gpu": "1"},
            init={"cpu": "40", "memory": "1Gi"},
        ),
        k8s_pod("done", "gke-a100-1", {"cpu": "8", "nvidia.com/gpu": "4"}, {"nvidia.com/gpu": "4"}, phase="Succeeded"),
        k8s_pod("pending", None, {"cpu": "8", "nvidia.com/gpu": "4"}, {"nvidia.com/gpu": "4"}, phase="Pending"),
        k8s_pod("slice-1", "karp-t4-1", {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"}, {"nvidia.com/gpu": "1"}),
        k8s_pod("slice-2", "karp-t4-1", {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"}, {"nvidia.com/gpu": "1"}),
        k8s_pod(
            "mig-a",
            "gke-mig-1",
            {"cpu": "1", "memory": "4Gi", "nvidia.com/mig-1g.5gb": "1"},
            {"nvidia.com/mig-1g.5gb": "1"},
            ns="serving",
        ),
        k8s_pod("web", "cpu-1", {"cpu": "500m", "memory": "512Mi"}),
    ]
    for p in pods:
        api.create_namespaced_pod(p["metadata"]["namespace"], p)
    return k8s_api_url


def test_snapshot_subtracts_live_pod_requests_per_gpu_product_and_pool(cluster: str):
    snap = KubernetesCapacityProvider(cluster).snapshot()
    nodes = {n.name: n for n in snap.nodes}
    a1 = nodes["gke-a100-1"]
    assert a1.node_pool == "a100-pool" and a1.pool_label == "cloud.google.com/gke-nodepool"
    assert a1.gpu_type == "NVIDIA-A100-SXM4-80GB" and a1.gpu_sharing == "exclusive"
    assert a1.whole_gpus_free == 4  # 8 - 3 (limit-only) - 1; the Succeeded and unbound pods hold nothing
    # init container (40 CPU) dominates train-b's containers (8 CPU): 95.69 - 16 - 40
    assert a1.cpu_free_millicores == 95_690 - 16_000 - 40_000
    assert a1.taints[0].key == "nvidia.com/gpu"

    assert not nodes["gke-a100-2"].schedulable and "cordoned" in nodes["gke-a100-2"].unschedulable_reason
    assert not nodes["gke-a100-3"].schedulable and "NotReady" in nodes["gke-a100-3"].unschedulable_reason

    t4 = nodes["karp-t4-1"]
    assert t4.node_pool == "t4-shared" and t4.gpu_sharing == "time-sliced" and t4.whole_gpus_free == 14

    mig = nodes["gke-mig-1"]
    assert dict(mig.mig_free) == {"1g.5gb": 3, "3g.20gb": 1} and mig.gpu_devices == 0

    cpu = nodes["cpu-1"]
    assert cpu.node_pool == "n2-standard-16" and cpu.gpu_type is None
    assert cpu.cpu_free_millicores == 14_500 and cpu.memory_free_mib == 60 * 1024 - 512


def test_router_places_on_the_live_cluster_with_tolerations_and_mig(cluster: str):
    snap = KubernetesCapacityProvider(cluster).snapshot()
    d = place_task(TaskRequest(gpu_count=2, gpu_types=("A100",), cpu_millicores=8000, memory_mib=32_768), snap)
    assert isinstance(d, Placement) and d.node_name == "gke-a100-1"
    assert d.node_selector == {
        "cloud.google.com/gke-nodepool": "a100-pool",
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
    }
    assert d.tolerations[0]["key"] == "nvidia.com/gpu"
    reasons = " ".join(v.reason for v in d.explanation.considered)
    assert "cordoned" in reasons and "NotReady" in reasons

    frac = place_task(TaskRequest(gpu_milli=100, gpu_types=("A100",), memory_mib=2048), snap)
    assert isinstance(frac, Placement) and frac.node_name == "gke-mig-1"
    assert frac.resources_requests["nvidia.com/mig-1g.5gb"] == "1"

    shared = place_task(TaskRequest(gpu_milli=250, gpu_types=("T4-SHARED",), memory_mib=2048), snap)
    assert isinstance(shared, Placement) and shared.node_selector["karpenter.sh/nodepool"] == "t4-shared"
