"""The router as the DAG and the plugin use it: snapshot, subtract reservations, place, reserve.

One call per decision; the whole read-decide-reserve step holds the book's lock.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from include.mlops.routing.model import CapacitySnapshot, Decision, Placement, TaskRequest
from include.mlops.routing.placement import DEFAULT_CONFIG, RouterConfig, place_task
from include.mlops.routing.reservations import ReservationBook


class CapacityProvider(Protocol):
    """Anything that can say what is free now (Kubernetes API, a static inventory, this machine)."""

    def snapshot(self) -> CapacitySnapshot: ...


@dataclasses.dataclass(frozen=True)
class CombinedProvider:
    """The primary cluster's nodes plus the local machine (only used when a request allows it)."""

    providers: tuple[CapacityProvider, ...]

    def snapshot(self) -> CapacitySnapshot:
        snaps = [p.snapshot() for p in self.providers]
        return CapacitySnapshot(
            nodes=tuple(n for s in snaps for n in s.nodes),
            source="+".join(s.source for s in snaps),
            taken_at_s=min((s.taken_at_s for s in snaps), default=0.0),
        )


class ResourceRouter:
    def __init__(
        self, provider: CapacityProvider, book: ReservationBook, config: RouterConfig = DEFAULT_CONFIG
    ) -> None:
        self.provider = provider
        self.book = book
        self.config = config

    def decide(self, request: TaskRequest, *, waited_s: float = 0.0, dry_run: bool = False) -> Decision:
        """Place the task (reserving its share unless dry_run) or say why it waits."""
        snapshot = self.provider.snapshot()
        with self.book.transaction() as txn:
            held = [r.claim for r in txn.active(exclude_task_key=request.task_key)]
            decision = place_task(request, snapshot, reserved=held, waited_s=waited_s, config=self.config)
            if isinstance(decision, Placement) and not dry_run:
                r = txn.reserve(request.task_key, decision.claim)
                decision = dataclasses.replace(decision, reservation_id=r.id)
            txn.record_decision(
                request.task_key,
                decision.decision,
                {"request": request.to_dict(), **decision.to_dict()},
                dry_run=dry_run,
            )
        return decision
