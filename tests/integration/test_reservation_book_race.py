"""Workers on separate machines race for the last GPU through one shared reservation book.

Each worker is its own long-lived process in its own working folder with its own copy of the
inventory (one node, one free A100): all they share is the book's database. The book is a real
PostgreSQL server (a throwaway cluster from include/mlops/postgres.py, Debian's binaries) and, for
the local profile, one SQLite file. 100 rounds: every worker asks for the GPU at the same instant;
exactly one is placed, the others wait with the router's reason. Most rounds the winner's training
"ends" (its claim is released); every tenth round nobody releases, and the next round starts just
after the claim's TTL: a claim that outlived it would leave that round without a winner.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from include.mlops.routing.reservations import ReservationBook
from tests.conftest import ROOT, free_port
from tests.ports import BIND_ATTEMPTS, port_taken
from tests.services import service_missing

pytestmark = [pytest.mark.slow]

WORKERS = 4
ROUNDS = 100
TTL_S = 1.5
EXPIRE_EVERY = 10  # every tenth round's claim is left to expire instead of being released

INVENTORY = """
nodes:
  - {name: gpu-node, node_pool: a100-pool, gpu_type: NVIDIA-A100-SXM4-80GB, gpus: 1, cpu: "16", memory: 64Gi}
"""

# one worker: waits for "<round> <start at (epoch s)>" on stdin, asks the router at that instant
_WORKER = """
import json, sys, time
from include.mlops.routing.model import TaskRequest
from include.mlops.routing.providers.static import StaticInventoryProvider
from include.mlops.routing.reservations import ReservationBook
from include.mlops.routing.router import ResourceRouter
name, book, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
router = ResourceRouter(StaticInventoryProvider("inventory.yaml"), ReservationBook(book, ttl_s=ttl))
print("ready", flush=True)
for line in sys.stdin:
    rnd, at = line.split()
    time.sleep(max(0.0, float(at) - time.time()))
    t0 = time.time()
    d = router.decide(TaskRequest(task_key=f"{name}/round-{rnd}", gpu_count=1, gpu_types=("A100",)))
    out = {"worker": name, "decision": d.decision, "reason": getattr(d, "reason", ""), "t0": t0, "t1": time.time()}
    print(json.dumps({**out, "reservation_id": getattr(d, "reservation_id", None)}), flush=True)
"""


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; its URL for the `airflow` role."""
    from include.mlops.postgres import Cluster, PostgresError

    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        service_missing("no PostgreSQL server under /usr/lib/postgresql (`make services` installs it)")
    # not under pytest's tmp_path (0700): the cluster runs as the `postgres` user, who must reach it
    root = Path(tempfile.mkdtemp(prefix="mlops-book-pg-", dir="/tmp"))
    root.chmod(0o755)
    cluster = Cluster(root / "pg", free_port())
    try:
        cluster.init()
        for attempt in range(BIND_ATTEMPTS):
            try:
                cluster.start()
                break
            except PostgresError as exc:
                if attempt + 1 == BIND_ATTEMPTS or not port_taken(str(exc)):
                    raise
                cluster = Cluster(cluster.root, free_port())
        cluster.ensure_database("book-race-pw")
        yield cluster.url("book-race-pw")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _race(book_location: str, base: Path) -> dict[str, Any]:
    """Run the rounds; returns per-round results and timings."""
    book = ReservationBook(book_location, ttl_s=TTL_S)  # the referee: reads the book, ends trainings
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = []
    for i in range(WORKERS):
        folder = base / f"worker-{i}"  # a worker's own disk: its inventory, its cwd
        folder.mkdir(parents=True)
        (folder / "inventory.yaml").write_text(INVENTORY)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, f"w{i}", book_location, str(TTL_S)],
                cwd=folder,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
        )
    rounds: list[list[dict[str, Any]]] = []
    expiries: list[tuple[float, float]] = []  # (claim expired at, next round's winner asked at)
    pending_expiry: float | None = None
    t_start = time.monotonic()
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.stderr and p.stderr.read()
        start_at = time.time() + 0.1
        for rnd in range(ROUNDS):
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(f"{rnd} {start_at}\n")
                p.stdin.flush()
            results = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
            rounds.append(results)
            winners = [r for r in results if r["decision"] == "place"]
            assert len(winners) == 1, f"round {rnd}: {len(winners)} placements: {results}"
            won = winners[0]
            if pending_expiry is not None:  # the last round's claim was left to expire: it no longer counts
                expiries.append((pending_expiry, won["t0"]))
                pending_expiry = None
            claim = {r.id: r for r in book.active()}.get(won["reservation_id"])
            if claim is None:  # only if this round itself outlasted the TTL
                book.release(won["reservation_id"])
                start_at = time.time() + 0.05
                continue
            assert claim.expires_at_s - claim.created_at_s == pytest.approx(TTL_S)
            if (rnd + 1) % EXPIRE_EVERY == 0:
                # nobody releases: the next round starts just after the claim's expiry
                pending_expiry = claim.expires_at_s
                start_at = claim.expires_at_s + 0.02
            else:
                book.release(won["reservation_id"])  # the winner's training ended
                start_at = time.time() + 0.05
    finally:
        for p in procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
    took = time.monotonic() - t_start
    time.sleep(TTL_S)
    return {"rounds": rounds, "expiries": expiries, "took_s": took, "left": book.active(), "book": book}


def _check(outcome: dict[str, Any], label: str) -> None:
    rounds = outcome["rounds"]
    assert len(rounds) == ROUNDS
    for rnd, results in enumerate(rounds):
        waits = [r for r in results if r["decision"] != "place"]
        assert len(waits) == WORKERS - 1, (rnd, results)
        assert all("0 whole GPU(s) free" in r["reason"] for r in waits), (rnd, waits)
    # every expiry round's claim held until its TTL and not after: the next round's winner asked after it
    assert len(outcome["expiries"]) >= ROUNDS // EXPIRE_EVERY - 2, outcome["expiries"]
    assert all(expired_at <= asked for expired_at, asked in outcome["expiries"])
    assert outcome["left"] == []  # nothing outlives its TTL, whoever took it
    log = outcome["book"].recent_decisions(limit=WORKERS * ROUNDS)
    assert sum(d["decision"] == "place" for d in log) == ROUNDS, "one logged placement per round"
    winners = {r["worker"] for results in rounds for r in results if r["decision"] == "place"}
    spread = max(max(r["t1"] for r in res) - min(r["t0"] for r in res) for res in rounds)
    print(
        f"\n{label}: {ROUNDS} rounds x {WORKERS} workers in {outcome['took_s']:.1f} s, one placement each round "
        f"(won by {sorted(winners)}), slowest round {spread * 1000:.0f} ms"
    )


def test_workers_racing_for_the_last_gpu_through_postgresql_place_exactly_one_each_round(
    postgres_url: str, tmp_path: Path
) -> None:
    _check(_race(postgres_url, tmp_path), "postgresql")


def test_workers_racing_for_the_last_gpu_through_one_sqlite_file_place_exactly_one_each_round(
    tmp_path: Path,
) -> None:
    _check(_race(str(tmp_path / "book.sqlite"), tmp_path), "sqlite")
