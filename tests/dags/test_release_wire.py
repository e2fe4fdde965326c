"""What the release DAG's tasks send over the task-supervisor wire must encode there.

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
