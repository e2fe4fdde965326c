"""Behaviour of place_task: type preference, packing, taints, local fallback, explanations."""

from __future__ import annotations

import dataclasses
import re

import pytest

from include.mlops.errors import PlacementError
from include.mlops.routing.model import (
    CapacitySnapshot,
    Claim,
    Explanation,
    NodeCapacity,
    Placement,
    PoolVerdict,
    Taint,
    TaskRequest,
    WaitDecision,
)
from include.mlops.routing.placement import (
    DEFAULT_CONFIG,
    RouterConfig,
    apply_claims,
    base_product,
    mig_fraction_milli,
    place_task,
    type_free_pct,
    type_rank,
)
from include.mlops.routing.workload import TaskShape

A100 = "NVIDIA-A100-SXM4-80GB"
T4 = "Tesla-T4"
A10G_SHARED = "NVIDIA-A10G-SHARED"
POOL_LABEL = "cloud.google.com/gke-nodepool"


def node(name, pool, gpu_type=None, gpus=0, used=0, cpu_m=64_000, mem_mib=512 * 1024, **kw) -> NodeCapacity:
    return NodeCapacity(
        name=name,
        node_pool=pool,
        cpu_free_millicores=cpu_m,
        memory_free_mib=mem_mib,
        pool_label=POOL_LABEL,
        gpu_type=gpu_type,
        gpu_free_milli=tuple([0] * used + [1000] * (gpus - used)),
        **kw,
    )


def snap(*nodes: NodeCapacity) -> CapacitySnapshot:
    return CapacitySnapshot(nodes=tuple(nodes), source="test")


def test_type_rank_matches_tokens_not_substrings():
    assert type_rank(["A100"], A100) == 0
    assert type_rank(["A10"], "NVIDIA-A10G") is None
    assert type_rank(["T4", "A100"], A100) == 1
    assert type_rank(["A10G"], A10G_SHARED) is None  # time-sliced only when asked for
    assert type_rank(["A10G-SHARED"], A10G_SHARED) == 0
    assert type_rank([], T4) == 0


def test_preferred_type_wins_even_when_the_other_type_packs_better():
    s = snap(node("t4-1", "t4", T4, 4, used=3), node("a100-1", "a100", A100, 8))
    d = place_task(TaskRequest(gpu_count=1, gpu_types=("A100", "T4")), s)
    assert isinstance(d, Placement) and d.node_pool == "a100"
    lost = next(v for v in d.explanation.considered if v.node_pool == "t4")
    assert lost.outcome == "lost"
    assert lost.reason == f"GPU type {T4} is preference #2; #1 {A100} fits in pool a100"


def test_falls_through_to_the_next_type_when_the_preferred_is_full():
    s = snap(node("a100-1", "a100", A100, 8, used=8), node("t4-1", "t4", T4, 4))
    d = place_task(TaskRequest(gpu_count=2, gpu_types=("A100", "T4")), s)
    assert isinstance(d, Placement) and d.node_pool == "t4"
    full = next(v for v in d.explanation.considered if v.node_pool == "a100")
    assert full.outcome == "infeasible" and "0 whole GPU(s) free < 2" in full.reason


def test_single_gpu_goes_to_the_partly_used_node_keeping_the_empty_node_whole():
    s = snap(node("empty", "a100", A100, 8), node("busy", "a100", A100, 8, used=5))
    d = place_task(TaskRequest(gpu_count=1, gpu_types=("A100",)), s)
    assert isinstance(d, Placement) and d.node_name == "busy"


def test_fraction_shares_a_partly_used_device_on_a_milli_node():
    n = NodeCapacity(
        name="m1", node_pool="share", cpu_free_millicores=32_000, memory_free_mib=128_000,
        gpu_type=T4, gpu_sharing="milli", gpu_resource="alibabacloud.com/gpu-milli",
        gpu_free_milli=(1000, 300, 1000, 600),
    )  # fmt: skip
    d = place_task(TaskRequest(gpu_milli=500), snap(n))
    assert isinstance(d, Placement)
    assert d.claim.gpu_milli_by_device == ((3, 500),)  # best-fit device, whole devices untouched
    assert d.resources_requests["alibabacloud.com/gpu-milli"] == "500"


def test_fraction_prefers_a_mig_slice_over_wasting_an_exclusive_device():
    mig = node("mig-1", "a100-mig", A100, 0, mig_free=(("1g.10gb", 2), ("3g.40gb", 1)))
    whole = node("a100-1", "a100", A100, 8)
    d = place_task(TaskRequest(gpu_milli=120), snap(whole, mig))
    assert isinstance(d, Placement) and d.node_name == "mig-1"
    assert d.resources_requests["nvidia.com/mig-1g.10gb"] == "1"
    assert d.resources_limits["nvidia.com/mig-1g.10gb"] == "1"
    lost = next(v for v in d.explanation.considered if v.node_pool == "a100")
    assert lost.reason == "fraction on an exclusive device wastes 880 milli"  # 1000 - 120
    chosen = next(v for v in d.explanation.considered if v.outcome == "chosen")
    assert not chosen.reason.endswith("milli") or "wastes" not in chosen.reason  # a slice is no penalty


def test_whole_gpu_request_never_lands_on_time_sliced_gpus():
    shared = node("s1", "shared", A10G_SHARED, 8, gpu_sharing="time-sliced")
    with pytest.raises(PlacementError, match="could ever hold"):
        place_task(TaskRequest(gpu_count=1, gpu_types=("A10G-SHARED",)), snap(shared))
    d = place_task(TaskRequest(gpu_milli=300, gpu_types=("A10G-SHARED",)), snap(shared))
    assert isinstance(d, Placement) and d.resources_requests["nvidia.com/gpu"] == "1"


