"""Run a DAG with ``airflow dags test`` in a child process and read the run back from Airflow's DB.

`make run` (run_local), the orchestration bench and the e2e tests all do this; one place knows how
the run is found (the run ids of the DAG that were not there before it started) and what is read
back (run state; each task's state, times, pool and slots; reschedules). Local-profile tooling:
the metadata DB is the SQLite file of that Airflow home.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TaskRow:
    state: str | None
    start_date: str | None
    end_date: str | None
    pool: str
    pool_slots: int


@dataclass(frozen=True)
class DagTestRun:
    dag_id: str
    run_id: str
    state: str
    returncode: int
    log_path: Path
    task_rows: dict[str, TaskRow] = field(default_factory=dict)
    reschedules: dict[str, int] = field(default_factory=dict)  # task_id -> times rescheduled

    @property
    def tasks(self) -> dict[str, str | None]:
        """task_id -> state"""
        return {t: r.state for t, r in self.task_rows.items()}

    @property
    def pools(self) -> dict[str, tuple[str, int]]:
        return {t: (r.pool, r.pool_slots) for t, r in self.task_rows.items()}

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.splitlines()[-lines:])

    def explain(self) -> str:
        return f"{self.dag_id} {self.run_id} {self.state} {self.tasks}\n--- log tail ---\n{self.log[-6000:]}"


def run_ids(db_path: Path, dag_id: str) -> list[str]:
    with sqlite3.connect(db_path) as db:
        return [r[0] for r in db.execute("SELECT run_id FROM dag_run WHERE dag_id = ?", (dag_id,))]


def read_run(db_path: Path, dag_id: str, run_id: str) -> tuple[str, dict[str, TaskRow], dict[str, int]]:
    with sqlite3.connect(db_path) as db:
        (state,) = db.execute("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)).fetchone()
        rows = db.execute(
            "SELECT task_id, state, start_date, end_date, pool, pool_slots FROM task_instance "
            "WHERE dag_id = ? AND run_id = ?",
            (dag_id, run_id),
        ).fetchall()
        reschedules = dict(
            db.execute(
                "SELECT ti.task_id, count(*) FROM task_reschedule tr JOIN task_instance ti ON tr.ti_id = ti.id "
                "WHERE ti.dag_id = ? AND ti.run_id = ? GROUP BY ti.task_id",
                (dag_id, run_id),
            ).fetchall()
        )
    tasks = {t: TaskRow(st, start, end, pool, int(slots)) for t, st, start, end, pool, slots in rows}
    return str(state), tasks, reschedules


class DagTest:
    """One ``airflow dags test`` run in the background: ``run_id`` while it runs, ``wait()`` for the result."""

    def __init__(
        self,
        dag_id: str,
        conf: Mapping[str, Any],
        *,
        airflow_bin: Path,
        db_path: Path,
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path,
    ) -> None:
        self.dag_id, self.db_path, self.log_path = dag_id, db_path, log_path
        self.before = set(run_ids(db_path, dag_id)) if db_path.exists() else set()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as out:
            self.proc = subprocess.Popen(
                [str(airflow_bin), "dags", "test", dag_id, "-c", json.dumps(dict(conf))],
                env=dict(env),
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def new_run_ids(self) -> list[str]:
        return [r for r in run_ids(self.db_path, self.dag_id) if r not in self.before]

    @property
    def run_id(self) -> str | None:
        new = self.new_run_ids()
        return new[0] if len(new) == 1 else None

    def wait(self, timeout_s: float = 420) -> DagTestRun:
        try:
            self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        new = self.new_run_ids()
        if len(new) != 1:
            tail = self.log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"expected one new {self.dag_id} run, found {new}; log tail:\n{tail}")
        state, tasks, reschedules = read_run(self.db_path, self.dag_id, new[0])
        return DagTestRun(self.dag_id, new[0], state, self.proc.returncode, self.log_path, tasks, reschedules)
