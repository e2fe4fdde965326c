"""Which launch task holds a placement's Airflow pool slots (the retrain DAG's branch)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from include.mlops.errors import PlacementError
from include.mlops.training.launch import GPU_SLOT_STEPS, LAUNCHES, Launch, check_launch, choose_launch


def launch_named(name: str) -> Launch:
    return next(x for x in LAUNCHES if x.name == name)


def _placement(target: str, pool: str, slots: int) -> dict:
    return {"target": target, "airflow_pool": pool, "pool_slots": slots}


@pytest.mark.parametrize(
    ("target", "pool", "slots", "expected"),
    [
        ("local", "local_compute", 1, "local"),
        ("kubernetes", "default_pool", 1, "cpu"),
        ("docker", "default_pool", 1, "cpu"),
        ("kubernetes", "gpu_training", 1, "gpu_1"),
        ("docker", "gpu_training", 2, "gpu_2"),
        ("kubernetes", "gpu_training", 3, "gpu_4"),
        ("kubernetes", "gpu_training", 8, "gpu_8"),
    ],
)
def test_the_launch_holds_the_placements_pool_with_the_fewest_covering_slots(
    target: str, pool: str, slots: int, expected: str
) -> None:
    chosen = choose_launch(_placement(target, pool, slots))
    assert chosen.name == expected
    assert chosen.task_id == f"train.{expected}"
    assert chosen.pool == pool and chosen.pool_slots >= slots


@given(slots=st.integers(min_value=1, max_value=max(GPU_SLOT_STEPS)), target=st.sampled_from(["kubernetes", "docker"]))
def test_gpu_launch_never_holds_fewer_slots_than_asked_nor_more_than_the_next_step(slots: int, target: str) -> None:
    chosen = choose_launch(_placement(target, "gpu_training", slots))
    assert chosen.pool_slots >= slots
    assert chosen.pool_slots == min(s for s in GPU_SLOT_STEPS if s >= slots)


def test_more_gpus_than_any_launch_holds_is_refused_naming_the_launches() -> None:
    expected = r"no training launch task takes target='kubernetes' in pool 'gpu_training' with 16 slot"
    with pytest.raises(PlacementError, match=expected):
        choose_launch(_placement("kubernetes", "gpu_training", 16))


def test_a_local_placement_never_lands_in_a_remote_launch_and_vice_versa() -> None:
    with pytest.raises(PlacementError, match="local"):
        choose_launch(_placement("local", "default_pool", 1))
    with pytest.raises(PlacementError, match="kubernetes"):
        choose_launch(_placement("kubernetes", "local_compute", 1))


def test_a_launch_refuses_a_placement_that_belongs_to_another_launch() -> None:
    placement = _placement("kubernetes", "gpu_training", 4)
    check_launch(launch_named("gpu_4"), placement)
    with pytest.raises(PlacementError, match=r"launch task train.gpu_1 .* belongs to train.gpu_4"):
        check_launch(launch_named("gpu_1"), placement)


def test_launch_task_ids_are_unique() -> None:
    assert len({x.task_id for x in LAUNCHES}) == len(LAUNCHES)


def test_every_launch_pool_is_declared_big_enough_for_its_slots() -> None:
    """A task whose pool_slots exceed its pool's size would never be scheduled."""
    from include.mlops.settings.airflow_settings import load_airflow_settings
    from include.mlops.settings.project import PROJECT_ROOT

    pools = {p.name: p.slots for p in load_airflow_settings(PROJECT_ROOT / "airflow_settings.yaml").pools}
    pools.setdefault("default_pool", 128)  # Airflow's own, 128 slots unless changed
    for launch in LAUNCHES:
        assert launch.pool in pools, f"{launch.task_id}: pool {launch.pool} not in airflow_settings.yaml"
        assert pools[launch.pool] >= launch.pool_slots, (launch, pools[launch.pool])
