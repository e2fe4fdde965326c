"""Properties of place_task on generated clusters, each decision checked against a plain oracle.

The generated nodes hold whole devices (exclusive or milli-shared), carry no taints and may be
cordoned; the requests ask for whole GPUs or CPU only. For those the rule is simple enough to
state directly: a task places when some schedulable node has its CPU, memory and whole GPUs of an
accepted type free now; it can never place when no node has them allocatable; otherwise it waits.
Every decision is checked against that, so an error or a wait is a checked outcome, not a skip.
"""

from __future__ import annotations

import math
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from include.mlops.errors import PlacementError
from include.mlops.routing.model import CapacitySnapshot, Claim, NodeCapacity, Placement, TaskRequest, WaitDecision
from include.mlops.routing.placement import DEFAULT_CONFIG, apply_claims, place_task, type_free_pct, type_rank

A100 = "NVIDIA-A100-SXM4-80GB"
T4 = "Tesla-T4"
TYPES = [A100, T4, "NVIDIA-H100-80GB-HBM3"]


@st.composite
def clusters(draw, schedulable=None):
    schedulable = st.booleans() if schedulable is None else schedulable
    nodes = []
    for i in range(draw(st.integers(1, 12))):
        gpus = draw(st.sampled_from([0, 1, 2, 4, 8]))
        sharing = draw(st.sampled_from(["exclusive", "milli"])) if gpus else "exclusive"
        if sharing == "milli":
            free = tuple(draw(st.lists(st.integers(0, 1000), min_size=gpus, max_size=gpus)))
        else:
            free = tuple(draw(st.lists(st.sampled_from([0, 1000]), min_size=gpus, max_size=gpus)))
        cpu = draw(st.sampled_from([16_000, 32_000, 96_000]))
        mem = draw(st.sampled_from([64_000, 128_000, 512_000]))
        nodes.append(
            NodeCapacity(
                name=f"n{i}", node_pool=f"p{i % 4}",
                cpu_free_millicores=draw(st.just(cpu) | st.integers(0, cpu)),
                memory_free_mib=draw(st.just(mem) | st.integers(0, mem)),
                cpu_allocatable_millicores=cpu, memory_allocatable_mib=mem,
                gpu_type=draw(st.sampled_from(TYPES)) if gpus else None, gpu_sharing=sharing, gpu_free_milli=free,
                schedulable=draw(schedulable),
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


def _gpus_ok(req: TaskRequest, n: NodeCapacity, devices: int) -> bool:
    return req.gpu_count == 0 or (type_rank(req.gpu_types, n.gpu_type) is not None and devices >= req.gpu_count)


def fits_now(req: TaskRequest, n: NodeCapacity) -> bool:
    return (
        n.schedulable
        and n.cpu_free_millicores >= req.cpu_millicores
        and n.memory_free_mib >= req.memory_mib
        and _gpus_ok(req, n, n.whole_gpus_free)
    )


def could_ever_fit(req: TaskRequest, n: NodeCapacity) -> bool:
    return (
        n.cpu_allocatable_millicores >= req.cpu_millicores
        and n.memory_allocatable_mib >= req.memory_mib
        and _gpus_ok(req, n, len(n.gpu_free_milli))
    )


def decide(req: TaskRequest, cluster: CapacitySnapshot, claims: list[Claim] | None = None) -> str:
    """place_task's outcome ("place", "wait" or "never"), asserted against the oracle."""
    claims = claims or []
    now = apply_claims(cluster, claims)
    try:
        d = place_task(req, cluster, reserved=claims)
    except PlacementError as exc:
        assert not any(could_ever_fit(req, n) for n in now.nodes), exc
        assert f"gpu_count={req.gpu_count} " in str(exc)
        return "never"
    if isinstance(d, WaitDecision):
        assert not any(fits_now(req, n) for n in now.nodes), d.reason
        assert any(could_ever_fit(req, n) for n in now.nodes)
        assert d.reason.startswith("no acceptable capacity free now (") and not d.max_wait_exceeded
        return "wait"
    assert isinstance(d, Placement)
    chosen = next(n for n in now.nodes if n.name == d.node_name)
    assert fits_now(req, chosen), (req, chosen)
    assert d.explanation.summary and sum(v.outcome == "chosen" for v in d.explanation.considered) == 1
    assert sum(m for _, m in d.claim.gpu_milli_by_device) == req.gpu_count * 1000
    assert d.pool_slots == max(1, req.gpu_count)
    return "place"


@settings(max_examples=100, deadline=None)
@given(cluster=clusters(), reqs=st.lists(requests, min_size=1, max_size=12))
def test_repeated_placements_follow_the_oracle_and_never_overcommit_a_node(cluster, reqs):
    claims: list[Claim] = []
    for req in reqs:
        if decide(req, cluster, claims) == "place":
            d = place_task(req, cluster, reserved=claims)
            assert isinstance(d, Placement)
            claims.append(d.claim)
    # the claims, subtracted from the original snapshot, never drive a node below zero
    before = {n.name: n for n in cluster.nodes}
    used_cpu: Counter[str] = Counter()
    used_mem: Counter[str] = Counter()
    used_gpu: Counter[tuple[str, int]] = Counter()
    for c in claims:
        used_cpu[c.node_name] += c.cpu_millicores
        used_mem[c.node_name] += c.memory_mib
        for i, m in c.gpu_milli_by_device:
            used_gpu[(c.node_name, i)] += m
    for name, cpu in used_cpu.items():
        assert cpu <= before[name].cpu_free_millicores and used_mem[name] <= before[name].memory_free_mib
    for (name, i), m in used_gpu.items():
        assert m <= before[name].gpu_free_milli[i]


def _plain_case(rng: random.Random) -> tuple[CapacitySnapshot, TaskRequest]:
    """One cluster and request of the same shape as clusters()/requests, drawn uniformly.

    Hypothesis does not draw uniformly, and its choices shifted with unrelated imports in the
    same process (place/wait/never 31/51/19 % alone, 25/70/5 % after another test module), so
    the share of outcomes is measured on plain seeded draws of the same space."""
    nodes = []
    for i in range(rng.randint(1, 12)):
        gpus = rng.choice([0, 1, 2, 4, 8])
        sharing = rng.choice(["exclusive", "milli"]) if gpus else "exclusive"
        free = tuple(rng.randint(0, 1000) if sharing == "milli" else rng.choice([0, 1000]) for _ in range(gpus))
        cpu, mem = rng.choice([16_000, 32_000, 96_000]), rng.choice([64_000, 128_000, 512_000])
        nodes.append(
            NodeCapacity(
                name=f"n{i}", node_pool=f"p{i % 4}",
                cpu_free_millicores=rng.choice([cpu, rng.randint(0, cpu)]),
                memory_free_mib=rng.choice([mem, rng.randint(0, mem)]),
                cpu_allocatable_millicores=cpu, memory_allocatable_mib=mem,
                gpu_type=rng.choice(TYPES) if gpus else None, gpu_sharing=sharing, gpu_free_milli=free,
                schedulable=rng.random() < 0.5,
            )
        )  # fmt: skip
    req = TaskRequest(
        gpu_count=rng.choice([0, 1, 2, 4, 8]),
        cpu_millicores=rng.randint(100, 64_000),
        memory_mib=rng.randint(128, 300_000),
        gpu_types=tuple(rng.sample(["A100", "T4", "H100"], rng.randint(0, 2))),
    )
    return CapacitySnapshot(tuple(nodes), "plain"), req


def test_generated_cases_place_wait_and_never_fit_in_fair_shares():
    """The generated space is only worth its properties if all three outcomes are common in it."""
    rng = random.Random(20261201)
    outcomes = Counter(decide(req, cluster) for cluster, req in (_plain_case(rng) for _ in range(400)))
    shares = {k: outcomes[k] / 400 for k in ("place", "wait", "never")}
    # this seed: 12.5 % place, 33 % wait, 54 % never fit (uniform draws ask for more than the
    # hypothesis examples did); each outcome must keep a real share of the cases
    assert shares["place"] >= 0.1 and shares["wait"] >= 0.2 and shares["never"] >= 0.1, shares


@settings(max_examples=60, deadline=None)
@given(cluster=clusters(schedulable=st.just(False)), req=requests)
def test_a_fully_cordoned_cluster_never_places(cluster, req):
    assert decide(req, cluster) in ("wait", "never")


@settings(max_examples=60, deadline=None)
@given(cluster=clusters(), req=requests, extra_cpu=st.integers(1, 10_000))
def test_a_request_beyond_every_nodes_allocatable_never_fits(cluster, req, extra_cpu):
    too_big = TaskRequest(cpu_millicores=96_000 + extra_cpu, gpu_count=req.gpu_count, gpu_types=req.gpu_types)
    assert decide(too_big, cluster) == "never"
    more_gpus_than_any_node = TaskRequest(gpu_count=16, gpu_types=req.gpu_types)
    assert decide(more_gpus_than_any_node, cluster) == "never"


@settings(max_examples=100, deadline=None)
@given(cluster=clusters(), req=requests)
def test_every_rejected_group_names_its_reason(cluster, req):
    if decide(req, cluster) == "never":
        return  # checked by decide: no node could ever hold it
    d = place_task(req, cluster)
    for v in d.explanation.considered:
        assert v.reason.strip(), v
        if v.outcome == "infeasible":
            assert "node(s):" in v.reason and v.feasible_nodes == 0


@settings(max_examples=100, deadline=None)
@given(cluster=clusters(), req=requests.filter(lambda r: r.gpu_count > 0))
def test_chosen_type_is_never_scarcer_than_a_feasible_equally_preferred_type(cluster, req):
    if decide(req, cluster) != "place":
        return  # checked by decide: nothing fits now, or ever
    d = place_task(req, cluster)
    assert isinstance(d, Placement)
    steps = {t: math.floor(p / DEFAULT_CONFIG.type_balance_step_pct) for t, p in type_free_pct(cluster.nodes).items()}
    rank = type_rank(req.gpu_types, d.gpu_type)
    for v in d.explanation.considered:
        if v.outcome == "lost" and type_rank(req.gpu_types, v.gpu_type) == rank:
            assert v.gpu_type is not None and steps[v.gpu_type] <= steps[d.gpu_type], v
