"""Choose where a task runs: GPU-type preference first, then fragmentation-aware packing.

Among equally preferred GPU types the one with the larger free share wins, so a scarce type
stays free for the tasks that accept only it. Within a type, scoring follows FGD (Weng et al.,
ATC'23): put the task where it raises the expected unusable GPU capacity (for the workload mix)
the least, so whole nodes stay free for large jobs; ties go to the best fit. The local machine
is a last resort, only if allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

from include.mlops.errors import PlacementError
from include.mlops.routing.model import (
    FULL_GPU_MILLI,
    SHARED_SUFFIX,
    CapacitySnapshot,
    Claim,
    Decision,
    Explanation,
    NodeCapacity,
    Placement,
    PoolVerdict,
    TaskRequest,
    WaitDecision,
)
from include.mlops.routing.quantities import format_cpu, format_memory
from include.mlops.routing.workload import TRACE_WORKLOAD, TaskShape

_BLOCKING_EFFECTS = frozenset({"NoSchedule", "NoExecute"})


@dataclass(frozen=True)
class RouterConfig:
    """Team-wide knobs (an Airflow Variable can override them)."""

    gpu_airflow_pool: str = "gpu_training"
    cpu_airflow_pool: str = "default_pool"
    local_airflow_pool: str = "local_compute"
    # seconds from decision to a running container: pod bind + image pull on k8s
    bind_delay_s: tuple[tuple[str, float], ...] = (("kubernetes", 30.0), ("docker", 5.0), ("local", 0.0))
    gpu_taint_keys: tuple[str, ...] = ("nvidia.com/gpu",)
    recheck_min_s: float = 15.0
    recheck_max_s: float = 120.0
    workload: tuple[TaskShape, ...] = field(default=TRACE_WORKLOAD)
    # Equally preferred GPU types: the one with the larger free share wins, compared in steps of
    # this many percent (within a step, packing decides). Without it, best-fit and FGD drain the
    # small single-GPU nodes first and tasks that accept only that type find them full.
    type_balance_step_pct: float = 5.0

    def bind_delay(self, target: str) -> float:
        return dict(self.bind_delay_s).get(target, 30.0)


DEFAULT_CONFIG = RouterConfig()


# --- GPU types ---------------------------------------------------------------------------


def base_product(product: str) -> str:
    return product[: -len(SHARED_SUFFIX)] if product.upper().endswith(SHARED_SUFFIX) else product


def type_rank(wanted: Sequence[str], product: str | None) -> int | None:
    """Index of the first acceptable type naming this product; None if none does.

    A wanted name matches a product when its dash-separated tokens appear contiguously
    in the product's (case-insensitive): "A100" matches NVIDIA-A100-SXM4-80GB, "A10" does not
    match NVIDIA-A10G. A time-sliced product (-SHARED) is only matched by a name ending in -SHARED.
    """
    if product is None:
        return None
    if not wanted:
        return 0
    shared = product.upper().endswith(SHARED_SUFFIX)
    tokens = base_product(product).upper().split("-")
    for i, name in enumerate(wanted):
        name_shared = name.upper().endswith(SHARED_SUFFIX)
        if name_shared != shared:
            continue
        want = base_product(name).upper().split("-")
        n = len(want)
        if any(tokens[j : j + n] == want for j in range(len(tokens) - n + 1)):
            return i
    return None


_MIG = re.compile(r"^(\d+)g\.")


def mig_fraction_milli(profile: str, gpu_type: str | None) -> int:
    """Share of a device one MIG slice gives, in milli: A30 splits in 4, A100/H100/H200 in 7."""
    m = _MIG.match(profile)
    if not m:
        return FULL_GPU_MILLI
    denom = 4 if gpu_type and "A30" in gpu_type.upper() else 7
    return min(FULL_GPU_MILLI, int(m.group(1)) * FULL_GPU_MILLI // denom)


# --- fragmentation (FGD) -----------------------------------------------------------------


@lru_cache(maxsize=1 << 16)
def _fragmentation(free: tuple[int, ...], cpu_m: int, mem_mib: int, workload: tuple[TaskShape, ...]) -> float:
    """Expected GPU milli on this node that a task drawn from ``workload`` could not use."""
    total = sum(free)
    if total == 0:
        return 0.0
    full = sum(1 for f in free if f >= FULL_GPU_MILLI)
    partial = total - full * FULL_GPU_MILLI
    frag = 0.0
    weight = 0.0
    for shape in workload:
        weight += shape.share
        if shape.cpu_millicores > cpu_m or shape.memory_mib > mem_mib:
            frag += shape.share * total
        elif shape.gpu_count:
            frag += shape.share * (total if full < shape.gpu_count else partial)
        else:
            frag += shape.share * sum(f for f in free if f < shape.gpu_milli)
    return frag / weight if weight else 0.0


def type_free_pct(nodes: Iterable[NodeCapacity]) -> dict[str, float]:
    """Free share of each GPU type's capacity on schedulable nodes, in percent (MIG slices count)."""
    free: dict[str, float] = {}
    total: dict[str, float] = {}
    for n in nodes:
        if n.gpu_type is None or not n.schedulable:
            continue
        f = float(sum(n.gpu_free_milli))
        t = float(len(n.gpu_free_milli) * FULL_GPU_MILLI)
        if n.mig_free or n.mig_allocatable:
            f += sum(mig_fraction_milli(p, n.gpu_type) * c for p, c in n.mig_free)
            t += sum(mig_fraction_milli(p, n.gpu_type) * c for p, c in n.mig_allocatable or n.mig_free)
        free[n.gpu_type] = free.get(n.gpu_type, 0.0) + f
        total[n.gpu_type] = total.get(n.gpu_type, 0.0) + t
    return {k: 100.0 * free[k] / total[k] if total[k] else 0.0 for k in total}


