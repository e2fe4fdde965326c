"""Reservation book (TTL, cross-process race for the last GPU), static inventory, local machine, kpo_kwargs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from include.mlops.errors import PlacementError, SettingsError
from include.mlops.routing.kpo import kpo_kwargs
from include.mlops.routing.model import Claim, Placement, TaskRequest, WaitDecision
from include.mlops.routing.providers.local import LocalMachineProvider
from include.mlops.routing.providers.static import StaticInventoryProvider
from include.mlops.routing.reservations import ReservationBook
from include.mlops.routing.router import CombinedProvider, ResourceRouter

INVENTORY = """
source: lab
pool_label: cloud.google.com/gke-nodepool
nodes:
  - {name: a100, node_pool: a100-pool, gpu_type: NVIDIA-A100-SXM4-80GB, gpus: 8, gpus_used: 7, cpu: "96",
     memory: 1Ti, taints: [{key: nvidia.com/gpu, value: present, effect: NoSchedule}]}
  - {name: cpu, node_pool: cpu-pool, count: 2, cpu: "16", memory: 64Gi, cpu_used: 4}
"""


@pytest.fixture()
def inventory(tmp_path: Path) -> Path:
    p = tmp_path / "inventory.yaml"
    p.write_text(INVENTORY)
    return p


def test_static_inventory_expands_counts_and_reads_quantities(inventory: Path):
    snap = StaticInventoryProvider(inventory).snapshot()
    nodes = {n.name: n for n in snap.nodes}
    assert set(nodes) == {"a100", "cpu-0", "cpu-1"}
    assert nodes["a100"].whole_gpus_free == 1 and nodes["a100"].memory_allocatable_mib == 1024 * 1024
    assert nodes["cpu-0"].cpu_free_millicores == 12_000


def test_static_inventory_rejects_unknown_keys_with_the_entry(tmp_path: Path):
    p = tmp_path / "bad.yaml"
    p.write_text("nodes:\n  - {name: x, node_pool: p, cpu: '1', memory: 1Gi, gpu: 2}\n")
    with pytest.raises(SettingsError, match=r"nodes\[0\].*unknown key.*'gpu'"):
        StaticInventoryProvider(p).snapshot()


def test_reservation_holds_the_last_gpu_until_released_or_expired(inventory: Path, tmp_path: Path):
    now = [1000.0]
    book = ReservationBook(tmp_path / "book.sqlite", ttl_s=60, clock=lambda: now[0])
    router = ResourceRouter(StaticInventoryProvider(inventory), book)
    req = TaskRequest(task_key="dag/run1/train", gpu_count=1, gpu_types=("A100",))
    first = router.decide(req)
    assert isinstance(first, Placement) and first.reservation_id
    # a retry of the same task finds its own reservation, not a competitor
    assert isinstance(router.decide(req), Placement)
    other = router.decide(TaskRequest(task_key="dag/run2/train", gpu_count=1, gpu_types=("A100",)))
    assert isinstance(other, WaitDecision) and "0 whole GPU(s) free" in other.reason
    # dry runs never reserve
    assert isinstance(router.decide(TaskRequest(task_key="probe", gpu_count=1), dry_run=True), WaitDecision)
    now[0] += 61
    assert book.active() == []
    assert isinstance(router.decide(TaskRequest(task_key="dag/run2/train", gpu_count=1)), Placement)
    assert book.release("dag/run2/train") == 1
    kinds = [d["decision"] for d in book.recent_decisions()]
    assert kinds[:3] == ["place", "wait", "wait"] and len(kinds) == 5


_RACER = """
import sys
from include.mlops.routing.model import TaskRequest
from include.mlops.routing.providers.static import StaticInventoryProvider
from include.mlops.routing.reservations import ReservationBook
from include.mlops.routing.router import ResourceRouter
inv, book, key = sys.argv[1:4]
router = ResourceRouter(StaticInventoryProvider(inv), ReservationBook(book, ttl_s=600))
print(router.decide(TaskRequest(task_key=key, gpu_count=1, gpu_types=("A100",))).decision)
"""


def test_processes_racing_for_the_last_gpu_get_exactly_one_placement(inventory: Path, tmp_path: Path):
    book_path = str(tmp_path / "race.sqlite")
    ReservationBook(book_path)  # create the schema once, as the plugin does at start
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RACER, str(inventory), book_path, f"task-{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(6)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(out.strip())
    assert sorted(results) == ["place"] + ["wait"] * 5


def test_local_fallback_uses_this_machine_only_when_allowed(inventory: Path, tmp_path: Path):
    provider = CombinedProvider((StaticInventoryProvider(inventory), LocalMachineProvider()))
    router = ResourceRouter(provider, ReservationBook(tmp_path / "b.sqlite"))
    d = router.decide(TaskRequest(cpu_millicores=100, memory_mib=64, allow_local=True))
    assert isinstance(d, Placement) and d.target == "kubernetes"  # cluster first
    # a cluster whose only CPU node is too small for 1 CPU: the local machine takes it, when allowed
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text('nodes:\n  - {name: tiny, node_pool: small, cpu: "500m", memory: 256Mi}\n')
    router = ResourceRouter(
        CombinedProvider((StaticInventoryProvider(tiny), LocalMachineProvider())),
        ReservationBook(tmp_path / "t.sqlite"),
    )
    d = router.decide(TaskRequest(task_key="fits-local", cpu_millicores=1000, memory_mib=128, allow_local=True))
    assert isinstance(d, Placement) and d.target == "local" and d.airflow_pool == "local_compute"
    with pytest.raises(PlacementError, match=r"could ever hold .*\(allow_local=False\)"):
        router.decide(TaskRequest(task_key="not-allowed", cpu_millicores=1000, memory_mib=128))
    # more CPUs than this machine has: refused even with local allowed, on any machine
    local_cpus = LocalMachineProvider().snapshot().nodes[0].cpu_allocatable_millicores
    with pytest.raises(PlacementError, match=r"\(allow_local=True\)"):
        router.decide(
            TaskRequest(task_key="too-big", cpu_millicores=local_cpus + 1000, memory_mib=128, allow_local=True)
        )


def test_kpo_kwargs_map_a_placement_to_pod_arguments(inventory: Path):
    from kubernetes.client import models as k8s

    from include.mlops.routing.placement import place_task

    snap = StaticInventoryProvider(inventory).snapshot()
    p = place_task(TaskRequest(gpu_count=1, cpu_millicores=8000, memory_mib=32_768, priority_class="training"), snap)
    assert isinstance(p, Placement)
    kw = kpo_kwargs(p)
    assert kw["node_selector"] == {
        "cloud.google.com/gke-nodepool": "a100-pool",
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
    }
    assert kw["tolerations"] == [
        k8s.V1Toleration(key="nvidia.com/gpu", operator="Equal", value="present", effect="NoSchedule")
    ]
    res = kw["container_resources"]
    assert isinstance(res, k8s.V1ResourceRequirements)
    assert res.requests == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert res.limits == {"memory": "32Gi", "nvidia.com/gpu": "1"}
    assert kw["pool"] == "gpu_training" and kw["pool_slots"] == 1 and kw["priority_class_name"] == "training"
    assert kw["schedule_timeout_seconds"] >= 300 and kw["schedule_timeout_seconds"] != 120


def test_a_finished_training_releases_its_claim_so_the_next_one_fits(tmp_path: Path):
    from include.mlops.routing.training import place_training, release_training

    router = ResourceRouter(LocalMachineProvider(), ReservationBook(tmp_path / "b.sqlite", ttl_s=3600))
    all_cpu = LocalMachineProvider().snapshot().nodes[0].cpu_allocatable_millicores
    request = {"gpu_count": 0, "cpu_fallback": True, "cpu_millicores": all_cpu, "memory_mib": 64}
    first = place_training("retrain/run-1/train", request, router=router, log=lambda _m: None)
    assert first["decision"] == "place" and first["target"] == "local"
    # while run 1 trains, its claim holds the machine: run 2 is told to wait, with the reason
    second = place_training("retrain/run-2/train", request, router=router, log=lambda _m: None)
    assert second["decision"] == "wait" and "CPU 0m free" in second["explanation_text"]
    assert release_training("retrain/run-1/train", router=router, log=lambda _m: None) == 1
    assert release_training("retrain/run-1/train", router=router, log=lambda _m: None) == 0  # idempotent
    third = place_training("retrain/run-2/train", request, router=router, log=lambda _m: None)
    assert third["decision"] == "place" and third["target"] == "local"


def test_a_book_location_of_another_database_or_an_unreachable_server_is_refused_naming_it(tmp_path: Path):
    from include.mlops.routing.book_backends import BookUnavailableError
    from tests.conftest import free_port

    with pytest.raises(BookUnavailableError, match=r"router book URL scheme 'mysql'"):
        ReservationBook("mysql://u:p@127.0.0.1/book")
    with pytest.raises(BookUnavailableError, match=r"sqlite://: name a file"):
        ReservationBook("sqlite://")
    port = free_port()  # nothing listens there
    with pytest.raises(BookUnavailableError, match=rf"127.0.0.1:{port}/book: cannot connect") as err:
        ReservationBook(f"postgresql://airflow:s3cret@127.0.0.1:{port}/book")
    assert "s3cret" not in str(err.value)
    # a sqlite:/// URL names the same file as its path
    with ReservationBook(f"sqlite:///{tmp_path}/b.sqlite", ttl_s=60).transaction() as txn:
        txn.reserve("k", Claim(node_name="n", cpu_millicores=100))
    assert [r.task_key for r in ReservationBook(tmp_path / "b.sqlite").active()] == ["k"]
