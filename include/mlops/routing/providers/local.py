"""Capacity of the machine the worker runs on: CPUs, available memory, GPUs through NVML if present.

Used by the local and docker profiles, and as the last-resort fallback when a request allows it.
"""

from __future__ import annotations

import os
import socket
import time

from include.mlops.routing.model import FULL_GPU_MILLI, CapacitySnapshot, NodeCapacity, Target


def _available_memory_mib() -> tuple[int, int]:
    """(available, total) MiB from /proc/meminfo, falling back to sysconf."""
    try:
        info = {}
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                info[k] = int(v.split()[0])  # kB
        return info.get("MemAvailable", info["MemFree"]) // 1024, info["MemTotal"] // 1024
    except (OSError, KeyError, ValueError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        return total, total


def _nvml_gpus() -> tuple[str | None, tuple[int, ...]]:
    """(product name, free milli per device); a device with a compute process counts as busy."""
    try:
        import pynvml  # nvidia-ml-py, optional
    except ImportError:
        return None, ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None, ()  # no driver on this host
    try:
        n = pynvml.nvmlDeviceGetCount()
        name = None
        free = []
        for i in range(n):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            raw = pynvml.nvmlDeviceGetName(h)
            name = raw.decode() if isinstance(raw, bytes) else raw
            busy = bool(pynvml.nvmlDeviceGetComputeRunningProcesses(h))
            free.append(0 if busy else FULL_GPU_MILLI)
        # match the k8s product label spelling (GPU feature discovery replaces spaces by dashes)
        return (name.replace(" ", "-") if name else None), tuple(free)
    finally:
        pynvml.nvmlShutdown()


class LocalMachineProvider:
    def __init__(self, target: Target = "local", node_pool: str = "local") -> None:
        self.target = target
        self.node_pool = node_pool

    def snapshot(self) -> CapacitySnapshot:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        # CPU is time-shared on one machine: what the router must not over-commit is what it
        # placed itself (the reservation book subtracts those), not the momentary load average,
        # which on a small busy box reads "0 free" and would park every task.
        cpu_free = cpus * 1000
        avail, total = _available_memory_mib()
        gpu_type, free = _nvml_gpus()
        node = NodeCapacity(
            name=socket.gethostname(),
            node_pool=self.node_pool,
            target=self.target,
            cpu_free_millicores=cpu_free,
            memory_free_mib=avail,
            cpu_allocatable_millicores=cpus * 1000,
            memory_allocatable_mib=total,
            gpu_type=gpu_type,
            gpu_free_milli=free,
        )
        return CapacitySnapshot((node,), source=f"local:{node.name}", taken_at_s=time.time())
