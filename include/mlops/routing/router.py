"""The router as the DAG and the plugin use it: snapshot, subtract reservations, place, reserve.

One call per decision; the whole read-decide-reserve step holds the book's lock.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol

from include.mlops.routing.model import CapacitySnapshot, Decision, Placement, TaskRequest
from include.mlops.routing.placement import DEFAULT_CONFIG, RouterConfig, place_task
from include.mlops.routing.reservations import ReservationBook

log = logging.getLogger(__name__)


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
        """Place the task (reserving its share unless dry_run) or say why it waits.

        A dry run reserves nothing, so it takes no write lock either: it reads the committed
        reservations and logs its decision only if the book is free at that moment.
        """
        snapshot = self.provider.snapshot()
        if dry_run:
            held = [r.claim for r in self.book.active() if r.task_key != request.task_key]
            decision = place_task(request, snapshot, reserved=held, waited_s=waited_s, config=self.config)
            body = {"request": request.to_dict(), **decision.to_dict()}
            if not self.book.record_dry_run(request.task_key, decision.decision, body):
                log.info("dry run %r not logged: a placement held the book's lock", request.task_key)
            return decision
        with self.book.transaction() as txn:
            held = [r.claim for r in txn.active(exclude_task_key=request.task_key)]
            decision = place_task(request, snapshot, reserved=held, waited_s=waited_s, config=self.config)
            if isinstance(decision, Placement):
                r = txn.reserve(request.task_key, decision.claim)
                decision = dataclasses.replace(decision, reservation_id=r.id)
            txn.record_decision(
                request.task_key,
                decision.decision,
                {"request": request.to_dict(), **decision.to_dict()},
                dry_run=False,
            )
        return decision
