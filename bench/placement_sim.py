"""The placement bench's cluster, workload and dynamic simulation (bench/bench_placement.py runs them).

The simulation: tasks arrive, wait in a queue, and the first `window` of them in FIFO order (by
default all: Airflow reschedules every waiting task, kube-scheduler retries every pending pod) are
offered to the policy at every event. A placement binds after a delay
(pod bind + image pull); the pod lands only if the node really has room then, otherwise the task
goes back to the head of the queue. The router reserves what it placed until the bind (its
book); the baselines see only bound pods, like kube-scheduler plugins without an assume cache.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from include.mlops.errors import PlacementError
from include.mlops.routing.model import CapacitySnapshot, NodeCapacity, Placement, TaskRequest
from include.mlops.routing.placement import DEFAULT_CONFIG, RouterConfig, place_task, type_rank

PARAMS = json.loads((Path(__file__).parent / "gpu_trace_params.json").read_text())
# node shapes after the trace's GPU nodes (8-GPU V100/P100-class boxes dominate; T4/A10 boxes smaller);
# (gpu_type, gpus, cpu cores, memory GiB, share of nodes): an approximation, the node list is not in the params
NODE_SHAPES = [
    ("V100M32", 8, 96, 720, 0.30),
    ("G2", 8, 96, 384, 0.30),
    ("T4", 2, 96, 384, 0.2),
    ("A10", 1, 128, 512, 0.2),
]
TYPES = [s[0] for s in NODE_SHAPES]
BASELINES = ["random", "first-fit", "spread", "best-fit"]


@dataclass(frozen=True)
class RouterVariant:
    """The router with one rule changed, to measure what each rule is worth."""

    config: RouterConfig = DEFAULT_CONFIG
    reserve: bool = True  # hold placed-but-unbound devices in the book until the bind
    order: str = "fifo"  # queue order offered to the router: fifo, small-first, sjf (oracle durations)
    window: int | None = None  # backfill window (None: the simulation's, as for the baselines)


VARIANTS: dict[str, RouterVariant] = {
    "router": RouterVariant(),
    "router-nobalance": RouterVariant(dataclasses.replace(DEFAULT_CONFIG, type_balance_step_pct=0)),
    "router-nofgd": RouterVariant(dataclasses.replace(DEFAULT_CONFIG, workload=())),
    "router-noreserve": RouterVariant(reserve=False),
    "router+small-first": RouterVariant(order="small-first"),
    "router+sjf": RouterVariant(order="sjf"),
}


def _pct(r: random.Random, p10_50_90_99: list[float]) -> float:
    u = r.random()
    pts = [
        (0.0, p10_50_90_99[0] * 0.5),
        (0.1, p10_50_90_99[0]),
        (0.5, p10_50_90_99[1]),
        (0.9, p10_50_90_99[2]),
        (0.99, p10_50_90_99[3]),
        (1.0, p10_50_90_99[3]),
    ]
    for (u0, v0), (u1, v1) in itertools.pairwise(pts):
        if u <= u1:
            return v0 + (v1 - v0) * (u - u0) / (u1 - u0)
    return pts[-1][1]


def make_task(r: random.Random, i: int) -> TaskRequest:
    shares = PARAMS["class_share_all_pods"]
    u = r.random()
    gpu_count, gpu_milli, cls = 0, 0, "cpu_only"
    if u < shares["fractional_gpu"]:
        sizes = PARAMS["fractional_milli_top12"]
        gpu_milli, cls = int(r.choices(list(sizes), weights=list(sizes.values()))[0]), "fractional"
    elif u < shares["fractional_gpu"] + shares["one_gpu"]:
        gpu_count, cls = 1, "one_gpu"
    elif u < 1 - shares["cpu_only"]:
        multi = shares["multi_gpu"]
        gpu_count, cls = int(r.choices(list(multi), weights=list(multi.values()))[0]), "multi_gpu"
    cpu = _pct(r, PARAMS[f"{cls}_cpu_cores_p10_50_90_99"])
    mem = _pct(r, PARAMS[f"{cls}_mem_gib_p10_50_90_99"])
    if cls == "multi_gpu":  # the class pools 2..8-GPU pods; scale per GPU
        cpu, mem = cpu * gpu_count / 8, mem * gpu_count / 8
    # 30 % of GPU tasks accept only one or two types (the trace's gpu_spec constraints)
    types: tuple[str, ...] = ()
    if (gpu_count or gpu_milli) and r.random() < 0.3:
        types = tuple(r.sample(TYPES, r.choice([1, 2])))
    return TaskRequest(
        task_key=f"t{i}",
        gpu_count=gpu_count,
        gpu_milli=gpu_milli,
        gpu_types=types,
        cpu_millicores=max(100, int(cpu * 1000)),
        memory_mib=max(128, int(mem * 1024)),
    )


class Cluster:
    """Mutable simulated cluster; device-level milli accounting like the trace's sharing scheduler."""

    def __init__(self, n_nodes: int, seed: int) -> None:
        r = random.Random(seed)
        shapes = [r.choices(NODE_SHAPES, weights=[s[4] for s in NODE_SHAPES])[0][:4] for _ in range(n_nodes)]
        self._build(shapes)

    @classmethod
    def of(cls, shapes: Sequence[tuple[str, int, int, int]]) -> Cluster:
        """A cluster of the given (gpu_type, gpus, cpu cores, memory GiB) nodes, all free."""
        c = cls.__new__(cls)
        c._build(shapes)
        return c

    def _build(self, shapes: Sequence[tuple[str, int, int, int]]) -> None:
        self.types: list[str] = []
        self.free: list[list[int]] = []
        self.cpu: list[int] = []
        self.mem: list[int] = []
        self.total_gpu = 0
        for t, g, c, m in shapes:
            self.types.append(t)
            self.free.append([1000] * g)
            self.cpu.append(c * 1000)
            self.mem.append(m * 1024)
            self.total_gpu += g * 1000
        self._cache: dict[int, NodeCapacity] = {}

    def copy(self) -> Cluster:
        c = Cluster.__new__(Cluster)
        c.types, c.total_gpu = self.types, self.total_gpu
        c.free, c.cpu, c.mem = [f[:] for f in self.free], self.cpu[:], self.mem[:]
        c._cache = {}
        return c

    def fits(self, n: int, t: TaskRequest) -> list[int] | None:
        """Devices the task can take on node n (first fit inside the node), or None."""
        if self.cpu[n] < t.cpu_millicores or self.mem[n] < t.memory_mib:
            return None
        if t.needs_gpu and type_rank(t.gpu_types, self.types[n]) is None:
            return None
        if t.gpu_count:
            full = [i for i, f in enumerate(self.free[n]) if f == 1000]
            return full[: t.gpu_count] if len(full) >= t.gpu_count else None
        if t.gpu_milli:
            for i, f in enumerate(self.free[n]):
                if f >= t.gpu_milli:
                    return [i]
            return None
        return []

    def take(self, n: int, t: TaskRequest, devs: list[int], sign: int = 1) -> None:
        for i in devs:
            self.free[n][i] -= sign * (1000 if t.gpu_count else t.gpu_milli)
        self.cpu[n] -= sign * t.cpu_millicores
        self.mem[n] -= sign * t.memory_mib
        self._cache.pop(n, None)

    def snapshot(self) -> CapacitySnapshot:
        nodes = []
        for n in range(len(self.types)):
            node = self._cache.get(n)
            if node is None:
                node = NodeCapacity(
                    name=f"n{n:04d}",
                    node_pool=self.types[n],
                    gpu_type=self.types[n],
                    gpu_sharing="milli",
                    gpu_free_milli=tuple(self.free[n]),
                    cpu_free_millicores=self.cpu[n],
                    memory_free_mib=self.mem[n],
                )
                self._cache[n] = node
            nodes.append(node)
        return CapacitySnapshot(tuple(nodes), "sim")

    def gpu_used(self) -> int:
        return self.total_gpu - sum(sum(f) for f in self.free)


