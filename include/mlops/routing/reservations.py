"""Short-lived reservations so two tasks deciding at once don't both take the last GPU.

The book is a SQL database: a SQLite file for the local profile (one host: every worker process
shares the file), or PostgreSQL that workers on separate machines all reach (Celery, Kubernetes
executors). The read-place-reserve step runs in one exclusive section (``book_backends``: SQLite's
``BEGIN IMMEDIATE``, PostgreSQL's transaction-scoped advisory lock); the claim itself (expire,
read, reserve with a TTL, log the decision) is written once, here, for both. Recent decisions are
kept alongside for the UI.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from include.mlops.routing.book_backends import SqlBackend, backend_for
from include.mlops.routing.model import Claim

# created if missing; the column types match the SQLite files written before the PostgreSQL backend
_METADATA = sa.MetaData()
_RESERVATIONS = sa.Table(
    "reservations",
    _METADATA,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("task_key", sa.Text, nullable=False),
    sa.Column("node_name", sa.Text, nullable=False),
    sa.Column("claim_json", sa.Text, nullable=False),
    sa.Column("created_at_s", sa.Double, nullable=False),  # DOUBLE PRECISION: REAL is 4 bytes in PostgreSQL
    sa.Column("expires_at_s", sa.Double, nullable=False),
    sa.Index("reservations_expiry", "expires_at_s"),
)
_DECISIONS = sa.Table(
    "decisions",
    _METADATA,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("decided_at_s", sa.Double, nullable=False),
    sa.Column("task_key", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("dry_run", sa.Integer, nullable=False),
    sa.Column("body_json", sa.Text, nullable=False),
    sqlite_autoincrement=True,
)


@dataclass(frozen=True)
class Reservation:
    id: str
    task_key: str
    claim: Claim
    created_at_s: float
    expires_at_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task_key": self.task_key,
            "node_name": self.claim.node_name,
            "claim": _claim_to_dict(self.claim),
            "created_at_s": self.created_at_s,
            "expires_at_s": self.expires_at_s,
        }


def _claim_to_dict(c: Claim) -> dict[str, Any]:
    return {
        "node_name": c.node_name,
        "gpu_milli_by_device": [list(p) for p in c.gpu_milli_by_device],
        "mig_profile": c.mig_profile,
        "cpu_millicores": c.cpu_millicores,
        "memory_mib": c.memory_mib,
    }


def _claim_from_dict(d: dict[str, Any]) -> Claim:
    return Claim(
        node_name=d["node_name"],
        gpu_milli_by_device=tuple((int(i), int(m)) for i, m in d["gpu_milli_by_device"]),
        mig_profile=d["mig_profile"],
        cpu_millicores=int(d["cpu_millicores"]),
        memory_mib=int(d["memory_mib"]),
    )


class ReservationBook:
    """Reservations with a TTL; safe across threads and processes (and machines, on PostgreSQL).

    ``location``: a SQLite file path (or ``sqlite:///path``), or a ``postgresql://`` URL.
    """

    def __init__(
        self,
        location: str | Path,
        *,
        ttl_s: float = 180.0,
        keep_decisions: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend: SqlBackend = backend_for(location)
        self.ttl_s = ttl_s
        self.keep_decisions = keep_decisions
        self._clock = clock
        # the tables, once: looked for without a lock (the api-server opens the book per request, and
        # must answer while a placement holds it), created under the lock (concurrent first uses on
        # PostgreSQL would race on CREATE TABLE)
        with self.backend.read() as conn:
            inspector = sa.inspect(conn)
            ready = all(inspector.has_table(t.name) for t in _METADATA.sorted_tables)
        if not ready:
            with self.backend.exclusive() as conn:
                _METADATA.create_all(conn, checkfirst=True)

    @contextmanager
    def transaction(self) -> Iterator[BookTransaction]:
        """Exclusive section: read active claims, decide, reserve; other writers wait."""
        with self.backend.exclusive() as conn:
            yield BookTransaction(self, conn, self._clock())

    def active(self) -> list[Reservation]:
        with self.backend.read() as conn:
            return _active(conn, self._clock())

    def release(self, reservation_id_or_task_key: str) -> int:
        """Drop a reservation once its pod is bound (or the task gave up); returns rows removed."""
        with self.backend.exclusive() as conn:
            cur = conn.execute(
                sa.text("DELETE FROM reservations WHERE id = :k OR task_key = :k"), {"k": reservation_id_or_task_key}
            )
            return int(cur.rowcount)

    def renew(self, reservation_id_or_task_key: str, ttl_s: float | None = None) -> int:
        """Push an unexpired reservation's expiry to now + TTL (a training that still runs holds its
        share); returns rows renewed. An expired one is not revived: its share may be placed already."""
        with self.backend.exclusive() as conn:
            now = self._clock()
            until = now + (self.ttl_s if ttl_s is None else ttl_s)
            cur = conn.execute(
                sa.text(
                    "UPDATE reservations SET expires_at_s = "
                    "CASE WHEN expires_at_s > :until THEN expires_at_s ELSE :until END "
                    "WHERE (id = :k OR task_key = :k) AND expires_at_s > :now"
                ),
                {"until": until, "k": reservation_id_or_task_key, "now": now},
            )
            return int(cur.rowcount)

    def record_dry_run(self, task_key: str, kind: str, body: dict[str, Any]) -> bool:
        """Log a dry run's decision unless a writer holds the book right now; never waits for it.

        A dry run places against the committed reservations (a plain read takes no lock), so it can
        neither delay a real placement nor be delayed by one; while a writer holds the book its log
        entry is dropped (returns False) instead of queueing behind the writer.
        """
        with self.backend.try_exclusive() as conn:
            if conn is None:  # a placement is being written
                return False
            BookTransaction(self, conn, self._clock()).record_decision(task_key, kind, body, dry_run=True)
            return True

    def recent_decisions(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.backend.read() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT seq, decided_at_s, task_key, kind, dry_run, body_json FROM decisions "
                    "ORDER BY seq DESC LIMIT :limit"
                ),
                {"limit": limit},
            ).all()
        return [
            {"seq": s, "decided_at_s": t, "task_key": k, "decision": kind, "dry_run": bool(d), **json.loads(b)}
            for s, t, k, kind, d, b in rows
        ]


class BookTransaction:
    """The claim, inside the book's exclusive section: the same statements on every backend."""

    def __init__(self, book: ReservationBook, conn: Connection, now_s: float) -> None:
        self._book = book
        self._conn = conn
        self.now_s = now_s

    def active(self, *, exclude_task_key: str = "") -> list[Reservation]:
        """Unexpired reservations; a retried task does not compete with its own earlier one."""
        self._conn.execute(sa.text("DELETE FROM reservations WHERE expires_at_s <= :now"), {"now": self.now_s})
        return [r for r in _active(self._conn, self.now_s) if not exclude_task_key or r.task_key != exclude_task_key]

    def reserve(self, task_key: str, claim: Claim) -> Reservation:
        if task_key:
            # idempotent per task run: a retry replaces its own reservation
            self._conn.execute(sa.text("DELETE FROM reservations WHERE task_key = :k"), {"k": task_key})
        r = Reservation(uuid.uuid4().hex, task_key, claim, self.now_s, self.now_s + self._book.ttl_s)
        self._conn.execute(
            _RESERVATIONS.insert(),
            {
                "id": r.id,
                "task_key": task_key,
                "node_name": claim.node_name,
                "claim_json": json.dumps(_claim_to_dict(claim)),
                "created_at_s": r.created_at_s,
                "expires_at_s": r.expires_at_s,
            },
        )
        return r

    def record_decision(self, task_key: str, kind: str, body: dict[str, Any], *, dry_run: bool) -> None:
        self._conn.execute(
            _DECISIONS.insert(),
            {
                "decided_at_s": self.now_s,
                "task_key": task_key,
                "kind": kind,
                "dry_run": int(dry_run),
                "body_json": json.dumps(body),
            },
        )
        self._conn.execute(
            sa.text("DELETE FROM decisions WHERE seq <= (SELECT MAX(seq) FROM decisions) - :keep"),
            {"keep": self._book.keep_decisions},
        )


def _active(conn: Connection, now_s: float) -> list[Reservation]:
    rows = conn.execute(
        sa.text(
            "SELECT id, task_key, claim_json, created_at_s, expires_at_s FROM reservations "
            "WHERE expires_at_s > :now ORDER BY created_at_s"
        ),
        {"now": now_s},
    ).all()
    return [Reservation(i, k, _claim_from_dict(json.loads(c)), cr, ex) for i, k, c, cr, ex in rows]
