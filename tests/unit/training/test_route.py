"""The retrain DAG's `route` step: place and pick the launch task, wait, or give up; real router + book."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.mlops.errors import CapacityWait, PlacementError
from include.mlops.retraining import RunIdentity, route_training, training_task_key
from include.mlops.routing.model import Claim
from include.mlops.routing.providers.local import LocalMachineProvider
from include.mlops.routing.reservations import ReservationBook
from include.mlops.routing.router import ResourceRouter

IDENT = RunIdentity("retrain", "manual__r1")


@pytest.fixture()
def router(tmp_path: Path) -> ResourceRouter:
    return ResourceRouter(LocalMachineProvider(), ReservationBook(tmp_path / "book.sqlite"))


def _hold_every_cpu(router: ResourceRouter) -> None:
    node = router.provider.snapshot().nodes[0]
    with router.book.transaction() as txn:
        txn.reserve("someone/else", Claim(node.name, cpu_millicores=node.cpu_allocatable_millicores))


def test_a_local_placement_goes_to_the_local_launch_and_is_reserved(router: ResourceRouter) -> None:
    lines: list[str] = []
    placement = route_training(IDENT, {"gpu_count": 0, "gpu_types": []}, router=router, log=lines.append)
    assert placement["decision"] == "place" and placement["target"] == "local"
    assert placement["launch"] == "train.local"
    assert any("train.local in Airflow pool local_compute holding 1 slot" in line for line in lines), lines
    assert [r.task_key for r in router.book.active()] == [training_task_key(IDENT)]


# recheck = a quarter of the wait left, at least 15 s and at most 120 s (RouterConfig.recheck_min_s/max_s)
@pytest.mark.parametrize(
    ("max_wait_s", "waited_s", "recheck_s"),
    [
        (120, 0, 30),  # 120 / 4
        (130, 10, 30),  # (130 - 10) / 4: the wait already spent counts
        (40, 0, 15),  # 10 is under the 15 s floor
        (1000, 0, 120),  # 250 is over the 120 s cap
        (122, 0, 31),  # 30.5 rounds up, never down to a busier recheck
    ],
)
def test_no_free_cpu_means_wait_with_the_routers_recheck_time(
    router: ResourceRouter, max_wait_s: int, waited_s: int, recheck_s: int
) -> None:
    _hold_every_cpu(router)
    with pytest.raises(CapacityWait) as wait:
        route_training(
            IDENT, {"gpu_count": 0, "gpu_types": [], "max_wait_s": max_wait_s}, waited_s=waited_s, router=router
        )
    assert "CPU" in wait.value.reason
    assert wait.value.recheck_after_s == recheck_s
    assert [r.task_key for r in router.book.active()] == ["someone/else"]  # a wait reserves nothing


def test_past_max_wait_the_route_gives_up_naming_the_wait(router: ResourceRouter) -> None:
    _hold_every_cpu(router)
    with pytest.raises(PlacementError, match=r"gave up after waiting 90s for capacity .*max_wait_s"):
        route_training(IDENT, {"gpu_count": 0, "gpu_types": [], "max_wait_s": 60}, waited_s=90, router=router)


def test_a_request_no_launch_task_can_hold_is_refused_and_its_reservation_dropped(router: ResourceRouter) -> None:
    # a placement the DAG has no launch task for: an 'airflow pool' the table does not know
    router.config = type(router.config)(local_airflow_pool="someone_elses_pool")
    with pytest.raises(PlacementError, match="takes target='local' in pool 'someone_elses_pool'"):
        route_training(IDENT, {"gpu_count": 0, "gpu_types": []}, router=router)
    assert router.book.active() == []


def test_a_docker_gpu_placement_names_the_free_devices_it_reserved_and_the_launchers_use_them(
    tmp_path: Path,
) -> None:
    """The router's claim carries GPU identities (device indices); the container's device request and
    the local trainer's CUDA_VISIBLE_DEVICES are those devices, not "any N GPUs"."""
    import yaml

    from include.mlops.routing.providers.static import StaticInventoryProvider
    from include.mlops.training.container import container_limits
    from include.mlops.training.runner import placement_gpu_ids, training_environment

    inventory = {
        "target": "docker",
        "nodes": [
            {"name": "gpu-box", "node_pool": "docker-engine", "gpu_type": "NVIDIA-L4", "gpus": 4, "gpus_used": 1,
             "cpu": "16", "memory": "64Gi"},
        ],
    }  # fmt: skip
    (tmp_path / "inventory.yaml").write_text(yaml.safe_dump(inventory))
    router = ResourceRouter(
        StaticInventoryProvider(tmp_path / "inventory.yaml"), ReservationBook(tmp_path / "b.sqlite")
    )
    first = route_training(IDENT, {"gpu_count": 2, "gpu_types": ["NVIDIA-L4"]}, router=router, log=lambda _: None)
    other = route_training(
        RunIdentity("retrain", "manual__r2"), {"gpu_count": 1, "gpu_types": ["NVIDIA-L4"]}, router=router
    )
    ids, other_ids = placement_gpu_ids(first), placement_gpu_ids(other)
    assert first["target"] == "docker" and len(ids) == 2 and len(other_ids) == 1
    assert "0" not in ids + other_ids and not set(ids) & set(other_ids)  # device 0 was in use
    (request,) = container_limits(first)["device_requests"]
    assert request.device_ids == ids
    assert training_environment({}, gpu_ids=ids)["CUDA_VISIBLE_DEVICES"] == ",".join(ids)
