"""Typed values of the router: a task's request, the capacity seen now, and the decision.

These are what gets logged, returned through XCom and shown in the UI (``to_dict``), so
every field carries its unit in its name.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from include.mlops.errors import PlacementError

Target = Literal["kubernetes", "docker", "local"]
# exclusive: one device per unit of the GPU resource (plain nvidia.com/gpu)
# time-sliced: the device plugin advertises N replicas per device (product label ends in -SHARED)
# milli: a GPU-sharing scheduler accounts each device in 1/1000 (as in the Alibaba trace)
GpuSharing = Literal["exclusive", "time-sliced", "milli"]
FULL_GPU_MILLI = 1000
SHARED_SUFFIX = "-SHARED"


@dataclass(frozen=True)
class Taint:
    key: str
    value: str = ""
    effect: str = "NoSchedule"


@dataclass(frozen=True)
class NodeCapacity:
    """What one node (or the local machine) has free now, in the router's units."""

    name: str
    node_pool: str
    cpu_free_millicores: int
    memory_free_mib: int
    cpu_allocatable_millicores: int = 0
    memory_allocatable_mib: int = 0
    target: Target = "kubernetes"
    pool_label: str | None = None  # the label key that names the pool (for node_selector)
    gpu_type: str | None = None  # value of nvidia.com/gpu.product, e.g. NVIDIA-A100-SXM4-80GB
    gpu_sharing: GpuSharing = "exclusive"
    gpu_resource: str = "nvidia.com/gpu"
    # one entry per device (time-sliced: per slice): free milli, 0..1000
    gpu_free_milli: tuple[int, ...] = ()
    # MIG slices: ((profile, free count), ...), profile like "1g.10gb"
    mig_free: tuple[tuple[str, int], ...] = ()
    mig_allocatable: tuple[tuple[str, int], ...] = ()
    schedulable: bool = True
    unschedulable_reason: str = ""
    taints: tuple[Taint, ...] = ()

    def __post_init__(self) -> None:
        if not self.cpu_allocatable_millicores:
            object.__setattr__(self, "cpu_allocatable_millicores", self.cpu_free_millicores)
        if not self.memory_allocatable_mib:
            object.__setattr__(self, "memory_allocatable_mib", self.memory_free_mib)

    @property
    def gpu_devices(self) -> int:
        return len(self.gpu_free_milli)

    @property
    def whole_gpus_free(self) -> int:
        return sum(1 for f in self.gpu_free_milli if f >= FULL_GPU_MILLI)


@dataclass(frozen=True)
class CapacitySnapshot:
    """All nodes one provider sees at ``taken_at`` (unix seconds)."""

    nodes: tuple[NodeCapacity, ...]
    source: str
    taken_at_s: float = 0.0

    def pools(self) -> dict[str, list[NodeCapacity]]:
        out: dict[str, list[NodeCapacity]] = {}
        for n in self.nodes:
            out.setdefault(n.node_pool, []).append(n)
        return out

    def pool_summary(self) -> list[dict[str, Any]]:
        """Per pool: nodes, GPU type, free/total GPUs, CPU and memory (for the API and UI)."""
        rows = []
        for pool, nodes in sorted(self.pools().items()):
            rows.append(
                {
                    "node_pool": pool,
                    "target": nodes[0].target,
                    "gpu_types": sorted({n.gpu_type for n in nodes if n.gpu_type}),
                    "nodes": len(nodes),
                    "schedulable_nodes": sum(n.schedulable for n in nodes),
                    "gpu_devices": sum(n.gpu_devices for n in nodes),
                    "gpu_free_milli": sum(sum(n.gpu_free_milli) for n in nodes),
                    "whole_gpus_free": sum(n.whole_gpus_free for n in nodes),
                    "mig_free": _sum_pairs(n.mig_free for n in nodes),
                    "cpu_free_millicores": sum(n.cpu_free_millicores for n in nodes),
                    "memory_free_mib": sum(n.memory_free_mib for n in nodes),
                }
            )
        return rows


