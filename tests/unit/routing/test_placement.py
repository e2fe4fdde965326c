"""Behaviour of place_task: type preference, packing, taints, local fallback, explanations."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.mlops.errors import PlacementError
from include.mlops.routing.model import (
    CapacitySnapshot,
    NodeCapacity,
    Placement,
    Taint,
    TaskRequest,
    WaitDecision,
)
from include.mlops.routing.placement import (
    DEFAULT_CONFIG,
    RouterConfig,
    apply_claims,
    place_task,
    type_free_pct,
    type_rank,
)

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
    assert lost.outcome == "lost" and "preference #2" in lost.reason


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
    assert "wastes" in lost.reason


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


def test_busy_cluster_gives_a_wait_with_recheck_and_max_wait_flag():
    s = snap(node("a1", "a100", A100, 8, used=8))
    d = place_task(TaskRequest(gpu_count=1, max_wait_s=600), s, waited_s=100)
    assert isinstance(d, WaitDecision) and not d.max_wait_exceeded
    assert 15 <= d.recheck_after_s <= 120 and "0 whole GPU(s) free" in d.reason
    d = place_task(TaskRequest(gpu_count=1, max_wait_s=600), s, waited_s=601)
    assert isinstance(d, WaitDecision) and d.max_wait_exceeded and "max_wait_s exceeded" in d.reason


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


# --- properties ------------------------------------------------------------------------------

TYPES = [A100, T4, "NVIDIA-H100-80GB-HBM3"]


@st.composite
def clusters(draw):
    nodes = []
    for i in range(draw(st.integers(1, 12))):
        gpus = draw(st.sampled_from([0, 1, 2, 4, 8]))
        sharing = draw(st.sampled_from(["exclusive", "milli"])) if gpus else "exclusive"
        if sharing == "milli":
            free = tuple(draw(st.lists(st.integers(0, 1000), min_size=gpus, max_size=gpus)))
        else:
            free = tuple(draw(st.lists(st.sampled_from([0, 1000]), min_size=gpus, max_size=gpus)))
        nodes.append(
            NodeCapacity(
                name=f"n{i}", node_pool=f"p{i % 4}",
                cpu_free_millicores=draw(st.integers(0, 96_000)), memory_free_mib=draw(st.integers(0, 512_000)),
                cpu_allocatable_millicores=96_000, memory_allocatable_mib=512_000,
                gpu_type=draw(st.sampled_from(TYPES)) if gpus else None, gpu_sharing=sharing, gpu_free_milli=free,
                schedulable=draw(st.booleans()) or True,
            )
        )  # fmt: skip
    return CapacitySnapshot(tuple(nodes), "hyp")


requests = st.builds(
    TaskRequest,
    gpu_count=st.sampled_from([0, 1, 2, 4, 8]),
    cpu_millicores=st.integers(100, 64_000),
    memory_mib=st.integers(128, 300_000),
    gpu_types=st.lists(st.sampled_from(["A100", "T4", "H100"]), unique=True, max_size=2).map(tuple),
)


@settings(max_examples=120, deadline=None)
@given(cluster=clusters(), reqs=st.lists(requests, min_size=1, max_size=12))
def test_repeated_placements_never_overcommit_a_node_or_break_the_type_rule(cluster, reqs):
    claims = []
    for req in reqs:
        try:
            d = place_task(req, cluster, reserved=claims)
        except PlacementError:
            continue
        if isinstance(d, WaitDecision):
            assert d.reason and d.explanation.considered
            continue
        claims.append(d.claim)
        if req.gpu_types and req.needs_gpu:
            assert type_rank(req.gpu_types, d.gpu_type) is not None
        assert d.explanation.summary and any(v.outcome == "chosen" for v in d.explanation.considered)
        assert sum(m for _, m in d.claim.gpu_milli_by_device) == req.gpu_count * 1000
    # the claims, subtracted from the original snapshot, never drive a node below zero
    before = {n.name: n for n in cluster.nodes}
    used_cpu: dict[str, int] = {}
    used_gpu: dict[tuple[str, int], int] = {}
    for c in claims:
        used_cpu[c.node_name] = used_cpu.get(c.node_name, 0) + c.cpu_millicores
        for i, m in c.gpu_milli_by_device:
            used_gpu[(c.node_name, i)] = used_gpu.get((c.node_name, i), 0) + m
    for name, cpu in used_cpu.items():
        assert cpu <= before[name].cpu_free_millicores
    for (name, i), m in used_gpu.items():
        assert m <= before[name].gpu_free_milli[i]
    after = apply_claims(cluster, claims)
    assert all(n.cpu_free_millicores >= 0 and min(n.gpu_free_milli, default=0) >= 0 for n in after.nodes)


@settings(max_examples=120, deadline=None)
@given(cluster=clusters(), req=requests)
def test_every_rejected_group_names_its_reason(cluster, req):
    try:
        d = place_task(req, cluster)
    except PlacementError as exc:
        assert "gpu_count=" in str(exc)
        return
    for v in d.explanation.considered:
        assert v.reason.strip(), v
        if v.outcome == "infeasible":
            assert "node(s):" in v.reason


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


@settings(max_examples=120, deadline=None)
@given(cluster=clusters(), req=requests.filter(lambda r: r.gpu_count > 0))
def test_chosen_type_is_never_scarcer_than_a_feasible_equally_preferred_type(cluster, req):
    try:
        d = place_task(req, cluster)
    except PlacementError:
        return
    if not isinstance(d, Placement):
        return
    steps = {t: math.floor(p / DEFAULT_CONFIG.type_balance_step_pct) for t, p in type_free_pct(cluster.nodes).items()}
    rank = type_rank(req.gpu_types, d.gpu_type)
    for v in d.explanation.considered:
        if v.outcome == "lost" and type_rank(req.gpu_types, v.gpu_type) == rank:
            assert v.gpu_type is not None and steps[v.gpu_type] <= steps[d.gpu_type], v
