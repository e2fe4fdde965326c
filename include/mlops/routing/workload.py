"""The GPU-demand mix the router packs for: which task shapes to keep room for.

Derived from the Alibaba GPU cluster trace 2023 (cluster-trace-gpu-v2023, openb_pod_list_default,
8152 pods, CC-BY-4.0): class shares, fractional milli-GPU sizes and median CPU/memory per class.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskShape:
    """One class of GPU task with its share of arrivals (shares need not sum to 1)."""

    share: float
    gpu_count: int
    gpu_milli: int
    cpu_millicores: int
    memory_mib: int


def _fractional() -> tuple[TaskShape, ...]:
    share = 0.3776
    milli = {810: 0.35, 470: 0.244, 320: 0.107, 650: 0.082, 230: 0.045, 460: 0.042, 590: 0.024,
             160: 0.024, 550: 0.023, 220: 0.02, 370: 0.015, 110: 0.008}  # fmt: skip
    norm = sum(milli.values())  # fold the 1.5 % "other" sizes into the known ones
    return tuple(TaskShape(share * p / norm, 0, m, 4000, 15 * 1024) for m, p in milli.items())


# CPU-only pods (13 %) are left out: they hold no GPU, so they fragment none.
# Medians per class; 2- and 4-GPU pods get the 8-GPU median scaled per GPU (the trace
# pools all multi-GPU pods in one class).
TRACE_WORKLOAD: tuple[TaskShape, ...] = (
    *_fractional(),
    TaskShape(0.4798, 1, 0, 11_400, 47 * 1024),
    TaskShape(0.0020, 2, 0, 16_000, 64 * 1024),
    TaskShape(0.0018, 4, 0, 32_000, 128 * 1024),
    TaskShape(0.0054, 8, 0, 64_000, 257 * 1024),
)