def _sum_pairs(pairs_iter: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for pairs in pairs_iter:
        for k, v in pairs:
            out[k] = out.get(k, 0) + v
    return out


_TASK_KEY = re.compile(r"^[A-Za-z0-9_.:/@+=-]{0,250}$")


@dataclass(frozen=True)
class TaskRequest:
    """What a task needs. Whole GPUs (gpu_count) or a fraction of one (gpu_milli), not both."""

    task_key: str = ""  # identifies the task run (dag/run/task/try); keys reservations
    gpu_count: int = 0
    gpu_milli: int = 0
    gpu_types: tuple[str, ...] = ()  # acceptable products, most preferred first; () = any
    cpu_millicores: int = 1000
    memory_mib: int = 1024
    max_wait_s: float = 3600.0
    allow_local: bool = False
    priority_class: str | None = None
    tolerate_taints: tuple[str, ...] = ()  # taint keys this task tolerates beyond the GPU taint

    def __post_init__(self) -> None:
        # JSON gives a str where a list was meant ("gpu_types": "A100"): tuple() would split it
        # into characters, so a lone string is refused, as is any item that is not a string.
        for name in ("gpu_types", "tolerate_taints"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise PlacementError(f"{name}={value!r}: must be a list of strings, e.g. [{value!r}]")
            if not all(isinstance(v, str) for v in value):
                raise PlacementError(f"{name}={value!r}: every item must be a string")
            object.__setattr__(self, name, tuple(value))
        if isinstance(self.max_wait_s, bool) or not isinstance(self.max_wait_s, (int, float)):
            raise PlacementError(f"max_wait_s={self.max_wait_s!r}: must be a number of seconds")
        if not math.isfinite(self.max_wait_s):
            # NaN compares false with everything: a request with it would never expire
            raise PlacementError(f"max_wait_s={self.max_wait_s!r}: must be a finite number of seconds")
        if not _TASK_KEY.match(self.task_key):
            raise PlacementError(f"task_key={self.task_key!r}: use letters, digits and _.:/@+=- (max 250)")
        if self.gpu_count < 0 or self.gpu_count > 64:
            raise PlacementError(f"gpu_count={self.gpu_count}: must be 0..64")
        if not 0 <= self.gpu_milli < FULL_GPU_MILLI:
            raise PlacementError(f"gpu_milli={self.gpu_milli}: must be 0..999 (whole GPUs go in gpu_count)")
        if self.gpu_count and self.gpu_milli:
            raise PlacementError(
                f"gpu_count={self.gpu_count} and gpu_milli={self.gpu_milli}: ask for whole GPUs or a fraction, not both"
            )
        if self.cpu_millicores <= 0 or self.memory_mib <= 0:
            raise PlacementError(
                f"cpu_millicores={self.cpu_millicores}, memory_mib={self.memory_mib}: both must be > 0"
            )
        if self.max_wait_s < 0:
            raise PlacementError(f"max_wait_s={self.max_wait_s}: must be >= 0")
        if any(not t.strip() for t in self.gpu_types):
            raise PlacementError(f"gpu_types={self.gpu_types!r}: empty type name")

    @property
    def needs_gpu(self) -> bool:
        return self.gpu_count > 0 or self.gpu_milli > 0

    @property
    def gpu_demand_milli(self) -> int:
        return self.gpu_count * FULL_GPU_MILLI + self.gpu_milli

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskRequest:
        """Build from JSON (API body, DAG params); unknown keys are an error, not ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise PlacementError(f"unknown request field(s) {unknown}; allowed: {sorted(names)}")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise PlacementError(f"bad request: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Claim:
    """What a placement takes from one node; a reservation holds this until it expires."""

    node_name: str
    gpu_milli_by_device: tuple[tuple[int, int], ...] = ()  # (device index, milli)
    mig_profile: str | None = None
    cpu_millicores: int = 0
    memory_mib: int = 0


@dataclass(frozen=True)
class PoolVerdict:
    """One alternative considered: a (target, pool, GPU type) group and why it won or lost."""

    target: str
    node_pool: str
    gpu_type: str | None
    nodes: int
    feasible_nodes: int
    outcome: Literal["chosen", "lost", "infeasible", "not considered"]
    reason: str


@dataclass(frozen=True)
class Explanation:
    summary: str
    considered: tuple[PoolVerdict, ...] = ()


@dataclass(frozen=True)
class Placement:
    """Run the task here. ``kpo_kwargs`` turns it into KubernetesPodOperator arguments."""

    target: Target
    node_pool: str
    node_name: str
    gpu_type: str | None
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, str], ...]
    resources_requests: Mapping[str, str]
    resources_limits: Mapping[str, str]
    airflow_pool: str
    pool_slots: int
    priority_class: str | None
    expected_wait_s: float
    explanation: Explanation
    claim: Claim
    reservation_id: str | None = None
    decision: Literal["place"] = "place"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _plain(dataclasses.asdict(self))
        return out


@dataclass(frozen=True)
class WaitDecision:
    """Nothing acceptable is free now: recheck later (or give up once max_wait_s has passed)."""

    reason: str
    recheck_after_s: float
    waited_s: float
    max_wait_exceeded: bool
    explanation: Explanation
    decision: Literal["wait"] = "wait"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _plain(dataclasses.asdict(self))
        return out


Decision = Placement | WaitDecision


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
