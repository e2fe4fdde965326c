"""A PostgreSQL cluster of this checkout: Debian's `postgresql` server binaries, data under .local/.

The real Airflow runtime (`make up`) keeps its metadata here instead of SQLite: the scheduler,
dag-processor, triggerer and api-server are separate processes writing at once, which SQLite does
not allow. The cluster listens on 127.0.0.1 (port from MLOPS_PG_PORT, 5433 by default: 5432 is
left to a system server) and on a unix socket in a private folder of its own.

initdb and the server refuse to run as root: as root, every server command runs as the `postgres`
user (`runuser -u postgres --`) in a folder that user owns; as anyone else, as that user.
Authentication: over TCP only with the `airflow` role's password (scram-sha-256); over the
private socket (mode 0700, reachable by the cluster's owner and root only) without one.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from include.mlops.errors import SettingsError

DB_NAME = "airflow"
DB_USER = "airflow"
DEFAULT_PORT = 5433
SERVER_USER = "postgres"


class PostgresError(SettingsError):
    """The local PostgreSQL cluster cannot be created, started or reached."""


def server_bin() -> Path:
    """The newest installed server's bin folder (/usr/lib/postgresql/<major>/bin)."""
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise PostgresError(
            "no PostgreSQL server under /usr/lib/postgresql/*/bin: install Debian's package "
            "(`apt-get install postgresql`, done by `make services` as root)"
        )
    return versions[-1]


def _runuser() -> str:
    """util-linux's runuser lives in /usr/sbin, which a user's PATH often lacks."""
    candidates = ("/usr/sbin/runuser", "/sbin/runuser")
    found = shutil.which("runuser") or next((p for p in candidates if Path(p).exists()), None)
    if found is None:
        raise PostgresError("runuser (util-linux) not found: as root, the server must run as the `postgres` user")
    return found


def _as_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class Cluster:
    """One cluster: `root` holds data/, run/ (the socket) and server.log, all owned by the server's user."""

    root: Path
    port: int = DEFAULT_PORT

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def pid_file(self) -> Path:
        return self.data / "postmaster.pid"

    def url(self, password: str, driver: str = "psycopg2") -> str:
        return f"postgresql+{driver}://{DB_USER}:{password}@127.0.0.1:{self.port}/{DB_NAME}"

    # --- commands, as the server's user ------------------------------------------------------------

    def _run(self, args: list[str], *, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [_runuser(), "-u", SERVER_USER, "--", *args] if _as_root() else args
        done = subprocess.run(cmd, input=input_text, capture_output=True, text=True, check=False, cwd="/")
        if done.returncode != 0:
            raise PostgresError(
                f"`{' '.join(args[:3])} ...` failed (exit {done.returncode}) for the cluster in {self.root}:\n"
                f"{(done.stdout + done.stderr)[-2000:]}"
            )
        return done

    def _prepare_root(self) -> None:
        """The cluster's folder, owned by the server's user, and reachable by it from /."""
        self.root.mkdir(parents=True, exist_ok=True)
        if not _as_root():
            self.root.chmod(0o700)
            return
        pw = pwd.getpwnam(SERVER_USER)
        for path in (self.root, self.socket_dir):
            path.mkdir(exist_ok=True)
            os.chown(path, pw.pw_uid, pw.pw_gid)
            path.chmod(0o700)
        blocked = [
            str(p)
            for p in self.root.parents
            if p.exists() and not (p.stat().st_mode & 0o001 or p.stat().st_uid == pw.pw_uid)
        ]
        if blocked:
            raise PostgresError(
                f"the `{SERVER_USER}` user cannot reach the cluster folder {self.root}: {blocked[0]} is not "
                "searchable by others (mode o+x); put MLOPS_LOCAL_DIR under a folder it can traverse"
            )

    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def init(self) -> None:
        """initdb once: UTF8, superuser `postgres`, trust over the private socket only, passwords over TCP."""
        self._prepare_root()
        self.socket_dir.mkdir(exist_ok=True)
        if self.initialized():
            return
        self._run(
            [
                str(server_bin() / "initdb"),
                "-D",
                str(self.data),
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ]
        )

    def running_pid(self) -> int | None:
        """The postmaster's pid when this cluster's server is up (its pid file names a live postgres)."""
        try:
            pid = int(self.pid_file.read_text().split("\n", 1)[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"postgres" in cmdline else None

    def start(self, timeout_s: int = 60) -> None:
        if self.running_pid() is not None:
            return
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir}"
        try:
            self._run(
                [
                    str(server_bin() / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(timeout_s),
                    "start",
                ]
            )
        except PostgresError as exc:
            tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else "(no log)"
            raise PostgresError(f"{exc}\nserver log {self.log}:\n{tail}") from exc

    def stop(self) -> bool:
        """Fast shutdown (open sessions are ended); True when a server was running."""
        if self.running_pid() is None:
            return False
        self._run([str(server_bin() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"])
        return True

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the private socket; the SQL goes on stdin (never on a command line)."""
        done = self._run(
            [
                str(server_bin() / "psql"),
                "-X",
                "-q",
                "-tA",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-f",
                "-",
            ],
            input_text=sql,
        )
        return done.stdout.strip()

    def ensure_database(self, password: str) -> None:
        """The `airflow` role (with this password) and its database; idempotent."""
        if not re.fullmatch(r"[A-Za-z0-9_-]+", password):
            raise PostgresError("the database password must be URL- and SQL-safe ([A-Za-z0-9_-]+)")
        # constants and a checked password only: nothing here comes from a user's free text
        if self.psql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{DB_USER}'") == "0":  # noqa: S608
            self.psql(f"CREATE ROLE {DB_USER} LOGIN")
        self.psql(f"ALTER ROLE {DB_USER} PASSWORD '{password}'")
        if self.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{DB_NAME}'") == "0":  # noqa: S608
            self.psql(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
