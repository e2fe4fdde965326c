"""A real `airflow api-server` (core API + plugins) for tests, with SimpleAuthManager users."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

START_LIMIT_S = 90


@dataclass(frozen=True)
class ApiServer:
    url: str
    passwords: dict[str, str]
    base: Path
    started_in_s: float

    def token(self, user: str, password: str | None = None) -> httpx.Response:
        return httpx.post(
            f"{self.url}/auth/token",
            json={"username": user, "password": self.passwords[user] if password is None else password},
            timeout=20,
        )

    def headers(self, user: str) -> dict[str, str]:
        resp = self.token(user)
        assert resp.status_code == 201, resp.text
        return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"


@contextlib.contextmanager
def airflow_api_server(base: Path, users: dict[str, str], env: dict[str, str] | None = None) -> Iterator[ApiServer]:
    """Start the api-server on a free loopback port; users maps name -> SimpleAuthManager role ('' = none)."""
    base.mkdir(parents=True, exist_ok=True)
    passwords = {u: secrets.token_urlsafe(12) for u in users}
    (base / "passwords.json").write_text(json.dumps(passwords))
    auth_env = {
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in users.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(base / "passwords.json"),
    }
    with _serve(base, {**os.environ, **(env or {}), **auth_env}, passwords) as server:
        yield server


def airflow_cli(env: dict[str, str], *args: str, timeout_s: float = 120) -> str:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), *args],
        env=env, capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"airflow {' '.join(args)} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
    return out.stdout


_FAB_SETUP = """
import json, sys
from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder
from include.mlops.airflow.fab_roles import grant_router_access
plan = json.loads(sys.argv[1])
with get_application_builder() as ab:
    for role in {r for r, _ in plan["users"].values()} | set(plan["grants"]):
        ab.sm.find_role(role) or ab.sm.add_role(role)
for role, read_only in plan["grants"].items():
    grant_router_access([role], read_only=read_only)
with get_application_builder() as ab:
    for user, (role, password) in plan["users"].items():
        assert ab.sm.add_user(user, user, "test", f"{user}@example.org", ab.sm.find_role(role), password), user
"""


@contextlib.contextmanager
def fab_api_server(
    base: Path, users: dict[str, str], grants: dict[str, bool], env: dict[str, str] | None = None
) -> Iterator[ApiServer]:
    """The api-server on the FAB auth manager, with its own SQLite DB (FAB's tables need a migrate
    under FAB). ``users``: name -> FAB role; ``grants``: role -> read_only, applied with
    ``include.mlops.airflow.fab_roles`` (missing roles are created first)."""
    base.mkdir(parents=True, exist_ok=True)
    full_env = {
        **os.environ,
        **(env or {}),
        "AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{base / 'airflow-fab.db'}",
    }
    airflow_cli(full_env, "db", "migrate")
    passwords = {u: secrets.token_urlsafe(12) for u in users}
    # roles, grants and users in one process (each `airflow` CLI call costs seconds of start-up)
    plan = {"users": {u: [r, passwords[u]] for u, r in users.items()}, "grants": grants}
    subprocess.run(
        [sys.executable, "-c", _FAB_SETUP, json.dumps(plan)],
        env=full_env, check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    with _serve(base, full_env, passwords) as server:
        yield server


@contextlib.contextmanager
def _serve(base: Path, env: dict[str, str], passwords: dict[str, str]) -> Iterator[ApiServer]:
    """The api-server on a free port; it cannot take a bound socket, so when another process took
    the port first (its log says so) it starts again on a new one (tests/ports.py)."""
    from tests.ports import BIND_ATTEMPTS, port_taken

    log_path = base / "api-server.log"
    for _attempt in range(BIND_ATTEMPTS):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        full_env = {
            **env,
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__BASE_URL": url,
        }
        with log_path.open("wb") as log:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port),
                 "--apps", "core", "--workers", "1"],
                env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            while True:
                if port_taken(log_path.read_text(errors="replace")):
                    break
                assert proc.poll() is None, f"api-server exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
                assert time.monotonic() < t0 + START_LIMIT_S, (
                    f"api-server not up in {START_LIMIT_S} s:\n" + log_path.read_text()[-3000:]
                )
                try:
                    # an answer counts only while our server runs (another run's server may hold the port)
                    if httpx.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200 and proc.poll() is None:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        except BaseException:
            _stop(proc)
            raise
        if not port_taken(log_path.read_text(errors="replace")):
            break
        _stop(proc)
    else:
        raise RuntimeError(f"api-server found its port taken {BIND_ATTEMPTS} times:\n{log_path.read_text()[-2000:]}")
    try:
        started = time.monotonic() - t0
        print(f"airflow api-server answered after {started:.1f} s")
        yield ApiServer(url, passwords, base, started)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