def choose(
    policy: str, c: Cluster, t: TaskRequest, r: random.Random, config: RouterConfig = DEFAULT_CONFIG
) -> tuple[int, list[int]] | None:
    if policy.startswith("router"):
        try:
            d = place_task(t, c.snapshot(), config=config)
        except PlacementError:
            return None
        if not isinstance(d, Placement):
            return None
        return int(d.node_name[1:]), [i for i, _ in d.claim.gpu_milli_by_device]
    options = [(n, devs) for n in range(len(c.types)) if (devs := c.fits(n, t)) is not None]
    if not options:
        return None
    if policy == "random":
        return r.choice(options)
    if policy == "first-fit":
        return options[0]
    if policy == "spread":  # kube-scheduler LeastAllocated: most free GPU share, then CPU
        return max(options, key=lambda o: (sum(c.free[o[0]]) / max(1, 1000 * len(c.free[o[0]])), c.cpu[o[0]]))
    if policy == "best-fit":  # least GPU left on the node, best-fit device for fractions
        best = min(options, key=lambda o: (sum(c.free[o[0]]), c.cpu[o[0]]))
        n = best[0]
        if t.gpu_milli:
            dev = min((f - t.gpu_milli, i) for i, f in enumerate(c.free[n]) if f >= t.gpu_milli)[1]
            return n, [dev]
        return best
    raise ValueError(policy)


