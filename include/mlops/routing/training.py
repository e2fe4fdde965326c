"""Where the retrain DAG's training runs: a training request -> the router -> a placement dict.

A GPU is asked for first (in the team's order of GPU types); a CPU run on the local machine is
the explicit last resort, allowed by the request's `cpu_fallback`, and the explanation says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from include.mlops.errors import PlacementError

DEFAULT_TRAINING_REQUEST: dict[str, Any] = {
    "gpu_count": 1,
    "gpu_types": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB", "NVIDIA-L4", "Tesla-T4"],
    "cpu_millicores": 1000,
    "memory_mib": 2048,
    "max_wait_s": 600,
    "allow_local": True,
}


def training_request(task_key: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(router request, cpu_fallback) from the defaults and the DAG's overrides."""
    req = {**DEFAULT_TRAINING_REQUEST, **overrides, "task_key": task_key}
    cpu_fallback = bool(req.pop("cpu_fallback", True))
    return req, cpu_fallback


def place_training(
    task_key: str,
    overrides: dict[str, Any],
    router: Any = None,
    log: Callable[[str], None] = print,
    waited_s: float = 0.0,
) -> dict[str, Any]:
    """Decide where training runs now; returns the placement (or wait) as a JSON-safe dict.

    ``waited_s``: how long this task has already waited for capacity (the router gives up, with a
    wait whose ``max_wait_exceeded`` is true, once it passes the request's ``max_wait_s``)."""
    from include.mlops.routing.model import Placement, TaskRequest

    if router is None:
        from include.mlops.routing.api import router_from_airflow

        router = router_from_airflow()
    req, cpu_fallback = training_request(task_key, overrides)
    request = TaskRequest.from_dict(req)
    gpu_why = ""
    try:
        decision = router.decide(request, waited_s=waited_s)
    except PlacementError as e:
        if not cpu_fallback:
            raise
        decision, gpu_why = None, str(e)
    if decision is None or (not isinstance(decision, Placement) and cpu_fallback):
        gpu_why = gpu_why or decision.reason  # type: ignore[union-attr]
        log(f"no GPU placement ({gpu_why}); cpu_fallback allows a CPU run on the local machine")
        cpu_req = TaskRequest.from_dict({**req, "gpu_count": 0, "gpu_types": [], "allow_local": True})
        decision = router.decide(cpu_req, waited_s=waited_s)
    out = decision.to_dict()
    if gpu_why:
        out["gpu_unavailable_reason"] = gpu_why
    out["explanation_text"] = _explain(out)
    log(f"placement: {out['explanation_text']}")
    return out


def release_training(task_key: str, router: Any = None, log: Callable[[str], None] = print) -> int:
    """Drop the reservation a placement made for task_key (training finished or gave up)."""
    if router is None:
        from include.mlops.routing.api import router_from_airflow

        router = router_from_airflow()
    removed = int(router.book.release(task_key))
    if removed:
        log(f"released the router's reservation of {task_key}")
    return removed


def _explain(d: dict[str, Any]) -> str:
    ex = d.get("explanation") or {}
    lines = [str(ex.get("summary", d.get("reason", "")))]
    if d.get("gpu_unavailable_reason"):
        lines.append(f"GPU first: {d['gpu_unavailable_reason']}")
    for v in ex.get("considered", []):
        lines.append(
            f"- {v.get('target')}/{v.get('node_pool')}/{v.get('gpu_type')}: {v.get('outcome')}: {v.get('reason')}"
        )
    return "\n".join(lines)
