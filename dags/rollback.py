"""Manual rollback: put the previous champion (or a named version) back into service."""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

DOC = """
### Rollback

Puts the **previous champion** (recorded by each promotion) or a version you name back into
service: it starts beside the current stable, takes 100 % of traffic once ready, the current
stable drains and stops, and the `champion` alias moves back. A running canary is removed first,
whichever release started it (the operator's override; the removal records that release).
Takes seconds on the local target, and never waits behind a release: it uses no pool a release holds.
"""


@dag(
    dag_id="rollback",
    description="Serve the previous champion (or a named version) again and move the champion alias",
    doc_md=DOC,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    # Never paused on arrival (deployments pause new DAGs by default, as `make up` does): an operator's
    # rollback triggered on a fresh deployment would sit queued until someone unpaused it. The DAG
    # has no schedule, so being unpaused never starts anything by itself.
    is_paused_upon_creation=False,
    dagrun_timeout=pendulum.duration(minutes=30),
    tags=["mlops", "release"],
    # No pool a release uses: a rollback must never queue behind a release (one waiting for
    # approval holds its slot for hours). Serving changes are serialised by the target's lock.
    default_args={
        "owner": "mlops",
        "retries": 1,
        "retry_delay": pendulum.duration(seconds=5),
        "execution_timeout": pendulum.duration(minutes=10),
    },
    params={
        "model_name": Param("fraud-detector", type="string", minLength=1, description="Registered model name"),
        "version": Param(None, type=["null", "string"], description="Version to restore; empty: the previous champion"),
    },
)
def rollback() -> None:
    @task
    def rollback_to_champion(params: dict, dag_run=None) -> dict:  # type: ignore[no-untyped-def]
        from airflow.sdk.exceptions import AirflowFailException

        from include.mlops import releasing
        from include.mlops.airflow.config import project_settings
        from include.mlops.errors import InvalidReleaseParams

        run = {"dag_id": dag_run.dag_id, "run_id": dag_run.run_id} if dag_run else None
        try:
            return releasing.rollback_to_version(project_settings(), params["model_name"], params["version"], run=run)
        except InvalidReleaseParams as e:  # a param a retry cannot fix: fail now, never after retry_delay
            raise AirflowFailException(f"InvalidReleaseParams: {e}") from e

    rollback_to_champion()


rollback()
