"""What only the real scheduler exercises in the release DAGs: the task-supervisor wire, pausing.

`airflow dags test` runs a task in one process and never encodes these messages; under the
real scheduler each task talks to its supervisor in msgpack, and a value that encoder refuses
fails the task at once. The approval's timeout is sent when the task parks in AWAITING_INPUT.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_approval_timeout_encodes_on_the_task_supervisor_wire() -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.execution_time.comms import _new_encoder

    dag = DagBag(dag_folder=str(ROOT / "dags" / "release.py")).dags["release"]
    approve = dag.get_task("approve")
    assert approve.response_timeout is not None
    # raises NotImplementedError for pendulum's Duration (what the DAG passed before)
    assert _new_encoder().encode({"timeout": approve.response_timeout})


def test_the_rollback_dag_arrives_unpaused_and_starts_nothing_by_itself() -> None:
    """An operator's rollback on a fresh deployment (DAGs paused at creation, as `make up` has it)
    runs at once instead of sitting queued behind a pause; unpaused, it never starts a run itself."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk.definitions.timetables.simple import NullTimetable

    dag = DagBag(dag_folder=str(ROOT / "dags" / "rollback.py")).dags["rollback"]
    assert dag.is_paused_upon_creation is False
    assert isinstance(dag.timetable, NullTimetable)
