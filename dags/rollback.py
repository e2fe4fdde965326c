"""Manual rollback: put the previous champion (or a named version) back into service."""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

DOC = """
### Rollback

Puts the **previous champion** (recorded by each promotion) or a version you name back into
service: it starts beside the current stable, takes 100 % of traffic once ready, the current
stable drains and stops, and the `champion` alias moves back. A running canary is removed first.
Takes seconds on the local target.
"""


@dag(
    dag_id="rollback",
    description="Serve the previous champion (or a named version) again and move the champion alias",
    doc_md=DOC,
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["mlops", "release"],
    default_args={"owner": "mlops", "retries": 1, "pool": "releases"},
    params={
        "model_name": Param("fraud-detector", type="string", minLength=1, description="Registered model name"),
        "version": Param(None, type=["null", "string"], description="Version to restore; empty: the previous champion"),
    },
)
def rollback() -> None:
    @task
    def rollback_to_champion(params: dict) -> dict:
        from include.mlops import releasing
        from include.mlops.settings.project import ProjectSettings

        return releasing.rollback_to_version(ProjectSettings.from_airflow(), params["model_name"], params["version"])

    rollback_to_champion()


rollback()
