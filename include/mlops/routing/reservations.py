"""Short-lived reservations so two tasks deciding at once don't both take the last GPU.

A SQLite file shared by every worker process on the host (or a shared volume): the
read-place-reserve step runs in one ``BEGIN IMMEDIATE`` transaction, which SQLite
serialises across threads and processes. Recent decisions are kept alongside for the UI.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.mlops.routing.model import Claim

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reservations (
    id TEXT PRIMARY KEY,
    task_key TEXT NOT NULL,
    node_name TEXT NOT NULL,
    claim_json TEXT NOT NULL,
    created_at_s REAL NOT NULL,
    expires_at_s REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_expiry ON reservations (expires_at_s);
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    decided_at_s REAL NOT NULL,
    task_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    body_json TEXT NOT NULL
);
"""


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
    """Reservations with a TTL in a SQLite file; safe across threads and processes."""

    def __init__(
        self,
        path: str | Path,
        *,
        ttl_s: float = 180.0,
        keep_decisions: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.ttl_s = ttl_s
        self.keep_decisions = keep_decisions
        self._clock = clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        # autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    @contextmanager
    def transaction(self) -> Iterator[BookTransaction]:
        """Exclusive section: read active claims, decide, reserve; other writers wait."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            txn = BookTransaction(self, conn, self._clock())
            try:
                yield txn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def active(self) -> list[Reservation]:
        conn = self._connect()
        try:
            return _active(conn, self._clock())
        finally:
            conn.close()

    def release(self, reservation_id_or_task_key: str) -> int:
        """Drop a reservation once its pod is bound (or the task gave up); returns rows removed."""
        conn = self._connect()
        try:
            cur = conn.execute(
                "DELETE FROM reservations WHERE id = ? OR task_key = ?",
                (reservation_id_or_task_key, reservation_id_or_task_key),
            )
            return cur.rowcount
        finally:
            conn.close()

    def renew(self, reservation_id_or_task_key: str, ttl_s: float | None = None) -> int:
        """Push an unexpired reservation's expiry to now + TTL (a training that still runs holds its
        share); returns rows renewed. An expired one is not revived: its share may be placed already."""
        now = self._clock()
        conn = self._connect()
        try:
            cur = conn.execute(
                "UPDATE reservations SET expires_at_s = MAX(expires_at_s, ?) "
                "WHERE (id = ? OR task_key = ?) AND expires_at_s > ?",
                (
                    now + (self.ttl_s if ttl_s is None else ttl_s),
                    reservation_id_or_task_key,
                    reservation_id_or_task_key,
                    now,
                ),
            )
            return cur.rowcount
        finally:
            conn.close()

    def record_dry_run(self, task_key: str, kind: str, body: dict[str, Any]) -> bool:
        """Log a dry run's decision unless a writer holds the book right now; never waits for it.

        A dry run places against the committed reservations (a WAL read takes no lock), so it can
        neither delay a real placement nor be delayed by one; while a writer holds the book its log
        entry is dropped (returns False) instead of queueing behind the writer.
        """
        conn = sqlite3.connect(self.path, timeout=0, isolation_level=None)
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # "database is locked": a placement is being written
                return False
            BookTransaction(self, conn, self._clock()).record_decision(task_key, kind, body, dry_run=True)
            conn.execute("COMMIT")
            return True
        finally:
            conn.close()

    def recent_decisions(self, limit: int = 50) -> list[dict[str, Any]]:
        conn = self._connect()
        try:
            rows = conn.execute(
                "SELECT seq, decided_at_s, task_key, kind, dry_run, body_json FROM decisions ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        finally:
            conn.close()
        return [
            {"seq": s, "decided_at_s": t, "task_key": k, "decision": kind, "dry_run": bool(d), **json.loads(b)}
            for s, t, k, kind, d, b in rows
        ]


class BookTransaction:
    def __init__(self, book: ReservationBook, conn: sqlite3.Connection, now_s: float) -> None:
        self._book = book
        self._conn = conn
        self.now_s = now_s

    def active(self, *, exclude_task_key: str = "") -> list[Reservation]:
        """Unexpired reservations; a retried task does not compete with its own earlier one."""
        self._conn.execute("DELETE FROM reservations WHERE expires_at_s <= ?", (self.now_s,))
        return [r for r in _active(self._conn, self.now_s) if not exclude_task_key or r.task_key != exclude_task_key]

    def reserve(self, task_key: str, claim: Claim) -> Reservation:
        if task_key:
            # idempotent per task run: a retry replaces its own reservation
            self._conn.execute("DELETE FROM reservations WHERE task_key = ?", (task_key,))
        r = Reservation(uuid.uuid4().hex, task_key, claim, self.now_s, self.now_s + self._book.ttl_s)
        self._conn.execute(
            "INSERT INTO reservations VALUES (?, ?, ?, ?, ?, ?)",
            (r.id, task_key, claim.node_name, json.dumps(_claim_to_dict(claim)), r.created_at_s, r.expires_at_s),
        )
        return r

    def record_decision(self, task_key: str, kind: str, body: dict[str, Any], *, dry_run: bool) -> None:
        self._conn.execute(
            "INSERT INTO decisions (decided_at_s, task_key, kind, dry_run, body_json) VALUES (?, ?, ?, ?, ?)",
            (self.now_s, task_key, kind, int(dry_run), json.dumps(body)),
        )
        self._conn.execute(
            "DELETE FROM decisions WHERE seq <= (SELECT MAX(seq) FROM decisions) - ?", (self._book.keep_decisions,)
        )


def _active(conn: sqlite3.Connection, now_s: float) -> list[Reservation]:
    rows = conn.execute(
        "SELECT id, task_key, claim_json, created_at_s, expires_at_s FROM reservations "
        "WHERE expires_at_s > ? ORDER BY created_at_s",
        (now_s,),
    ).fetchall()
    return [Reservation(i, k, _claim_from_dict(json.loads(c)), cr, ex) for i, k, c, cr, ex in rows]