def test_untolerated_taint_and_cordoned_node_are_skipped_with_reasons():
    s = snap(
        node("tainted", "a", A100, 8, taints=(Taint("dedicated", "infer"),)),
        node("cordoned", "b", A100, 8, schedulable=False, unschedulable_reason="node is cordoned"),
        node("ok", "c", A100, 8, used=2, taints=(Taint("nvidia.com/gpu", "present"),)),
    )
    d = place_task(TaskRequest(gpu_count=1), s)
    assert isinstance(d, Placement) and d.node_name == "ok"
    assert d.tolerations == (
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
    )
    reasons = {v.node_pool: v.reason for v in d.explanation.considered}
    assert "untolerated taint dedicated" in reasons["a"]
    assert "cordoned" in reasons["b"]
    d2 = place_task(TaskRequest(gpu_count=1, tolerate_taints=("dedicated",)), snap(s.nodes[0]))
    assert isinstance(d2, Placement) and d2.node_name == "tainted"


def test_local_is_only_a_last_resort_and_only_when_allowed():
    local = NodeCapacity(name="this-host", node_pool="local", target="local", cpu_free_millicores=8000,
                         memory_free_mib=16_000)  # fmt: skip
    full = node("c1", "cpu", cpu_m=500)
    req = TaskRequest(cpu_millicores=2000, memory_mib=2048)
    with pytest.raises(PlacementError):
        place_task(req, snap(full, local))  # local not allowed, cluster node too small forever
    d = place_task(TaskRequest(cpu_millicores=2000, memory_mib=2048, allow_local=True), snap(full, local))
    assert isinstance(d, Placement) and d.target == "local" and d.airflow_pool == "local_compute"
    roomy = node("c2", "cpu2")
    d = place_task(TaskRequest(cpu_millicores=2000, memory_mib=2048, allow_local=True), snap(roomy, local))
    assert isinstance(d, Placement) and d.target == "kubernetes"
    assert "last resort" in next(v.reason for v in d.explanation.considered if v.target == "local")


BUSY_A100 = "1/1 node(s): 0 whole GPU(s) free < 1"


@pytest.mark.parametrize(
    ("waited_s", "recheck_s", "exceeded"),
    [
        (0, 120, False),  # 600 s left: a quarter is 150, capped at recheck_max_s 120
        (400, 50, False),  # 200 s left: a quarter, 50
        (398, 51, False),  # 202 s left: 50.5, rounded up
        (560, 15, False),  # 40 s left: 10, raised to recheck_min_s 15
        (599, 15, False),  # 1 s left: not yet exceeded
        (600, 15, True),  # 0 s left: exceeded exactly at max_wait_s
        (601, 15, True),
    ],
)
def test_busy_cluster_waits_with_the_exact_recheck_time_and_max_wait_flag(waited_s, recheck_s, exceeded):
    s = snap(node("a1", "a100", A100, 8, used=8))
    d = place_task(TaskRequest(gpu_count=1, max_wait_s=600), s, waited_s=waited_s)
    reason = ("max_wait_s exceeded; " if exceeded else "") + f"no acceptable capacity free now (a100: {BUSY_A100})"
    verdict = PoolVerdict("kubernetes", "a100", A100, 1, 0, "infeasible", BUSY_A100)
    assert d == WaitDecision(reason, recheck_s, waited_s, exceeded, Explanation(reason, (verdict,)))


def test_recheck_time_follows_the_configured_bounds():
    s = snap(node("a1", "a100", A100, 8, used=8))
    cfg = dataclasses.replace(DEFAULT_CONFIG, recheck_min_s=30.0, recheck_max_s=40.0)
    req = TaskRequest(gpu_count=1, max_wait_s=600)
    assert place_task(req, s, waited_s=400, config=cfg).recheck_after_s == 40  # 50 capped at 40
    assert place_task(req, s, waited_s=520, config=cfg).recheck_after_s == 30  # 20 raised to 30
    assert place_task(req, s, waited_s=700, config=cfg).recheck_after_s == 30


def test_wait_reason_lists_every_infeasible_pool():
    s = snap(node("a1", "a100", A100, 8, used=8), node("t1", "t4", T4, 4, used=4))
    d = place_task(TaskRequest(gpu_count=1), s)
    assert isinstance(d, WaitDecision)
    assert d.reason == (
        "no acceptable capacity free now (a100: 1/1 node(s): 0 whole GPU(s) free < 1; "
        "t4: 1/1 node(s): 0 whole GPU(s) free < 1)"
    )
    assert d.waited_s == 0.0 and not d.max_wait_exceeded
    # without waited_s nothing has been waited yet: one second of max_wait_s is still left
    assert not place_task(TaskRequest(gpu_count=1, max_wait_s=1), s).max_wait_exceeded


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"gpu_count": 1, "gpu_milli": 500}, "not both"),
        ({"gpu_milli": 1000}, "0..999"),
        ({"cpu_millicores": 0}, "> 0"),
        ({"gpus": 1}, "unknown request field"),
    ],
)
def test_invalid_requests_name_the_field(fields, message):
    with pytest.raises(PlacementError, match=message):
        TaskRequest.from_dict(fields)


# --- type balance: equally preferred types -----------------------------------------------------

V100 = "Tesla-V100-SXM2-32GB"
A10 = "NVIDIA-A10"


def _fill(cluster: CapacitySnapshot, reqs: list[TaskRequest], config: RouterConfig) -> list[Placement | None]:
    """Place requests one after another, each seeing the earlier ones' reservations."""
    claims, out = [], []
    for r in reqs:
        d = place_task(r, cluster, reserved=claims, config=config)
        if isinstance(d, Placement):
            claims.append(d.claim)
            out.append(d)
        else:
            out.append(None)
    return out


