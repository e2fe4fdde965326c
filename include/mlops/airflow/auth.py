"""Airflow authentication and authorization for the plugins' APIs inside the Airflow api-server.

Airflow mounts a plugin's FastAPI app without its own auth dependencies, so the app must ask
for them: a user Airflow authenticated (JWT bearer token or the UI's session cookie) who may
open the router's custom view (read, and POST for a dry run), or, for the release history, who
may read the runs of the release DAG (read only).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, cast

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

# the resource name an auth manager sees in is_authorized_custom_view (FAB: grant it to roles)
ROUTER_RESOURCE = "Resource router"
ROUTER_METHODS = ("GET", "POST")

_bearer = HTTPBearer(auto_error=False, description="An Airflow JWT, e.g. from POST /auth/token")


async def require_router_access(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
) -> None:
    """401 without a valid Airflow token, 403 for a user the auth manager does not allow the view."""
    # Imported per request, not with the plugin: task processes import plugins for their macros,
    # and the core API's security module takes seconds to import and needs the metadata models.
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import ResourceMethod
    from airflow.api_fastapi.core_api.security import get_user

    # The view has reads (GET) and dry runs (POST) only. Any other method is refused, never
    # authorised as something else: a route added later with PUT or DELETE must not pass as a read.
    if request.method not in ROUTER_METHODS:
        raise HTTPException(
            status.HTTP_405_METHOD_NOT_ALLOWED,
            detail=f"method {request.method} is not allowed on the {ROUTER_RESOURCE!r} API; "
            f"allowed: {', '.join(ROUTER_METHODS)}",
            headers={"Allow": ", ".join(ROUTER_METHODS)},
        )
    user = await get_user(request, None, credentials)
    method = cast(ResourceMethod, request.method)
    if not get_auth_manager().is_authorized_custom_view(method=method, resource_name=ROUTER_RESOURCE, user=user):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"user {user.get_name()!r} may not {method} the {ROUTER_RESOURCE!r} view; ask an Airflow admin",
        )


def dag_runs_reader(dag_id: str) -> Callable[..., Coroutine[Any, Any, None]]:
    """A dependency for a read-only view of one DAG's runs: 401 without a valid Airflow token or
    session, 403 for a user the auth manager does not let read that DAG's runs, 405 for a write."""

    async def require_dag_runs_read(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
    ) -> None:
        from airflow.api_fastapi.app import get_auth_manager
        from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
        from airflow.api_fastapi.core_api.security import get_user

        if request.method != "GET":
            raise HTTPException(
                status.HTTP_405_METHOD_NOT_ALLOWED,
                detail=f"method {request.method} is not allowed: the runs of DAG {dag_id!r} are shown read-only (GET)",
                headers={"Allow": "GET"},
            )
        user = await get_user(request, None, credentials)
        details = DagDetails(id=dag_id)
        if not get_auth_manager().is_authorized_dag(
            method="GET", access_entity=DagAccessEntity.RUN, details=details, user=user
        ):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"user {user.get_name()!r} may not read the runs of DAG {dag_id!r}; ask an Airflow admin",
            )

    return require_dag_runs_read
