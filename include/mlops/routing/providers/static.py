"""Capacity from a YAML inventory, for clusters the workers cannot list (and for the docker profile).

The file states nodes and what is in use; the reservation book covers the router's own
recent placements. Format: see ``load_inventory``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

from include.mlops.errors import SettingsError
from include.mlops.routing.model import FULL_GPU_MILLI, CapacitySnapshot, NodeCapacity, Taint, Target
from include.mlops.routing.quantities import cpu_millicores, memory_mib

_NODE_KEYS = {
    "name",
    "node_pool",
    "count",
    "gpu_type",
    "gpus",
    "gpus_used",
    "gpu_free_milli",
    "gpu_sharing",
    "gpu_resource",
    "mig",
    "cpu",
    "cpu_used",
    "memory",
    "memory_used",
    "taints",
    "schedulable",
    "target",
}


def load_inventory(data: dict[str, Any], where: str = "inventory") -> CapacitySnapshot:
    """Parse an inventory mapping.

    ``{source, target, pool_label, nodes: [{name, node_pool, count, gpu_type, gpus, gpus_used | gpu_free_milli,
    gpu_sharing, gpu_resource, mig: {profile: free}, cpu, cpu_used, memory, memory_used, taints, schedulable}]}``;
    ``count: N`` expands one entry into nodes ``name-0..N-1``.
    """
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise SettingsError(f"{where}: expected a mapping with a 'nodes' list")
    target = data.get("target", "kubernetes")
    pool_label = data.get("pool_label")
    nodes: list[NodeCapacity] = []
    for i, raw in enumerate(data["nodes"]):
        at = f"{where}: nodes[{i}]"
        if not isinstance(raw, dict):
            raise SettingsError(f"{at}: expected a mapping")
        unknown = set(raw) - _NODE_KEYS
        if unknown:
            raise SettingsError(f"{at}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_NODE_KEYS)}")
        for key in ("name", "node_pool", "cpu", "memory"):
            if key not in raw:
                raise SettingsError(f"{at}: missing '{key}'")
        try:
            gpus = int(raw.get("gpus", 0))
            if "gpu_free_milli" in raw:
                free = tuple(int(x) for x in raw["gpu_free_milli"])
                if len(free) != gpus or any(not 0 <= f <= FULL_GPU_MILLI for f in free):
                    raise SettingsError(f"{at}: gpu_free_milli needs {gpus} values in 0..1000, got {free}")
            else:
                used = int(raw.get("gpus_used", 0))
                free = tuple([0] * used + [FULL_GPU_MILLI] * (gpus - used))
            cpu_total = cpu_millicores(raw["cpu"])
            mem_total = memory_mib(raw["memory"])
            taints = tuple(
                Taint(t["key"], str(t.get("value", "")), t.get("effect", "NoSchedule")) for t in raw.get("taints", [])
            )
            mig = tuple((str(p), int(c)) for p, c in (raw.get("mig") or {}).items())
        except (TypeError, ValueError, KeyError) as exc:
            raise SettingsError(f"{at}: {exc}") from exc
        count = int(raw.get("count", 1))
        for k in range(count):
            nodes.append(
                NodeCapacity(
                    name=raw["name"] if count == 1 else f"{raw['name']}-{k}",
                    node_pool=str(raw["node_pool"]),
                    target=_target(raw.get("target", target), at),
                    pool_label=pool_label,
                    cpu_free_millicores=cpu_total - cpu_millicores(raw.get("cpu_used", 0)),
                    memory_free_mib=mem_total - memory_mib(raw.get("memory_used", 0)),
                    cpu_allocatable_millicores=cpu_total,
                    memory_allocatable_mib=mem_total,
                    gpu_type=raw.get("gpu_type"),
                    gpu_sharing=raw.get("gpu_sharing", "exclusive"),
                    gpu_resource=raw.get("gpu_resource", "nvidia.com/gpu"),
                    gpu_free_milli=free,
                    mig_free=mig,
                    mig_allocatable=mig,
                    schedulable=bool(raw.get("schedulable", True)),
                    unschedulable_reason="" if raw.get("schedulable", True) else "marked unschedulable in inventory",
                    taints=taints,
                )
            )
    return CapacitySnapshot(tuple(nodes), source=str(data.get("source", where)), taken_at_s=time.time())


def _target(value: Any, at: str) -> Target:
    if value not in ("kubernetes", "docker", "local"):
        raise SettingsError(f"{at}: target={value!r}; use kubernetes, docker or local")
    return cast(Target, value)


class StaticInventoryProvider:
    """Re-reads the file on every snapshot so an edit takes effect without a restart."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def snapshot(self) -> CapacitySnapshot:
        import yaml

        try:
            data = yaml.safe_load(self.path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"inventory {self.path}: {exc}") from exc
        return load_inventory(data, where=str(self.path))