def test_untyped_tasks_leave_the_scarce_type_to_tasks_that_accept_only_it():
    cluster = snap(
        *(node(f"v{i}", "v100", V100, 8) for i in range(4)), *(node(f"a{i}", "a10", A10, 1) for i in range(4))
    )
    reqs = [TaskRequest(task_key=f"any{i}", gpu_count=1) for i in range(8)]
    reqs += [TaskRequest(task_key=f"a10only{i}", gpu_count=1, gpu_types=("A10",)) for i in range(3)]
    balanced = _fill(cluster, reqs, DEFAULT_CONFIG)
    assert all(balanced), "every A10-only task finds an A10 left"
    assert sum(d.gpu_type == A10 for d in balanced[:8] if d) <= 1
    # without the balance, best fit drains the single-GPU A10 nodes first: the A10-only tasks wait
    unbalanced = _fill(cluster, reqs, dataclasses.replace(DEFAULT_CONFIG, type_balance_step_pct=0))
    assert unbalanced[8:] == [None, None, None]


def test_type_with_the_larger_free_share_wins_and_the_other_is_told_why():
    s = snap(
        node("t4-1", "t4", T4, 2, used=1), node("t4-2", "t4", T4, 2, used=2),  # 25 % free, a perfect fit
        node("a100-1", "a100", A100, 8, used=4),  # 50 % free
    )  # fmt: skip
    d = place_task(TaskRequest(gpu_count=1), s)
    assert isinstance(d, Placement) and d.node_pool == "a100"
    lost = next(v for v in d.explanation.considered if v.node_pool == "t4")
    assert lost.outcome == "lost"
    assert "25 % free vs 50 %" in lost.reason and "scarcer type" in lost.reason
    assert "50 % free" in next(v.reason for v in d.explanation.considered if v.outcome == "chosen")
    # an explicit preference still beats the balance
    d = place_task(TaskRequest(gpu_count=1, gpu_types=("T4", "A100")), s)
    assert isinstance(d, Placement) and d.node_name == "t4-1"
    # within one balance step, packing decides: the T4 node fills up, the A100 stays whole-GPU rich
    d = place_task(TaskRequest(gpu_count=1), s, config=dataclasses.replace(DEFAULT_CONFIG, type_balance_step_pct=60))
    assert isinstance(d, Placement) and d.node_name == "t4-1"


def test_type_free_share_counts_devices_and_mig_slices_on_schedulable_nodes():
    nodes = [
        node("a", "p", A100, 8, used=6),
        node("b", "p", A100, 0, mig_free=(("1g.10gb", 7),), mig_allocatable=(("1g.10gb", 7),)),
        node("c", "p", A100, 8, schedulable=False),
        node("d", "q", T4, 4, used=4),
    ]
    pct = type_free_pct(nodes)
    # a: 2000 of 8000; b: 7 slices of 142 milli, all free; c is cordoned and does not count
    assert pct[A100] == pytest.approx(100 * (2000 + 7 * 142) / (8000 + 7 * 142))
    assert pct[T4] == 0.0


# --- placement rules, values derived by hand ---------------------------------------------------

GPU_TAINT = Taint("nvidia.com/gpu", "present", "NoSchedule")