# --- one node ------------------------------------------------------------------------------


class _Score(NamedTuple):
    """Lexicographic: lower is better, field by field."""

    local: float  # the local machine only when nothing else fits
    rank: float  # GPU-type preference index
    penalty: float  # a fraction wasting an exclusive device, a CPU-only task on a GPU node
    type_abundance: float  # minus the GPU type's free share in balance steps: more free first
    frag_delta_milli: float  # FGD: expected unusable GPU milli this placement adds
    mig_waste_milli: float
    gpu_left_milli: float  # best fit
    cpu_left_millicores: float


@dataclass(frozen=True)
class _Candidate:
    node: NodeCapacity
    claim: Claim
    key: _Score
    type_free_pct: float | None  # the GPU type's free share when the type balance applied
    note: str  # e.g. "fraction on an exclusive device wastes 190 milli"

    @property
    def rank(self) -> int:
        return int(self.key.rank)

    @property
    def local(self) -> bool:
        return bool(self.key.local)

    @property
    def frag_delta_milli(self) -> float:
        return self.key.frag_delta_milli


def _blocking_taints(node: NodeCapacity, req: TaskRequest, cfg: RouterConfig) -> list[str]:
    ok = set(req.tolerate_taints) | (set(cfg.gpu_taint_keys) if req.needs_gpu else set())
    return [t.key for t in node.taints if t.effect in _BLOCKING_EFFECTS and t.key not in ok]


