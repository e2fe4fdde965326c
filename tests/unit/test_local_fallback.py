"""The router uses this machine only when the request allows it, whatever the machine's size.

(Replaces a check that ran only on machines with fewer than 20 CPUs and never asserted the
positive case.) The cluster here is one node with half a CPU: a 1-CPU request fits any machine
that runs the tests (at least one CPU) and never the cluster, so the outcome depends only on
allow_local.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from include.mlops.errors import PlacementError
from include.mlops.routing.model import Placement, TaskRequest
from include.mlops.routing.providers.local import LocalMachineProvider
from include.mlops.routing.providers.static import StaticInventoryProvider
from include.mlops.routing.reservations import ReservationBook
from include.mlops.routing.router import CombinedProvider, ResourceRouter

INVENTORY = """
source: lab
pool_label: cloud.google.com/gke-nodepool
nodes:
  - {name: small, node_pool: cpu-pool, cpu: 500m, memory: 4Gi}
"""


@pytest.fixture()
def router(tmp_path: Path) -> ResourceRouter:
    (tmp_path / "inventory.yaml").write_text(INVENTORY)
    provider = CombinedProvider((StaticInventoryProvider(tmp_path / "inventory.yaml"), LocalMachineProvider()))
    return ResourceRouter(provider, ReservationBook(tmp_path / "book.sqlite"))


def test_a_request_only_this_machine_can_hold_is_refused_without_allow_local(router: ResourceRouter) -> None:
    with pytest.raises(PlacementError, match=r"could ever hold .*cpu_millicores=1000 .*\(allow_local=False\)"):
        router.decide(TaskRequest(task_key="t", cpu_millicores=1000, memory_mib=64))
    assert router.book.active() == []


def test_the_same_request_with_allow_local_is_placed_on_this_machine(router: ResourceRouter) -> None:
    d = router.decide(TaskRequest(task_key="t", cpu_millicores=1000, memory_mib=64, allow_local=True))
    assert isinstance(d, Placement), d
    assert d.target == "local" and d.node_name == socket.gethostname()
    assert [(r.task_key, r.claim.node_name, r.claim.cpu_millicores) for r in router.book.active()] == [
        ("t", socket.gethostname(), 1000)
    ]


def test_the_cluster_comes_first_when_it_can_hold_the_request(router: ResourceRouter) -> None:
    d = router.decide(TaskRequest(task_key="t", cpu_millicores=500, memory_mib=64, allow_local=True))
    assert isinstance(d, Placement) and d.target == "kubernetes" and d.node_name == "small", d
