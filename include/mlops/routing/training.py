"""Where the retrain DAG's training runs: a training request -> the router -> a placement dict.

A GPU is asked for first (in the team's order of GPU types); a CPU run on the local machine is
the explicit last resort, allowed by the request's `cpu_fallback`, and the explanation says so.

The request comes from the DAG's free-form `resources` param, which anyone allowed to trigger a
retrain can fill in; the two fields that reach the pod spec with cluster-wide effect (the priority
class, and the taints the pod tolerates) must be on the deployment's allow-lists (Variables
``mlops_allowed_priority_classes``, ``mlops_allowed_tolerations``), checked before anything is placed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from include.mlops.errors import PlacementError, SettingsError

if TYPE_CHECKING:
    from include.mlops.routing.reservations import ReservationBook
    from include.mlops.routing.router import ResourceRouter

ALLOWED_PRIORITY_CLASSES_VARIABLE = "mlops_allowed_priority_classes"
ALLOWED_TOLERATIONS_VARIABLE = "mlops_allowed_tolerations"

DEFAULT_TRAINING_REQUEST: dict[str, Any] = {
    "gpu_count": 1,
    "gpu_types": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB", "NVIDIA-L4", "Tesla-T4"],
    "cpu_millicores": 1000,
    "memory_mib": 2048,
    "max_wait_s": 600,
    "allow_local": True,
}


class ResourceNotAllowed(PlacementError):
    """The training request asks for a priority class or a toleration the deployment does not allow."""


def _name_list(raw: Any, variable: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        if not raw.strip():
            return ()
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"Variable {variable}={raw!r} is not JSON (a list of names): {exc}") from exc
    if not isinstance(raw, list) or not all(isinstance(x, str) and x for x in raw):
        raise SettingsError(f'Variable {variable}={raw!r}: must be a JSON list of names, e.g. ["training-high"]')
    return tuple(raw)


@dataclass(frozen=True)
class ResourcePolicy:
    """What a training request may ask for beyond CPUs, memory and GPUs. Empty lists allow nothing:
    no priority class (the cluster's default) and no toleration but the router's own GPU taints."""

    allowed_priority_classes: tuple[str, ...] = ()
    allowed_tolerations: tuple[str, ...] = ()  # taint keys

    @classmethod
    def from_values(cls, *, priority_classes: Any, tolerations: Any) -> ResourcePolicy:
        """From the Variables' raw values (JSON lists of names; empty: none allowed)."""
        return cls(
            _name_list(priority_classes, ALLOWED_PRIORITY_CLASSES_VARIABLE),
            _name_list(tolerations, ALLOWED_TOLERATIONS_VARIABLE),
        )

    def check(self, request: Mapping[str, Any]) -> None:
        """Refuse a `resources` param naming a priority class or taint key not on the allow-lists."""
        pc = request.get("priority_class")
        if pc not in (None, "") and pc not in self.allowed_priority_classes:
            raise ResourceNotAllowed(
                f"resources.priority_class={pc!r} is not allowed: Variable {ALLOWED_PRIORITY_CLASSES_VARIABLE} "
                f"allows {list(self.allowed_priority_classes)} (an admin adds a class there)"
            )
        taints = request.get("tolerate_taints", ())
        if isinstance(taints, str) or not isinstance(taints, list | tuple):
            raise ResourceNotAllowed(
                f'resources.tolerate_taints={taints!r}: must be a list of taint keys, e.g. ["dedicated"]'
            )
        refused = [t for t in taints if t not in self.allowed_tolerations]
        if refused:
            raise ResourceNotAllowed(
                f"resources.tolerate_taints={list(taints)!r}: {refused!r} not allowed: Variable "
                f"{ALLOWED_TOLERATIONS_VARIABLE} allows {list(self.allowed_tolerations)} (an admin adds a key there)"
            )


def training_request(task_key: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(router request, cpu_fallback) from the defaults and the DAG's overrides."""
    req = {**DEFAULT_TRAINING_REQUEST, **overrides, "task_key": task_key}
    cpu_fallback = bool(req.pop("cpu_fallback", True))
    return req, cpu_fallback


def place_training(
    task_key: str,
    overrides: dict[str, Any],
    *,
    router: ResourceRouter,
    policy: ResourcePolicy | None = None,
    log: Callable[[str], None] = print,
    waited_s: float = 0.0,
) -> dict[str, Any]:
    """Decide where training runs now; returns the placement (or wait) as a JSON-safe dict.

    ``waited_s``: how long this task has already waited for capacity (the router gives up, with a
    wait whose ``max_wait_exceeded`` is true, once it passes the request's ``max_wait_s``).
    ``policy``: the allow-lists (the deployment's Variables, ``include.mlops.airflow.config``; default:
    empty lists, which allow no priority class and no extra toleration); a request off them is
    refused (ResourceNotAllowed) before the router is asked."""
    from include.mlops.routing.model import Placement, TaskRequest

    req, cpu_fallback = training_request(task_key, overrides)
    (policy or ResourcePolicy()).check(req)
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


def release_training(task_key: str, *, router: ResourceRouter, log: Callable[[str], None] = print) -> int:
    """Drop the reservation a placement made for task_key (training finished or gave up)."""
    removed = int(router.book.release(task_key))
    if removed:
        log(f"released the router's reservation of {task_key}")
    return removed


@dataclass(frozen=True)
class ReservationLease:
    """A placement's reservation, renewed while its training runs (``runner.keep_renewed``): the
    book's TTL covers the gap between decision and start; a running training holds its share."""

    book: ReservationBook
    reservation_id: str
    log: Callable[[str], None] = print

    @property
    def every_s(self) -> float:
        return max(0.05, float(self.book.ttl_s) / 3)

    def renew(self) -> None:
        if not self.book.renew(self.reservation_id):
            self.log(
                f"reservation {self.reservation_id} had already expired or been released: the router may "
                "place other work on this training's share"
            )


def reservation_lease(
    placement: Mapping[str, Any], *, router: ResourceRouter, log: Callable[[str], None] = print
) -> ReservationLease | None:
    """The lease of a local/docker placement's reservation (a pod's share is counted by Kubernetes
    once bound, so a kubernetes placement needs none); None without a reservation."""
    rid = placement.get("reservation_id")
    if not rid or placement.get("target") not in ("local", "docker"):
        return None
    return ReservationLease(router.book, str(rid), log)


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