def _evaluate(
    node: NodeCapacity, req: TaskRequest, cfg: RouterConfig, free_pct_by_type: Mapping[str, float]
) -> _Candidate | str:
    """A scored candidate on this node, or why the task cannot go there now."""
    if not node.schedulable:
        return node.unschedulable_reason or "node is not schedulable"
    blocking = _blocking_taints(node, req, cfg)
    if blocking:
        return f"untolerated taint {blocking[0]}"
    rank = 0
    if req.needs_gpu:
        if node.gpu_type is None and not node.mig_free:
            return "no GPU"
        r = type_rank(req.gpu_types, node.gpu_type)
        if r is None:
            return f"GPU type {node.gpu_type} not in {list(req.gpu_types)}"
        rank = r
    if node.cpu_free_millicores < req.cpu_millicores:
        return f"CPU {node.cpu_free_millicores}m free < {req.cpu_millicores}m"
    if node.memory_free_mib < req.memory_mib:
        return f"memory {node.memory_free_mib}Mi free < {req.memory_mib}Mi"

    free = list(node.gpu_free_milli)
    taken: list[tuple[int, int]] = []
    mig: str | None = None
    penalty = 0.0
    waste = 0
    note = ""
    if req.gpu_count:
        if node.gpu_sharing == "time-sliced":
            return "time-sliced GPUs give no exclusive device"
        full = [i for i, f in enumerate(free) if f >= FULL_GPU_MILLI]
        if len(full) < req.gpu_count:
            return f"{len(full)} whole GPU(s) free < {req.gpu_count}"
        taken = [(i, FULL_GPU_MILLI) for i in full[: req.gpu_count]]
    elif req.gpu_milli:
        options: list[tuple[int, int, str | None, int]] = []  # (waste, device, mig profile, milli)
        if node.gpu_sharing == "milli":
            fits = [(f - req.gpu_milli, i) for i, f in enumerate(free) if f >= req.gpu_milli]
            if fits:
                _, i = min(fits)  # best-fit device: fill partly used GPUs first
                options.append((0, i, None, req.gpu_milli))
        elif free:
            slot = [i for i, f in enumerate(free) if f >= FULL_GPU_MILLI]
            if slot:
                w = 0 if node.gpu_sharing == "time-sliced" else FULL_GPU_MILLI - req.gpu_milli
                options.append((w, slot[0], None, FULL_GPU_MILLI))
        for profile, count in node.mig_free:
            frac = mig_fraction_milli(profile, node.gpu_type)
            if count > 0 and frac >= req.gpu_milli:
                options.append((frac - req.gpu_milli, -1, profile, 0))
        if not options:
            return f"no device with {req.gpu_milli} milli free"
        waste, dev, mig, milli = min(options, key=lambda o: (o[0], o[2] is not None))
        if dev >= 0:
            taken = [(dev, milli)]
        if waste and mig is None:
            penalty = 1.0
            note = f"fraction on an exclusive device wastes {waste} milli"
    elif node.gpu_free_milli:
        penalty = 1.0  # a CPU-only task on a GPU node can starve its GPUs of CPU
        note = "CPU-only task kept off GPU nodes where possible"

    after = free[:]
    for i, milli in taken:
        after[i] -= milli
    cpu_after = node.cpu_free_millicores - req.cpu_millicores
    mem_after = node.memory_free_mib - req.memory_mib
    wl = cfg.workload
    left = sum(after)
    delta = _fragmentation(tuple(sorted(after)), cpu_after, mem_after, wl) - _fragmentation(
        tuple(sorted(free)), node.cpu_free_millicores, node.memory_free_mib, wl
    )
    pct: float | None = None
    abundance = 0.0
    if req.needs_gpu and node.gpu_type is not None and cfg.type_balance_step_pct > 0:
        pct = free_pct_by_type.get(node.gpu_type, 0.0)
        abundance = -float(math.floor(pct / cfg.type_balance_step_pct))
    claim = Claim(node.name, tuple(taken), mig, req.cpu_millicores, req.memory_mib)
    key = _Score(float(node.target == "local"), float(rank), penalty, abundance, round(delta, 3), float(waste),
                 float(left), float(cpu_after))  # fmt: skip
    return _Candidate(node, claim, key, pct, note)