def test_a_four_gpu_placement_holds_four_gpu_slots_and_four_devices():
    s = snap(
        node("t4-1", "t4", T4, 4, used=4),
        node("a100-1", "a100", A100, 8, used=2, taints=(GPU_TAINT,)),
    )
    req = TaskRequest(task_key="retrain/r1/train", gpu_count=4, gpu_types=("T4", "A100"), cpu_millicores=8000,
                      memory_mib=32 * 1024, priority_class="training")  # fmt: skip
    d = place_task(req, s)
    assert isinstance(d, Placement)
    assert d == Placement(
        target="kubernetes",
        node_pool="a100",
        node_name="a100-1",
        gpu_type=A100,
        node_selector={POOL_LABEL: "a100", "nvidia.com/gpu.product": A100},
        tolerations=({"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},),
        resources_requests={"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "4"},
        resources_limits={"memory": "32Gi", "nvidia.com/gpu": "4"},
        airflow_pool="gpu_training",
        pool_slots=4,
        priority_class="training",
        expected_wait_s=30.0,
        explanation=d.explanation,
        claim=Claim("a100-1", ((2, 1000), (3, 1000), (4, 1000), (5, 1000)), None, 8000, 32 * 1024),
    )
    # T4 is preferred but full; A100 is preference #2; one feasible node among the two pools
    assert d.explanation.summary == f"kubernetes:a100/a100-1 ({A100}, preference #2); 1 feasible node(s) in 2 group(s)"
    a100, t4 = d.explanation.considered  # sorted by target, pool
    assert t4 == PoolVerdict("kubernetes", "t4", T4, 1, 0, "infeasible", "1/1 node(s): 0 whole GPU(s) free < 4")
    assert a100 == PoolVerdict("kubernetes", "a100", A100, 1, 1, "chosen", a100.reason)
    # 6 of 8 A100 devices free before the placement: 75 %
    assert re.fullmatch(rf"best node a100-1: fragmentation [+-]\d+ milli; {A100} 75 % free", a100.reason)


@pytest.mark.parametrize(("gpu_count", "gpu_milli", "slots"), [(0, 0, 1), (0, 300, 1), (1, 0, 1), (2, 0, 2), (8, 0, 8)])
def test_pool_slots_are_the_whole_gpus_held_and_at_least_one(gpu_count, gpu_milli, slots):
    s = snap(node("a1", "a100", A100, 8), node("c1", "cpu"))
    d = place_task(TaskRequest(gpu_count=gpu_count, gpu_milli=gpu_milli), s)
    assert isinstance(d, Placement)
    assert d.pool_slots == slots
    assert d.airflow_pool == ("gpu_training" if gpu_count or gpu_milli else "default_pool")


def test_a_cpu_only_task_is_kept_off_a_gpu_node_that_would_fit_it_better():
    # the GPU node's 2000m would be the best fit for 1500m; its 8 busy GPUs make it a penalised choice
    gpu = node("g1", "gpu", A100, 8, used=8, cpu_m=2000)
    d = place_task(TaskRequest(cpu_millicores=1500, memory_mib=1536), snap(gpu, node("c1", "cpu")))
    assert isinstance(d, Placement) and d.node_name == "c1" and d.gpu_type is None
    assert d.node_selector == {POOL_LABEL: "cpu"}
    assert d.resources_requests == {"cpu": "1500m", "memory": "1536Mi"}
    assert d.resources_limits == {"memory": "1536Mi"}  # no CPU limit
    assert (d.airflow_pool, d.pool_slots, d.tolerations) == ("default_pool", 1, ())
    assert d.explanation.summary == "kubernetes:cpu/c1; 2 feasible node(s) in 2 group(s)"  # g1 fits, penalised
    lost = next(v for v in d.explanation.considered if v.node_pool == "gpu")
    assert lost == PoolVerdict(
        "kubernetes", "gpu", A100, 1, 1, "lost", "CPU-only task kept off GPU nodes where possible"
    )
    # with no CPU node the GPU node takes it, as a CPU task: no GPU selector, no GPU type
    d = place_task(TaskRequest(cpu_millicores=1500, memory_mib=1536), snap(gpu))
    assert isinstance(d, Placement) and d.node_name == "g1" and d.gpu_type is None
    assert d.node_selector == {POOL_LABEL: "gpu"}
    assert d.explanation.summary == "kubernetes:gpu/g1; 1 feasible node(s) in 1 group(s)"
    chosen = d.explanation.considered[0]
    assert chosen.reason == "best node g1: fragmentation +0 milli; CPU-only task kept off GPU nodes where possible"


def test_a_cpu_only_task_does_not_tolerate_the_gpu_taint():
    gpu = node("g1", "gpu", A100, 8, taints=(GPU_TAINT,))
    with pytest.raises(PlacementError, match="could ever hold"):
        place_task(TaskRequest(), snap(gpu))
    busy_cpu = node("c1", "cpu", cpu_m=500, cpu_allocatable_millicores=8000)  # too small now, not forever
    d = place_task(TaskRequest(), snap(gpu, busy_cpu))
    assert isinstance(d, WaitDecision)
    assert "gpu: 1/1 node(s): untolerated taint nvidia.com/gpu" in d.reason


@pytest.mark.parametrize("effect", ["NoSchedule", "NoExecute"])
def test_noschedule_and_noexecute_taints_block_unless_tolerated(effect):
    tainted = node("t1", "t", A100, 8, taints=(Taint("dedicated", "", effect),))
    with pytest.raises(PlacementError, match="could ever hold"):
        place_task(TaskRequest(gpu_count=1), snap(tainted))
    d = place_task(TaskRequest(gpu_count=1), snap(tainted, node("ok", "o", A100, 8, used=8)))
    assert isinstance(d, WaitDecision) and "t: 1/1 node(s): untolerated taint dedicated" in d.reason
    d = place_task(TaskRequest(gpu_count=1, tolerate_taints=("dedicated",)), snap(tainted))
    assert isinstance(d, Placement)
    assert d.tolerations == ({"key": "dedicated", "operator": "Exists", "effect": effect},)  # no value: Exists


def test_prefer_no_schedule_taint_does_not_block_and_is_not_tolerated():
    soft = node("s1", "s", cpu_m=8000, taints=(Taint("nvidia.com/gpu", "present", "PreferNoSchedule"),))
    d = place_task(TaskRequest(), snap(soft))
    assert isinstance(d, Placement) and d.node_name == "s1" and d.tolerations == ()


def test_cordoned_node_without_a_reason_is_reported_as_not_schedulable():
    s = snap(node("c1", "p", A100, 8, schedulable=False), node("busy", "q", A100, 8, used=8))
    d = place_task(TaskRequest(gpu_count=1), s)
    assert isinstance(d, WaitDecision)
    assert "p: 1/1 node(s): node is not schedulable" in d.reason


def test_a_gpu_task_on_a_cpu_pool_is_told_there_is_no_gpu():
    d = place_task(TaskRequest(gpu_count=1), snap(node("c1", "cpu"), node("a1", "a100", A100, 8, used=8)))
    assert isinstance(d, WaitDecision)
    assert next(v.reason for v in d.explanation.considered if v.node_pool == "cpu") == "1/1 node(s): no GPU"


@pytest.mark.parametrize("resource", ["cpu", "memory"])
def test_a_node_with_exactly_the_requested_cpu_or_memory_free_fits(resource):
    n = node("n1", "p", cpu_m=2000, mem_mib=2048, cpu_allocatable_millicores=4000, memory_allocatable_mib=4096)
    d = place_task(TaskRequest(cpu_millicores=2000, memory_mib=2048), snap(n))
    assert isinstance(d, Placement) and d.claim == Claim("n1", (), None, 2000, 2048)
    over = (
        {"cpu_millicores": 2001, "memory_mib": 2048}
        if resource == "cpu"
        else {"cpu_millicores": 2000, "memory_mib": 2049}
    )
    d = place_task(TaskRequest(**over), snap(n))
    assert isinstance(d, WaitDecision)
    expected = "CPU 2000m free < 2001m" if resource == "cpu" else "memory 2048Mi free < 2049Mi"
    assert d.reason == f"no acceptable capacity free now (p: 1/1 node(s): {expected})"


@pytest.mark.parametrize("resource", ["cpu", "memory"])
def test_a_request_equal_to_the_allocatable_can_wait_one_above_it_never_fits(resource):
    n = node("n1", "p", cpu_m=0, mem_mib=0, cpu_allocatable_millicores=4000, memory_allocatable_mib=4096)
    fits = {"cpu_millicores": 4000, "memory_mib": 4096}
    assert isinstance(place_task(TaskRequest(**fits), snap(n)), WaitDecision)
    too_big = {
        **fits,
        ("cpu_millicores" if resource == "cpu" else "memory_mib"): fits[
            f"{resource}_millicores" if resource == "cpu" else "memory_mib"
        ]
        + 1,
    }
    with pytest.raises(PlacementError) as err:
        place_task(TaskRequest(**too_big), snap(n))
    assert str(err.value) == (
        f"no node in test could ever hold gpu_count=0 gpu_milli=0 cpu_millicores={too_big['cpu_millicores']} "
        f"memory_mib={too_big['memory_mib']} (allow_local=False); "
        "lower the request, accept more GPU types, or add a node pool"
    )


def test_a_busy_cpu_pool_means_wait_not_never():
    d = place_task(TaskRequest(), snap(node("c1", "cpu", cpu_m=0, cpu_allocatable_millicores=8000)))
    assert isinstance(d, WaitDecision)


def test_never_fits_names_the_gpu_types_when_some_were_asked_for():
    with pytest.raises(PlacementError) as err:
        place_task(TaskRequest(gpu_count=1, gpu_types=("A100",)), snap(node("t1", "t4", T4, 4, used=4)))
    assert str(err.value) == (
        "no node in test could ever hold gpu_count=1 gpu_milli=0 of type ['A100'] cpu_millicores=1000 "
        "memory_mib=1024 (allow_local=False); lower the request, accept more GPU types, or add a node pool"
    )


def test_a_whole_gpu_request_waits_for_a_node_with_enough_devices_and_never_for_a_smaller_one():
    s = snap(node("a1", "a100", A100, 4, used=4))
    assert isinstance(place_task(TaskRequest(gpu_count=4), s), WaitDecision)
    with pytest.raises(PlacementError):
        place_task(TaskRequest(gpu_count=5), s)


def test_a_fraction_can_wait_for_a_mig_slice_at_least_its_size():
    # A30 splits in 4: a 1g slice is 250 milli; all four are allocated now
    a30 = node("m1", "mig", "NVIDIA-A30", 0, mig_free=(), mig_allocatable=(("1g.6gb", 4),))
    assert isinstance(place_task(TaskRequest(gpu_milli=250), snap(a30)), WaitDecision)
    with pytest.raises(PlacementError):
        place_task(TaskRequest(gpu_milli=251), snap(a30))
    # a busy exclusive device can hold any fraction later
    busy = node("b1", "busy", A100, 2, used=2)
    assert isinstance(place_task(TaskRequest(gpu_milli=999), snap(busy)), WaitDecision)


def test_a_fraction_on_a_mig_slice_requests_the_slice_and_holds_no_device():
    a30 = node("m1", "mig", "NVIDIA-A30", 0, mig_free=(("1g.6gb", 1), ("2g.12gb", 1)))
    d = place_task(TaskRequest(gpu_milli=250), snap(a30))
    assert isinstance(d, Placement)
    assert d.claim == Claim("m1", (), "1g.6gb", 1000, 1024)  # 250 fits the 250 slice exactly: no waste
    assert d.resources_requests == {"cpu": "1", "memory": "1Gi", "nvidia.com/mig-1g.6gb": "1"}
    assert (d.airflow_pool, d.pool_slots) == ("gpu_training", 1)


def test_whole_gpus_on_a_milli_node_are_requested_in_milli():
    n = NodeCapacity(
        name="m1", node_pool="share", cpu_free_millicores=32_000, memory_free_mib=128_000,
        gpu_type=T4, gpu_sharing="milli", gpu_resource="alibabacloud.com/gpu-milli",
        gpu_free_milli=(1000, 300, 1000, 600),
    )  # fmt: skip
    d = place_task(TaskRequest(gpu_count=2), snap(n))
    assert isinstance(d, Placement)
    assert d.claim.gpu_milli_by_device == ((0, 1000), (2, 1000))
    assert d.resources_requests["alibabacloud.com/gpu-milli"] == "2000"
    assert d.resources_limits["alibabacloud.com/gpu-milli"] == "2000"
    assert d.node_selector == {"nvidia.com/gpu.product": T4}  # no pool label known on this node


def test_a_fraction_on_a_time_sliced_gpu_wastes_nothing_and_is_not_penalised():
    shared = node("s1", "shared", A10G_SHARED, 2, gpu_sharing="time-sliced")
    d = place_task(TaskRequest(gpu_milli=300, gpu_types=("A10G-SHARED",)), snap(shared))
    assert isinstance(d, Placement)
    assert d.claim.gpu_milli_by_device == ((0, 1000),)
    assert d.explanation.considered[0].reason.startswith("best node s1: fragmentation")
    assert "wastes" not in d.explanation.considered[0].reason


@pytest.mark.parametrize(("target", "wait_s"), [("kubernetes", 30.0), ("docker", 5.0), ("local", 0.0)])
def test_expected_wait_is_the_targets_bind_delay_and_only_kubernetes_gets_a_selector(target, wait_s):
    n = node("h1", "p", A100, 1, target=target)
    d = place_task(TaskRequest(gpu_count=1, allow_local=True), snap(n))
    assert isinstance(d, Placement) and d.expected_wait_s == wait_s
    if target == "kubernetes":
        assert d.node_selector == {POOL_LABEL: "p", "nvidia.com/gpu.product": A100}
    else:
        assert d.node_selector == {}
    assert d.airflow_pool == ("local_compute" if target == "local" else "gpu_training") and d.pool_slots == 1


def test_unknown_target_waits_as_long_as_kubernetes():
    assert DEFAULT_CONFIG.bind_delay("nomad") == 30.0
    assert DEFAULT_CONFIG.bind_delay("docker") == 5.0
    assert RouterConfig(bind_delay_s=(("docker", 7.5),)).bind_delay("docker") == 7.5


def test_local_placement_holds_one_local_slot():
    local = NodeCapacity(name="this-host", node_pool="local", target="local", cpu_free_millicores=8000,
                         memory_free_mib=16_000)  # fmt: skip
    d = place_task(TaskRequest(cpu_millicores=2000, memory_mib=2048, allow_local=True), snap(local))
    assert isinstance(d, Placement)
    assert (d.target, d.airflow_pool, d.pool_slots, d.node_selector) == ("local", "local_compute", 1, {})
    d = place_task(
        TaskRequest(allow_local=False), snap(local, node("c1", "cpu", cpu_m=0, cpu_allocatable_millicores=8000))
    )
    assert isinstance(d, WaitDecision)
    assert (
        PoolVerdict("local", "local", None, 1, 0, "not considered", "allow_local is false") in d.explanation.considered
    )


def test_identical_nodes_go_by_name_and_the_claim_names_the_chosen_node():
    d = place_task(TaskRequest(gpu_count=1), snap(node("n2", "p", A100, 8), node("n1", "p", A100, 8)))
    assert isinstance(d, Placement) and d.node_name == "n1" and d.claim.node_name == "n1"
    d = place_task(TaskRequest(gpu_count=1), snap(node("n2", "p", A100, 8), node("n1", "q", A100, 8)))
    assert isinstance(d, Placement) and d.node_name == "n1" and d.node_pool == "q"


def test_the_chosen_pool_names_its_other_infeasible_nodes():
    s = snap(node("ok", "p", A100, 8), node("off", "p", A100, 8, schedulable=False, unschedulable_reason="cordoned"))
    d = place_task(TaskRequest(gpu_count=1), s)
    assert isinstance(d, Placement)
    (v,) = d.explanation.considered
    assert (v.nodes, v.feasible_nodes) == (2, 1) and v.reason.endswith("; 1 other node(s): cordoned")


# --- which candidate loses, and why: a workload made of 8-GPU tasks only keeps FGD hand-computable

EIGHT_GPU_WORKLOAD = dataclasses.replace(DEFAULT_CONFIG, workload=(TaskShape(1.0, 8, 0, 1000, 1024),))
HALF_GPU_WORKLOAD = dataclasses.replace(DEFAULT_CONFIG, workload=(TaskShape(1.0, 0, 500, 1000, 1024),))


def test_fgd_keeps_the_whole_node_for_eight_gpu_jobs_and_says_so():
    # empty: 8 whole GPUs can hold an 8-GPU job, nothing unusable; after one taken, all 7000 are unusable
    # busy: 3 free GPUs are unusable (3000); after one taken, 2000: the delta is -1000
    s = snap(node("empty", "a", A100, 8), node("busy", "b", A100, 8, used=5))
    d = place_task(TaskRequest(gpu_count=1), s, config=EIGHT_GPU_WORKLOAD)
    assert isinstance(d, Placement) and d.node_name == "busy"
    lost, chosen = d.explanation.considered
    assert lost.reason == "fragmentation +7000 milli on empty vs -1000 on busy (keeps room for larger jobs)"
    # 11 of 16 A100 devices free: 68.75 %
    assert chosen.reason == f"best node busy: fragmentation -1000 milli; {A100} 69 % free"


def test_fgd_keeps_half_gpu_room_on_milli_nodes():
    # a 300 milli task: on x it best-fits device 1 (600 -> 300, now too small for a 500 task: +300);
    # on y it takes 300 of a whole device (1000 -> 700, still room for 500: +0)
    def milli(name, pool, free):
        return NodeCapacity(name=name, node_pool=pool, cpu_free_millicores=8000, memory_free_mib=8192,
                            gpu_type=T4, gpu_sharing="milli", gpu_free_milli=free)  # fmt: skip

    d = place_task(TaskRequest(gpu_milli=300), snap(milli("x", "px", (1000, 600)), milli("y", "py", (1000, 1000))),
                   config=HALF_GPU_WORKLOAD)  # fmt: skip
    assert isinstance(d, Placement) and d.node_name == "y" and d.claim.gpu_milli_by_device == ((0, 300),)
    lost = next(v for v in d.explanation.considered if v.node_pool == "px")
    assert lost.reason == "fragmentation +300 milli on x vs +0 on y (keeps room for larger jobs)"


def test_fgd_counts_a_node_whose_cpu_cannot_host_the_workload_as_all_unusable():
    # after the placement a has 500m CPU left, below the workload's 1000m: its 7000 free milli turn unusable
    # (+7000 after 0); b keeps 64 cores: -1000 as in the 8-GPU case above, but a is the emptier node
    s = snap(node("a", "pa", A100, 8, cpu_m=1500), node("b", "pb", A100, 8, used=5))
    d = place_task(TaskRequest(gpu_count=1, cpu_millicores=1000), s, config=EIGHT_GPU_WORKLOAD)
    assert isinstance(d, Placement) and d.node_name == "b"


def test_the_slice_that_wastes_less_wins_and_the_other_is_told_the_waste():
    s = snap(
        node("big", "m1", A100, 0, mig_free=(("3g.40gb", 1),)), node("small", "m2", A100, 0, mig_free=(("1g.10gb", 1),))
    )
    d = place_task(TaskRequest(gpu_milli=120), s)
    assert isinstance(d, Placement) and d.node_name == "small" and d.claim.mig_profile == "1g.10gb"
    lost = next(v for v in d.explanation.considered if v.node_pool == "m1")
    assert lost.reason == "MIG slice wastes 308 milli vs 22"  # 3/7 of 1000 = 428, 1/7 = 142


def test_among_equal_cpu_nodes_the_tighter_fit_wins():
    d = place_task(
        TaskRequest(cpu_millicores=2000), snap(node("roomy", "a", cpu_m=8000), node("tight", "b", cpu_m=4000))
    )
    assert isinstance(d, Placement) and d.node_name == "tight"
    lost = next(v for v in d.explanation.considered if v.node_pool == "a")
    assert lost.reason == "leaves 0 GPU milli free vs 0 on tight (best fit)"


# --- helpers -----------------------------------------------------------------------------------


def test_type_rank_skips_a_time_sliced_name_and_keeps_looking():
    assert type_rank(["A10G-SHARED", "A100"], A100) == 1
    assert type_rank(["A100-SXM4"], A100) == 0  # a multi-token name
    assert type_rank(["SXM4-A100"], A100) is None  # tokens in order only
    assert type_rank(["80GB"], A100) == 0  # the last token
    assert type_rank([], None) is None


def test_base_product_strips_the_shared_suffix_in_any_case():
    assert base_product("NVIDIA-A10G-SHARED") == "NVIDIA-A10G"
    assert base_product("nvidia-a10g-shared") == "nvidia-a10g"
    assert base_product(A100) == A100


@pytest.mark.parametrize(
    ("profile", "gpu_type", "milli"),
    [
        ("1g.6gb", "NVIDIA-A30", 250),
        ("2g.12gb", "nvidia-a30-24gb", 500),
        ("1g.10gb", A100, 142),
        ("3g.40gb", A100, 428),
        ("7g.80gb", A100, 1000),
        ("1g.10gb", None, 142),
        ("9g.x", A100, 1000),  # never more than a device
        ("whole", A100, 1000),  # not a MIG profile: a whole device
    ],
)
def test_mig_slice_share_of_a_device(profile, gpu_type, milli):
    assert mig_fraction_milli(profile, gpu_type) == milli


def test_type_free_share_counts_slices_free_of_allocatable_and_empty_types():
    nodes = [
        # A30: 2 of 4 slices free, plus one whole free device of two: (500 + 1000) / (1000 + 2000)
        node("a30", "p", "NVIDIA-A30", 2, used=1, mig_free=(("1g.6gb", 2),), mig_allocatable=(("1g.6gb", 4),)),
        # mig_free without mig_allocatable: the free slices are the capacity too (3 x 142)
        node("a100", "q", A100, 0, mig_free=(("1g.10gb", 3),)),
        node("t4", "r", T4, 0),  # a type with no capacity at all
    ]
    assert type_free_pct(nodes) == {"NVIDIA-A30": 50.0, A100: 100.0, T4: 0.0}


def test_apply_claims_subtracts_what_reservations_hold_and_never_goes_below_zero():
    s = snap(
        node("a", "p", A100, 2, cpu_m=4000, mem_mib=4096, mig_free=(("1g.10gb", 1),)),
        node("b", "p", cpu_m=1000, mem_mib=1024),
    )
    assert apply_claims(s, []) is s
    after = apply_claims(
        s,
        [
            Claim("a", ((0, 1000), (1, 300), (2, 1000)), "1g.10gb", 1000, 1024),  # device 2 does not exist
            Claim("a", ((1, 800),), "1g.10gb", 5000, 5000),
            Claim("gone", ((0, 1000),), None, 1, 1),  # a node no longer in the snapshot
        ],
    )
    a, b = after.nodes
    assert a.gpu_free_milli == (0, 0) and a.mig_free == (("1g.10gb", 0),)
    assert (a.cpu_free_millicores, a.memory_free_mib) == (0, 0)
    assert b == s.nodes[1]
    assert after.source == "test"
    # one claim takes one slice; a claim on a profile the node no longer lists leaves it at 0
    three = snap(node("m", "p", A100, 0, mig_free=(("1g.10gb", 3),)))
    after = apply_claims(three, [Claim("m", (), "1g.10gb", 1, 1), Claim("m", (), "2g.20gb", 1, 1)])
    assert after.nodes[0].mig_free == (("1g.10gb", 2), ("2g.20gb", 0))


def test_a_whole_gpu_task_is_told_time_sliced_gpus_give_no_exclusive_device():
    s = snap(node("s1", "shared", A10G_SHARED, 4, gpu_sharing="time-sliced"), node("a1", "a100", A100, 8, used=8))
    d = place_task(TaskRequest(gpu_count=1), s)
    assert isinstance(d, WaitDecision)
    assert "shared: 1/1 node(s): time-sliced GPUs give no exclusive device" in d.reason


def _milli_node(name, pool, free, **kw):
    return NodeCapacity(name=name, node_pool=pool, cpu_free_millicores=8000, memory_free_mib=8192, gpu_type=A100,
                        gpu_sharing="milli", gpu_free_milli=free, **kw)  # fmt: skip


def test_a_fraction_takes_a_device_with_exactly_that_much_free_without_penalty():
    d = place_task(TaskRequest(gpu_milli=500), snap(_milli_node("m1", "p", (1000, 500))))
    assert isinstance(d, Placement) and d.claim.gpu_milli_by_device == ((1, 500),)
    assert re.fullmatch(
        rf"best node m1: fragmentation [+-]\d+ milli; {A100} 75 % free", d.explanation.considered[0].reason
    )


def test_an_exhausted_mig_profile_is_not_offered():
    mig = node("m1", "mig", A100, 0, mig_free=(("1g.10gb", 0),), mig_allocatable=(("1g.10gb", 7),))
    d = place_task(TaskRequest(gpu_milli=120), snap(mig))
    assert isinstance(d, WaitDecision) and "1/1 node(s): no device with 120 milli free" in d.reason


def test_on_one_node_the_slice_wasting_less_beats_a_whole_exclusive_device():
    mixed = node("x1", "p", A100, 1, mig_free=(("1g.10gb", 1),))
    d = place_task(TaskRequest(gpu_milli=120), snap(mixed))
    assert isinstance(d, Placement) and d.claim == Claim("x1", (), "1g.10gb", 1000, 1024)


def test_on_an_equal_waste_tie_a_shared_device_beats_a_mig_slice():
    # 1g.10gb is 142 milli: a 142 fraction wastes nothing on the slice, nor on the milli-shared device
    mixed = _milli_node("x1", "p", (1000,), mig_free=(("1g.10gb", 1),))
    d = place_task(TaskRequest(gpu_milli=142), snap(mixed))
    assert isinstance(d, Placement) and d.claim == Claim("x1", ((0, 142),), None, 1000, 1024)


ONE_GPU_WORKLOAD = dataclasses.replace(DEFAULT_CONFIG, workload=(TaskShape(1.0, 1, 0, 1000, 1024),))


@pytest.mark.parametrize("short", ["cpu", "memory"])
def test_fgd_sees_the_cpu_and_memory_a_placement_leaves(short):
    # 1-GPU workload needing 1000m and 1Gi. On x the task leaves 500m (or 512Mi): x's last free GPU
    # becomes unusable (+1000); on y it stays usable (+0). Without that, x would win the best fit on
    # CPU or, on a tie, on its name.
    lean = {"cpu_m": 1500} if short == "cpu" else {"mem_mib": 1536}
    s = snap(node("x", "px", A100, 2, **lean), node("y", "py", A100, 2))
    d = place_task(TaskRequest(gpu_count=1, cpu_millicores=1000, memory_mib=1024), s, config=ONE_GPU_WORKLOAD)
    assert isinstance(d, Placement) and d.node_name == "y"
    lost = next(v for v in d.explanation.considered if v.node_pool == "px")
    assert lost.reason == "fragmentation +1000 milli on x vs +0 on y (keeps room for larger jobs)"


def test_a_type_balance_step_below_one_percent_still_balances():
    s = snap(
        node("t4-1", "t4", T4, 2, used=1), node("t4-2", "t4", T4, 2, used=2),  # 25 % free, a perfect fit
        node("a100-1", "a100", A100, 8, used=4),  # 50 % free
    )  # fmt: skip
    d = place_task(TaskRequest(gpu_count=1), s, config=dataclasses.replace(DEFAULT_CONFIG, type_balance_step_pct=0.5))
    assert isinstance(d, Placement) and d.node_pool == "a100"


def test_local_groups_are_skipped_by_target_not_by_pool_name_and_all_are_listed():
    def local(name, pool):
        return NodeCapacity(name=name, node_pool=pool, target="local", cpu_free_millicores=8000,
                            memory_free_mib=16_000, gpu_type=T4, gpu_free_milli=(1000,))  # fmt: skip

    s = snap(local("h1", "workstation"), local("h2", "laptop"), node("k1", "local", cpu_m=4000))
    d = place_task(TaskRequest(cpu_millicores=2000), s)
    assert isinstance(d, Placement) and d.target == "kubernetes" and d.node_pool == "local"
    assert d.explanation.considered[1:] == (
        PoolVerdict("local", "laptop", T4, 1, 0, "not considered", "allow_local is false"),
        PoolVerdict("local", "workstation", T4, 1, 0, "not considered", "allow_local is false"),
    )
    with pytest.raises(PlacementError):
        place_task(TaskRequest(cpu_millicores=2000), snap(local("h1", "workstation")))


def test_verdicts_are_sorted_by_target_pool_and_type_with_cpu_nodes_first():
    s = snap(
        node("g1", "mixed", A100, 8, used=8, cpu_m=0, cpu_allocatable_millicores=8000),
        node("c1", "mixed", cpu_m=500, cpu_allocatable_millicores=8000),
        NodeCapacity(name="d1", node_pool="a", target="docker", cpu_free_millicores=0, memory_free_mib=0,
                     cpu_allocatable_millicores=8000, memory_allocatable_mib=8000),
    )  # fmt: skip
    d = place_task(TaskRequest(cpu_millicores=1000), s)
    assert isinstance(d, WaitDecision)
    assert [(v.target, v.node_pool, v.gpu_type) for v in d.explanation.considered] == [
        ("docker", "a", None),
        ("kubernetes", "mixed", None),
        ("kubernetes", "mixed", A100),
    ]


def test_an_infeasible_pool_counts_each_reason_and_names_the_three_commonest():
    s = snap(
        node("busy1", "p", A100, 8, used=8),
        node("busy2", "p", A100, 8, used=8),
        node("off", "p", A100, 8, schedulable=False, unschedulable_reason="node is cordoned"),
        node("taint", "p", A100, 8, taints=(Taint("dedicated", "x"),)),
        node("cpu", "p", A100, 8, cpu_m=10),
    )
    d = place_task(TaskRequest(gpu_count=1), s)
    assert isinstance(d, WaitDecision)
    assert d.explanation.considered[0].reason == (
        "2/5 node(s): 0 whole GPU(s) free < 1; 1/5 node(s): node is cordoned; 1/5 node(s): untolerated taint dedicated"
    )


def test_the_chosen_pool_counts_its_feasible_nodes_and_names_two_other_reasons():
    s = snap(
        node("ok1", "p", A100, 8, used=4),
        node("ok2", "p", A100, 8, used=4),
        node("busy", "p", A100, 8, used=8),
        node("off", "p", A100, 8, schedulable=False, unschedulable_reason="node is cordoned"),
        node("taint", "p", A100, 8, taints=(Taint("dedicated", "x"),)),
    )
    d = place_task(TaskRequest(gpu_count=1), s)
    assert isinstance(d, Placement) and d.node_name == "ok1"
    assert d.explanation.summary.endswith("; 2 feasible node(s) in 1 group(s)")
    (v,) = d.explanation.considered
    assert (v.nodes, v.feasible_nodes) == (5, 2)
    assert v.reason.endswith("% free; 1 other node(s): 0 whole GPU(s) free < 1; 1 other node(s): node is cordoned")


def test_fragmentation_differences_below_one_milli_still_decide():
    # workload: 500-milli tasks (share 1) and 100-milli tasks (share 2). A 299 fraction leaves 301 on x's
    # only device (+301/3 = +100.333 unusable) and 300 on z's 599 device (+300/3 = +100.000): z wins,
    # although x, with less GPU left over (301 vs 1300 milli), would win the best fit
    cfg = dataclasses.replace(
        DEFAULT_CONFIG, workload=(TaskShape(1.0, 0, 500, 1000, 1024), TaskShape(2.0, 0, 100, 1000, 1024))
    )
    s = snap(_milli_node("x", "px", (600,)), _milli_node("z", "pz", (599, 1000)))
    d = place_task(TaskRequest(gpu_milli=299), s, config=cfg)
    assert isinstance(d, Placement) and d.node_name == "z" and d.claim.gpu_milli_by_device == ((0, 299),)
    lost = next(v for v in d.explanation.considered if v.node_pool == "px")
    assert lost.reason == "fragmentation +100 milli on x vs +100 on z (keeps room for larger jobs)"
