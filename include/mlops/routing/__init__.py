"""Resource-aware task routing: where can a heavy task run now, and why there.

Light entry points only (no kubernetes client, no pandas at import): DAG files import this.
"""

from include.mlops.routing.model import (
    CapacitySnapshot,
    Decision,
    Explanation,
    NodeCapacity,
    Placement,
    PoolVerdict,
    TaskRequest,
    WaitDecision,
)
from include.mlops.routing.placement import place_task

__all__ = [
    "CapacitySnapshot",
    "Decision",
    "Explanation",
    "NodeCapacity",
    "Placement",
    "PoolVerdict",
    "TaskRequest",
    "WaitDecision",
    "place_task",
]