def apply_claims(snapshot: CapacitySnapshot, claims: Iterable[Claim]) -> CapacitySnapshot:
    """The snapshot minus what reservations hold (never below zero)."""
    by_node: dict[str, list[Claim]] = {}
    for c in claims:
        by_node.setdefault(c.node_name, []).append(c)
    if not by_node:
        return snapshot
    nodes = []
    for n in snapshot.nodes:
        cs = by_node.get(n.name)
        if not cs:
            nodes.append(n)
            continue
        free = list(n.gpu_free_milli)
        mig = dict(n.mig_free)
        cpu, mem = n.cpu_free_millicores, n.memory_free_mib
        for c in cs:
            for i, milli in c.gpu_milli_by_device:
                if 0 <= i < len(free):
                    free[i] = max(0, free[i] - milli)
            if c.mig_profile:
                mig[c.mig_profile] = max(0, mig.get(c.mig_profile, 0) - 1)
            cpu -= c.cpu_millicores
            mem -= c.memory_mib
        nodes.append(
            dataclasses.replace(
                n,
                gpu_free_milli=tuple(free),
                mig_free=tuple(mig.items()),
                cpu_free_millicores=max(0, cpu),
                memory_free_mib=max(0, mem),
            )
        )
    return dataclasses.replace(snapshot, nodes=tuple(nodes))


# --- the decision -----------------------------------------------------------------------------


def place_task(
    request: TaskRequest,
    snapshot: CapacitySnapshot,
    *,
    reserved: Iterable[Claim] = (),
    waited_s: float = 0.0,
    config: RouterConfig = DEFAULT_CONFIG,
) -> Decision:
    """Decide where ``request`` runs now, or that it waits; every alternative gets a reason.

    Raises PlacementError when no node could ever hold the request (even empty).
    """
    snap = apply_claims(snapshot, reserved)
    groups: dict[tuple[str, str, str | None], list[NodeCapacity]] = {}
    for n in snap.nodes:
        groups.setdefault((n.target, n.node_pool, n.gpu_type), []).append(n)
    free_pct = type_free_pct(snap.nodes) if request.needs_gpu else {}

    best: _Candidate | None = None
    group_best: dict[tuple[str, str, str | None], _Candidate] = {}
    group_feasible: Counter[tuple[str, str, str | None]] = Counter()
    group_reasons: dict[tuple[str, str, str | None], Counter[str]] = {}
    evaluated: dict[tuple[object, ...], _Candidate | str] = {}
    for gk, nodes in groups.items():
        if gk[0] == "local" and not request.allow_local:
            continue
        reasons: Counter[str] = Counter()
        top: tuple[_Score, str, _Candidate, NodeCapacity] | None = None
        for n in nodes:
            # identical nodes score identically: evaluate each distinct state once
            sig = (n.node_pool, n.gpu_type, n.gpu_sharing, n.gpu_free_milli, n.mig_free, n.cpu_free_millicores,
                   n.memory_free_mib, n.schedulable, n.unschedulable_reason, n.taints, n.target)  # fmt: skip
            res = evaluated.get(sig)
            if res is None:
                res = _evaluate(n, request, config, free_pct)
                evaluated[sig] = res
            if isinstance(res, str):
                reasons[res] += 1
                continue
            group_feasible[gk] += 1
            if top is None or (res.key, n.name) < top[:2]:
                top = (res.key, n.name, res, n)
        group_reasons[gk] = reasons
        if top is None:
            continue
        _, _, gb, n = top
        if gb.node is not n:  # a cached twin's score: rebind it to this node once, not per node
            gb = dataclasses.replace(gb, node=n, claim=dataclasses.replace(gb.claim, node_name=n.name))
        group_best[gk] = gb
        if best is None or (gb.key, gb.node.name) < (best.key, best.node.name):
            best = gb

    verdicts = _verdicts(request, groups, group_best, group_feasible, group_reasons, best)
    if best is None:
        return _wait(request, snap, verdicts, waited_s, config)
    return _placement(request, best, verdicts, config)


