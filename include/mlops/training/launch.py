"""The retrain DAG's training launch tasks: one per (Airflow pool, pool_slots) a placement can ask for.

A running task cannot change its pool or slots, and neither can be mapped or templated, so the
placement's ``airflow_pool``/``pool_slots`` are applied by *choosing* between tasks declared with
them: ``route`` (a branch) picks the launch whose pool equals the placement's and whose slots are
the fewest that cover it. GPU slots come in steps of 1/2/4/8 (the trace's GPU counts); a 3-GPU
placement takes the 4-slot task, and the route log says so. The target inside a pool (Kubernetes
pod or local Docker container) is decided at run time by the launch task itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from include.mlops.errors import PlacementError
from include.mlops.routing.placement import DEFAULT_CONFIG, RouterConfig

GROUP_ID = "train"
GPU_SLOT_STEPS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Launch:
    """One training launch task: where it may run and the pool slots it holds while it does."""

    name: str
    targets: tuple[str, ...]
    pool: str
    pool_slots: int

    @property
    def task_id(self) -> str:
        return f"{GROUP_ID}.{self.name}"


def training_launches(config: RouterConfig = DEFAULT_CONFIG) -> tuple[Launch, ...]:
    remote = ("kubernetes", "docker")
    return (
        Launch("local", ("local",), config.local_airflow_pool, 1),
        Launch("cpu", remote, config.cpu_airflow_pool, 1),
        *(Launch(f"gpu_{n}", remote, config.gpu_airflow_pool, n) for n in GPU_SLOT_STEPS),
    )


LAUNCHES = training_launches()


def choose_launch(placement: Mapping[str, Any], launches: tuple[Launch, ...] = LAUNCHES) -> Launch:
    """The launch task for a placement: same pool, target allowed, fewest slots >= the placement's."""
    target = placement.get("target")
    pool = placement.get("airflow_pool")
    try:
        slots = int(placement.get("pool_slots", 1))
    except (TypeError, ValueError):
        raise PlacementError(f"placement pool_slots={placement.get('pool_slots')!r} is not an integer") from None
    fits = [x for x in launches if target in x.targets and x.pool == pool and x.pool_slots >= slots]
    if not fits:
        have = ", ".join(f"{x.name} ({'/'.join(x.targets)}, pool {x.pool} x{x.pool_slots})" for x in launches)
        raise PlacementError(
            f"no training launch task takes target={target!r} in pool {pool!r} with {slots} slot(s); "
            f"the DAG has: {have}. Ask for fewer GPUs, or add a step to GPU_SLOT_STEPS"
        )
    return min(fits, key=lambda x: x.pool_slots)


def check_launch(launch: Launch, placement: Mapping[str, Any]) -> None:
    """Refuse to run a placement in a launch task that does not hold its pool slots (a hand-cleared
    branch, a placement edited after routing): it would use capacity Airflow did not count."""
    chosen = choose_launch(placement)
    if chosen != launch:
        raise PlacementError(
            f"launch task {launch.task_id} (pool {launch.pool} x{launch.pool_slots}, targets {launch.targets}) "
            f"cannot run this placement (target {placement.get('target')!r}, pool {placement.get('airflow_pool')!r} "
            f"x{placement.get('pool_slots')}): it belongs to {chosen.task_id}; clear `route` to place again"
        )
