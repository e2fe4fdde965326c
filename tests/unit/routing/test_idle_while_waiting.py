"""The placement bench's "idle while waiting" metric (bench/placement_sim.py), on hand-built clusters.

It must count only time during which some waiting task fits on one node of the real cluster,
minus the devices that placements in flight (placed, not yet bound) hold.
"""

from __future__ import annotations

from bench.placement_sim import Cluster, simulate, waiting_task_fits
from include.mlops.routing.model import TaskRequest


def _task(key: str, *, gpu_count: int = 0, gpu_milli: int = 0, types: tuple[str, ...] = ()) -> TaskRequest:
    return TaskRequest(task_key=key, gpu_count=gpu_count, gpu_milli=gpu_milli, gpu_types=types)


def test_free_gpus_split_over_nodes_do_not_count_when_no_single_node_fits():
    c = Cluster.of([("A10", 1, 16, 64), ("A10", 1, 16, 64)])
    half = _task("half", gpu_milli=500)
    c.take(0, half, [0])
    c.take(1, half, [0])  # 1000 milli free in total, 500 on each node
    assert not waiting_task_fits(c, [], [_task("one", gpu_count=1)])
    assert waiting_task_fits(c, [], [_task("one", gpu_count=1), _task("small", gpu_milli=400)])


def test_a_device_held_by_a_bind_in_flight_is_not_idle():
    c = Cluster.of([("A10", 1, 16, 64)])
    waiting = [_task("w", gpu_count=1)]
    assert waiting_task_fits(c, [], waiting)
    assert not waiting_task_fits(c, [(0, [0], _task("inflight", gpu_milli=300))], waiting)
    assert waiting_task_fits(c, [(0, [0], _task("inflight", gpu_milli=300))], [_task("w", gpu_milli=700)])


def test_a_free_device_of_a_type_the_task_refuses_is_not_idle():
    c = Cluster.of([("A10", 1, 16, 64)])
    assert not waiting_task_fits(c, [], [_task("t4", gpu_count=1, types=("T4",))])


def test_idle_while_waiting_counts_only_the_time_a_task_beyond_the_window_could_run():
    """One 2-GPU node, window 8. Derived by hand for the router (it reserves until the bind):

    t0 (1 GPU) arrives at 0, binds at 10, runs to 110. t1..t8 (2 GPUs) arrive at 1..8 and cannot fit
    while t0 holds a device (in flight or bound): not idle. t9 (half a GPU) arrives at 20 as the 9th
    waiting task, outside the window, and fits on the free device: idle from 20 to 110. At 110 t1
    takes both devices (reserved, then bound to 130); t2..t8 follow one at a time, each holding both
    devices; t9 runs last, placed the moment t8 ends. Idle: 90 s. The old metric (cluster-wide free
    GPUs >= the smallest waiting demand) also counted 1-10 and the in-flight gaps.
    """
    c = Cluster.of([("A10", 2, 16, 64)])
    tasks = [_task("t0", gpu_count=1)] + [_task(f"t{i}", gpu_count=2) for i in range(1, 9)]
    tasks.append(_task("t9", gpu_milli=500))
    arrivals = [0.0, 1, 2, 3, 4, 5, 6, 7, 8, 20]
    durations = [100.0] + [10.0] * 8 + [50.0]
    binds = [10.0] * 10
    m = simulate("router", c, tasks, arrivals, durations, binds, window=8)
    assert m["idle_while_waiting_min"] * 60 == 90.0
    assert m["type_violations"] == 0
    # t0 ends at 110, t_k (k=1..8) at 130 + 20 (k-1), t9 at 330: JCTs sum to 110 + 1564 + 310
    assert abs(m["jct_mean_s"] - 198.4) < 1e-9
    # queueing (start - arrival): 10, 119 + 19 (k-1) for t1..t8, 260 for t9; p95 (linear) = 256.4
    assert abs(m["queue_p95_s"] - 256.4) < 1e-9