def _verdicts(
    req: TaskRequest,
    groups: dict[tuple[str, str, str | None], list[NodeCapacity]],
    group_best: dict[tuple[str, str, str | None], _Candidate],
    group_feasible: Counter[tuple[str, str, str | None]],
    group_reasons: dict[tuple[str, str, str | None], Counter[str]],
    best: _Candidate | None,
) -> tuple[PoolVerdict, ...]:
    out = []
    for gk, nodes in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or "")):
        target, pool, gtype = gk
        if target == "local" and not req.allow_local:
            out.append(PoolVerdict(target, pool, gtype, len(nodes), 0, "not considered", "allow_local is false"))
            continue
        gb = group_best.get(gk)
        if gb is None:
            reasons = group_reasons.get(gk, Counter())
            text = "; ".join(f"{c}/{len(nodes)} node(s): {r}" for r, c in reasons.most_common(3))
            out.append(PoolVerdict(target, pool, gtype, len(nodes), 0, "infeasible", text))
            continue
        assert best is not None
        feas = group_feasible[gk]
        rest = group_reasons.get(gk, Counter())
        others = "".join(f"; {c} other node(s): {r}" for r, c in rest.most_common(2))
        if gb is best:
            why = f"best node {gb.node.name}: fragmentation {gb.frag_delta_milli:+.0f} milli"
            if gb.type_free_pct is not None:
                why += f"; {gb.node.gpu_type} {gb.type_free_pct:.0f} % free"
            if gb.note:
                why += f"; {gb.note}"
            out.append(PoolVerdict(target, pool, gtype, len(nodes), feas, "chosen", why + others))
            continue
        out.append(PoolVerdict(target, pool, gtype, len(nodes), feas, "lost", _why_lost(req, gb, best) + others))
    return tuple(out)


def _why_lost(req: TaskRequest, c: _Candidate, best: _Candidate) -> str:
    if c.local and not best.local:
        return f"local machine is the last resort; pool {best.node.node_pool} fits"
    if c.rank != best.rank:
        return (
            f"GPU type {c.node.gpu_type} is preference #{c.rank + 1}; "
            f"#{best.rank + 1} {best.node.gpu_type} fits in pool {best.node.node_pool}"
        )
    if c.key.penalty != best.key.penalty:
        return c.note or "penalised placement"
    if c.key.type_abundance != best.key.type_abundance:
        return (
            f"GPU type {c.node.gpu_type} is {c.type_free_pct or 0:.0f} % free vs {best.type_free_pct or 0:.0f} % "
            f"for {best.node.gpu_type}, equally preferred: the scarcer type stays free for tasks that need it"
        )
    if c.key.frag_delta_milli != best.key.frag_delta_milli:
        return (
            f"fragmentation {c.frag_delta_milli:+.0f} milli on {c.node.name} vs "
            f"{best.frag_delta_milli:+.0f} on {best.node.name} (keeps room for larger jobs)"
        )
    if c.key.mig_waste_milli != best.key.mig_waste_milli:
        return f"MIG slice wastes {c.key.mig_waste_milli:.0f} milli vs {best.key.mig_waste_milli:.0f}"
    return (
        f"leaves {c.key.gpu_left_milli:.0f} GPU milli free vs {best.key.gpu_left_milli:.0f} "
        f"on {best.node.name} (best fit)"
    )


