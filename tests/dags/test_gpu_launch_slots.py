"""A 2/3/4/8-GPU placement runs in the retrain DAG's train.gpu_N task, which holds N gpu_training slots.

The router places each request on a static inventory (one A100 node with 8 free GPUs); `route`
picks the launch task; the DAG as Airflow parsed it says which pool and how many slots that task
holds. Expected values are the request's GPU count rounded up to the DAG's steps 1/2/4/8.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from include.mlops.retraining import RunIdentity, route_training
from include.mlops.routing.providers.static import StaticInventoryProvider
from include.mlops.routing.reservations import ReservationBook
from include.mlops.routing.router import ResourceRouter

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = """
source: lab
pool_label: karpenter.sh/nodepool
nodes:
  - {name: gpu-a100-1, node_pool: a100-pool, gpu_type: NVIDIA-A100-SXM4-80GB, gpus: 8, cpu: "96", memory: 1Ti}
"""


@pytest.fixture(scope="module")
def retrain_tasks():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "retrain.py"))
    assert bag.import_errors == {}
    return {t.task_id: t for t in bag.dags["retrain"].tasks}


@pytest.mark.parametrize(
    ("gpu_count", "task_id", "slots"),
    [(1, "train.gpu_1", 1), (2, "train.gpu_2", 2), (3, "train.gpu_4", 4), (4, "train.gpu_4", 4), (8, "train.gpu_8", 8)],
)
def test_a_gpu_placement_runs_in_the_task_holding_its_gpu_slots(
    retrain_tasks, tmp_path: Path, gpu_count: int, task_id: str, slots: int
) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "inventory.yaml").write_text(INVENTORY)
    router = ResourceRouter(
        StaticInventoryProvider(tmp_path / "inventory.yaml"), ReservationBook(tmp_path / "b.sqlite")
    )
    lines: list[str] = []
    placement = route_training(
        RunIdentity("retrain", f"manual__{gpu_count}"), {"gpu_count": gpu_count}, router=router, log=lines.append
    )
    assert placement["target"] == "kubernetes" and placement["node_name"] == "gpu-a100-1"
    assert placement["airflow_pool"] == "gpu_training" and placement["pool_slots"] == gpu_count
    assert placement["launch"] == task_id
    (held,) = router.book.active()
    assert len(held.claim.gpu_milli_by_device) == gpu_count  # the router reserved that many whole GPUs
    task = retrain_tasks[task_id]
    assert (task.pool, task.pool_slots) == ("gpu_training", slots)
    assert any(f"{task_id} in Airflow pool gpu_training holding {slots} slot" in line for line in lines), lines
