"""Placement -> KubernetesPodOperator arguments, so the pod lands where the router decided.

Kubernetes model objects are built inside the function: DAG files import this module.
"""

from __future__ import annotations

import math
from typing import Any

from include.mlops.errors import PlacementError
from include.mlops.routing.model import Placement

# the pod must bind within this many expected waits before the task fails (and Airflow retries)
SCHEDULE_TIMEOUT_FACTOR = 4.0
MIN_SCHEDULE_TIMEOUT_S = 300


def schedule_timeout_s(placement: Placement) -> int:
    """Seconds KPO waits for the pod to start: a margin over the expected wait (image pulls of
    multi-GB training images routinely exceed KPO's 120 s default)."""
    return max(MIN_SCHEDULE_TIMEOUT_S, math.ceil(placement.expected_wait_s * SCHEDULE_TIMEOUT_FACTOR))


def kpo_kwargs(placement: Placement) -> dict[str, Any]:
    """node_selector, tolerations, container_resources, pool, pool_slots, priority_class_name,
    schedule_timeout_seconds for ``KubernetesPodOperator(**kpo_kwargs(p), ...)``."""
    if placement.target != "kubernetes":
        raise PlacementError(
            f"placement target is {placement.target!r}, not 'kubernetes': run it with the {placement.target} runner"
        )
    from kubernetes.client import models as k8s

    kwargs: dict[str, Any] = {
        "node_selector": dict(placement.node_selector),
        "tolerations": [
            k8s.V1Toleration(
                key=t["key"], operator=t.get("operator", "Exists"), value=t.get("value"), effect=t.get("effect")
            )
            for t in placement.tolerations
        ],
        "container_resources": k8s.V1ResourceRequirements(
            requests=dict(placement.resources_requests), limits=dict(placement.resources_limits)
        ),
        "pool": placement.airflow_pool,
        "pool_slots": placement.pool_slots,
        "schedule_timeout_seconds": schedule_timeout_s(placement),
    }
    if placement.priority_class:
        kwargs["priority_class_name"] = placement.priority_class
    return kwargs
