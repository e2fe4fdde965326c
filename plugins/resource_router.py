"""Airflow plugin: the resource router's API and UI page inside the Airflow 3 api-server.

API under /resource-router (capacity, reservations, decisions, dry-run) behind Airflow's auth;
a nav entry opens its page (the UI's session cookie authenticates it).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from include.mlops.airflow.auth import require_router_access
from include.mlops.airflow.config import router
from include.mlops.routing.api import create_app

app = create_app(router, dependencies=[require_router_access])


class ResourceRouterPlugin(AirflowPlugin):
    name = "resource_router"
    fastapi_apps = [{"app": app, "url_prefix": "/resource-router", "name": "Resource router"}]
    external_views = [
        {
            "name": "Resource router",
            "href": "resource-router/ui",  # relative: works behind a reverse proxy's sub-path
            "destination": "nav",
            "category": "browse",
            "url_route": "resource-router",
        }
    ]