def _placement(req: TaskRequest, c: _Candidate, verdicts: tuple[PoolVerdict, ...], cfg: RouterConfig) -> Placement:
    n = c.node
    selector: dict[str, str] = {}
    if n.target == "kubernetes":
        if n.pool_label:
            selector[n.pool_label] = n.node_pool
        if req.needs_gpu and n.gpu_type:
            selector["nvidia.com/gpu.product"] = n.gpu_type
    tolerated = set(req.tolerate_taints) | (set(cfg.gpu_taint_keys) if req.needs_gpu else set())
    tolerations = tuple(_toleration(t.key, t.value, t.effect) for t in n.taints if t.key in tolerated)
    requests = {"cpu": format_cpu(req.cpu_millicores), "memory": format_memory(req.memory_mib)}
    limits = {"memory": requests["memory"]}  # no CPU limit: throttling slows training for nothing
    if c.claim.mig_profile:
        requests[f"nvidia.com/mig-{c.claim.mig_profile}"] = "1"
    elif req.needs_gpu:
        if n.gpu_sharing == "milli":
            qty = str(req.gpu_milli or req.gpu_count * FULL_GPU_MILLI)
        else:
            qty = str(req.gpu_count or 1)
        requests[n.gpu_resource] = qty
    for k, v in requests.items():
        if k not in ("cpu", "memory"):
            limits[k] = v  # extended resources must have limit == request
    if n.target == "local":
        pool, slots = cfg.local_airflow_pool, 1
    elif req.needs_gpu:
        pool, slots = cfg.gpu_airflow_pool, max(1, req.gpu_count)
    else:
        pool, slots = cfg.cpu_airflow_pool, 1
    summary = f"{n.target}:{n.node_pool}/{n.name}"
    if n.gpu_type and req.needs_gpu:
        summary += f" ({n.gpu_type}, preference #{c.rank + 1})"
    summary += f"; {sum(v.feasible_nodes for v in verdicts)} feasible node(s) in {len(verdicts)} group(s)"
    return Placement(
        target=n.target,
        node_pool=n.node_pool,
        node_name=n.name,
        gpu_type=n.gpu_type if req.needs_gpu else None,
        node_selector=selector,
        tolerations=tolerations,
        resources_requests=requests,
        resources_limits=limits,
        airflow_pool=pool,
        pool_slots=slots,
        priority_class=req.priority_class,
        expected_wait_s=cfg.bind_delay(n.target),
        explanation=Explanation(summary, verdicts),
        claim=c.claim,
    )


def _toleration(key: str, value: str, effect: str) -> dict[str, str]:
    if value:
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": key, "operator": "Exists", "effect": effect}


def _could_ever_fit(req: TaskRequest, n: NodeCapacity, cfg: RouterConfig) -> bool:
    if n.target == "local" and not req.allow_local:
        return False
    if _blocking_taints(n, req, cfg):
        return False
    if n.cpu_allocatable_millicores < req.cpu_millicores or n.memory_allocatable_mib < req.memory_mib:
        return False
    if not req.needs_gpu:
        return True
    if type_rank(req.gpu_types, n.gpu_type) is None:
        return False
    if req.gpu_count:
        return n.gpu_sharing != "time-sliced" and len(n.gpu_free_milli) >= req.gpu_count
    return bool(n.gpu_free_milli) or any(
        mig_fraction_milli(p, n.gpu_type) >= req.gpu_milli for p, _ in n.mig_allocatable or n.mig_free
    )


def _wait(
    req: TaskRequest, snap: CapacitySnapshot, verdicts: tuple[PoolVerdict, ...], waited_s: float, cfg: RouterConfig
) -> WaitDecision:
    if not any(_could_ever_fit(req, n, cfg) for n in snap.nodes):
        types = f" of type {list(req.gpu_types)}" if req.gpu_types else ""
        raise PlacementError(
            f"no node in {snap.source} could ever hold gpu_count={req.gpu_count} gpu_milli={req.gpu_milli}{types} "
            f"cpu_millicores={req.cpu_millicores} memory_mib={req.memory_mib} (allow_local={req.allow_local}); "
            "lower the request, accept more GPU types, or add a node pool"
        )
    left = req.max_wait_s - waited_s
    exceeded = left <= 0
    recheck = min(cfg.recheck_max_s, max(cfg.recheck_min_s, left / 4 if left > 0 else cfg.recheck_min_s))
    detail = "; ".join(f"{v.node_pool}: {v.reason}" for v in verdicts if v.outcome == "infeasible")
    reason = ("max_wait_s exceeded; " if exceeded else "") + f"no acceptable capacity free now ({detail})"
    return WaitDecision(
        reason=reason,
        recheck_after_s=math.ceil(recheck),
        waited_s=waited_s,
        max_wait_exceeded=exceeded,
        explanation=Explanation(reason, verdicts),
    )
