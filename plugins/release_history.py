"""Airflow plugin: the release history (API + page) inside the Airflow 3 api-server.

Mounted under /release-history behind Airflow's auth (a user who may read the release DAG's runs);
a nav entry (Browse > Release history) opens the page, and a tab on each DAG run page shows that
run's release record (external view, destination dag_run). Facts are read per request from
Airflow's metadata DB and from MLflow (include/mlops/airflow/release_history.py); nothing is stored twice.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from include.mlops.airflow.auth import dag_runs_reader
from include.mlops.airflow.release_history import RELEASE_DAG_ID, URL_PREFIX, history_sources
from include.mlops.history.api import create_app

app = create_app(history_sources(), dependencies=[dag_runs_reader(RELEASE_DAG_ID)])


class ReleaseHistoryPlugin(AirflowPlugin):
    name = "release_history"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Release history"}]
    external_views = [
        {
            "name": "Release history",
            "href": "release-history/ui",  # relative, as the router's: works behind a reverse proxy's sub-path
            "destination": "nav",
            "category": "browse",
            "url_route": "release-history",
        },
        {
            # Airflow puts the tab on every DAG's runs; it shows a record for runs of the release DAG
            "name": "Release record",
            "href": URL_PREFIX + "/ui/runs/{RUN_ID}?dag_id={DAG_ID}",
            "destination": "dag_run",
            "url_route": "release-record",
        },
    ]