def waiting_task_fits(
    truth: Cluster, in_flight: Iterable[tuple[int, list[int], TaskRequest]], waiting: Iterable[TaskRequest]
) -> bool:
    """Whether some waiting task fits on one node of the real cluster, minus what binds in flight hold.

    This is what "idle while waiting" integrates: capacity a waiting task could use now, on one
    node, that no placement has claimed. Free GPUs spread over nodes so that no single node fits
    the task do not count, nor do devices placed for a bind that has not landed yet.
    """
    avail = truth.copy()
    for n, devs, t in in_flight:
        for i in devs:
            avail.free[n][i] = max(0, avail.free[n][i] - (1000 if t.gpu_count else t.gpu_milli))
        avail.cpu[n] = max(0, avail.cpu[n] - t.cpu_millicores)
        avail.mem[n] = max(0, avail.mem[n] - t.memory_mib)
    nodes = range(len(avail.types))
    return any(avail.fits(n, t) is not None for t in waiting for n in nodes)


def simulate(
    policy: str,
    base: Cluster,
    tasks: Sequence[TaskRequest],
    arrivals: Sequence[float],
    durations: Sequence[float],
    binds: Sequence[float],
    *,
    seed: int = 0,
    window: int = 8,
) -> dict[str, float]:
    # window: waiting tasks offered per event in FIFO order (0: all of them)
    """Run one policy over the arrivals; JCT, queueing, type violations and idle-while-waiting."""
    variant = VARIANTS.get(policy, RouterVariant())
    router = policy.startswith("router")
    reserve = router and variant.reserve
    c, seen, pr = base.copy(), base.copy(), random.Random(seed + 7)
    # `c` is the truth; `seen` is what a scheduler observes (bound pods, plus its reservations)
    ev = [(a, 0, i) for i, a in enumerate(arrivals)]
    heapq.heapify(ev)
    queue: list[int] = []
    start: dict[int, float] = {}
    finish: dict[int, float] = {}
    idle_fit_s, last_t = 0.0, 0.0
    placed_at: dict[int, tuple[int, list[int]]] = {}
    in_flight: set[int] = set()
    violations = 0
    while ev:
        t_now, kind, i = heapq.heappop(ev)
        if queue and t_now > last_t:
            held = [(*placed_at[j], tasks[j]) for j in in_flight]
            if waiting_task_fits(c, held, (tasks[j] for j in queue)):
                idle_fit_s += t_now - last_t
        last_t = t_now
        if kind == 0:
            queue.append(i)
        elif kind == 1:  # bind: the pod lands only if the node really has room now
            in_flight.discard(i)
            n, devs = placed_at[i]
            ok = all(c.free[n][d] >= (1000 if tasks[i].gpu_count else tasks[i].gpu_milli) for d in devs)
            ok = ok and c.cpu[n] >= tasks[i].cpu_millicores and c.mem[n] >= tasks[i].memory_mib
            if reserve:
                seen.take(n, tasks[i], devs, sign=-1)  # reservation converts into the bound pod
            if ok:
                c.take(n, tasks[i], devs)
                seen.take(n, tasks[i], devs)
                start[i] = t_now
                heapq.heappush(ev, (t_now + durations[i], 2, i))
            else:
                queue.insert(0, i)  # scheduling conflict: back to the head of the queue
        else:
            n, devs = placed_at[i]
            c.take(n, tasks[i], devs, sign=-1)
            seen.take(n, tasks[i], devs, sign=-1)
            finish[i] = t_now
        offered = queue
        if router and variant.order == "small-first":  # Tiresias-like: least GPU demand first
            offered = sorted(queue, key=lambda j: (tasks[j].gpu_demand_milli, arrivals[j]))
        elif router and variant.order == "sjf":  # shortest expected GPU-time first (oracle durations)
            offered = sorted(queue, key=lambda j: (tasks[j].gpu_demand_milli * durations[j], arrivals[j]))
        w = (variant.window or window if router else window) or len(offered)  # 0: every waiting task
        for j in list(offered[:w]):
            ch = choose(policy, seen, tasks[j], pr, variant.config)
            if ch is None:
                continue
            n, devs = ch
            if tasks[j].needs_gpu and type_rank(tasks[j].gpu_types, c.types[n]) is None:
                violations += 1
            queue.remove(j)
            placed_at[j] = ch
            in_flight.add(j)
            if reserve:
                seen.take(n, tasks[j], devs)  # the reservation: visible to the next decision at once
            heapq.heappush(ev, (t_now + binds[j], 1, j))
    qd = sorted(start[i] - arrivals[i] for i in start)
    jct = [finish[i] - arrivals[i] for i in finish]
    return {
        "jct_mean_s": sum(jct) / len(jct) if jct else float("nan"),
        "queue_p95_s": _percentile(qd, 95),
        "type_violations": violations,
        "idle_while_waiting_min": idle_fit_s / 60,
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    """numpy's default (linear) percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)
