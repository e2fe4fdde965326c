"""Where the reservation book lives: a SQLite file (one host) or PostgreSQL (every worker reaches it).

Both speak SQLAlchemy Core; they differ only in how a connection is made and how the claim's
exclusive section is locked:
  sqlite:     ``BEGIN IMMEDIATE`` (SQLite's single writer lock, shared by the processes of one host);
  postgresql: ``pg_advisory_xact_lock`` on one key for the book, held to the end of the transaction
              (workers on separate machines queue on the server, and a crashed worker's lock goes
              with its connection).
The claim algorithm itself (expire, read, place, reserve, log) is ``reservations.ReservationBook``'s.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from include.mlops.errors import SettingsError

# one advisory-lock key for the book's exclusive section (a signed 64-bit int, as PostgreSQL takes)
BOOK_LOCK_KEY = int.from_bytes(hashlib.sha256(b"mlops.routing.reservation_book").digest()[:8], "big", signed=True)
# as long as SQLite's busy timeout: a claim waits for another worker's claim, not for ever
LOCK_TIMEOUT_S = 30


class BookUnavailableError(SettingsError):
    """The reservation book's database cannot be reached or named."""


class SqlBackend:
    """A book's database: plain reads, and an exclusive section for every write."""

    def __init__(self, engine: Engine, description: str) -> None:
        self.engine = engine
        self.description = description  # for messages: never a password

    def _connection(self) -> Connection:
        try:
            return self.engine.connect()
        except sa.exc.OperationalError as exc:
            raise BookUnavailableError(
                f"router book {self.description}: cannot connect ({str(exc.orig).strip()[:300]})"
            ) from exc

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._connection() as conn:
            yield conn

    @contextmanager
    def exclusive(self) -> Iterator[Connection]:
        """One writer at a time across every process using the book; committed on exit."""
        with self._section(wait=True) as conn:
            if conn is None:  # cannot happen: a waiting section either locks or raises
                raise BookUnavailableError(f"router book {self.description}: the book's lock was not taken")
            yield conn

    @contextmanager
    def try_exclusive(self) -> Iterator[Connection | None]:
        """exclusive(), or None at once (no waiting) while another writer holds the book."""
        with self._section(wait=False) as conn:
            yield conn

    @contextmanager
    def _section(self, *, wait: bool) -> Iterator[Connection | None]:
        with self._connection() as conn:
            if not self._begin_locked(conn, wait=wait):
                yield None
                return
            try:
                yield conn
            except BaseException:
                self._rollback(conn)
                raise
            self._commit(conn)

    def _begin_locked(self, conn: Connection, *, wait: bool) -> bool:
        raise NotImplementedError

    def _commit(self, conn: Connection) -> None:
        conn.commit()

    def _rollback(self, conn: Connection) -> None:
        conn.rollback()


class SqliteBackend(SqlBackend):
    """A file on this host: ``BEGIN IMMEDIATE`` takes SQLite's write lock, which every process shares."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(_sqlite_engine(str(path)), f"sqlite file {path}")
        self.path = path

    def _begin_locked(self, conn: Connection, *, wait: bool) -> bool:
        if not wait:
            conn.exec_driver_sql("PRAGMA busy_timeout = 0")  # NullPool: the connection closes after this
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except sa.exc.OperationalError:  # "database is locked": another writer holds it
            if wait:
                raise
            return False
        return True

    # the transaction was begun by hand (the DB-API connection is in autocommit mode): end it likewise
    def _commit(self, conn: Connection) -> None:
        conn.exec_driver_sql("COMMIT")

    def _rollback(self, conn: Connection) -> None:
        conn.exec_driver_sql("ROLLBACK")


class PostgresBackend(SqlBackend):
    """A database every worker reaches; the claim holds a transaction-scoped advisory lock."""

    def __init__(self, url: sa.URL) -> None:
        super().__init__(_postgres_engine(url), f"database {url.render_as_string(hide_password=True)}")

    def _begin_locked(self, conn: Connection, *, wait: bool) -> bool:
        conn.begin()
        if not wait:
            if conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": BOOK_LOCK_KEY}).scalar():
                return True
            conn.rollback()
            return False
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'")
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": BOOK_LOCK_KEY})
        return True


# NullPool: a connection per operation, as before (nothing pooled survives a LocalExecutor fork);
# one engine per book location and process, so the connect hook is registered once.
@functools.lru_cache(maxsize=64)
def _sqlite_engine(path: str) -> Engine:
    engine = sa.create_engine(
        f"sqlite:///{path}",
        poolclass=NullPool,
        connect_args={"timeout": float(LOCK_TIMEOUT_S)},
        isolation_level="AUTOCOMMIT",  # transactions are opened by hand: BEGIN IMMEDIATE
    )

    @sa.event.listens_for(engine, "connect")
    def _wal(dbapi_conn: object, _record: object) -> None:
        dbapi_conn.execute("PRAGMA journal_mode=WAL")  # type: ignore[attr-defined]

    return engine


@functools.lru_cache(maxsize=16)
def _postgres_engine(url: sa.URL) -> Engine:
    return sa.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})


def backend_for(location: str | Path) -> SqlBackend:
    """A path (or ``sqlite:///path``) is a SQLite file; ``postgresql[+driver]://...`` a shared database."""
    if isinstance(location, Path) or "://" not in location:
        return SqliteBackend(Path(location))
    try:
        url = sa.make_url(location)
    except sa.exc.ArgumentError as exc:
        raise BookUnavailableError(f"router book URL: not a database URL ({exc})") from exc
    if url.get_backend_name() == "sqlite":
        if not url.database:
            raise BookUnavailableError("router book URL sqlite://: name a file (sqlite:////abs/path/book.sqlite)")
        return SqliteBackend(Path(url.database))
    if url.get_backend_name() == "postgresql":
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg2")
        return PostgresBackend(url)
    raise BookUnavailableError(
        f"router book URL scheme {url.drivername!r}: use a file path, sqlite:///<path> or postgresql://..."
    )
