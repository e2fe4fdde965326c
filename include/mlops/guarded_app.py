"""A FastAPI app for a plugin view whose docs and schema sit behind the same auth as its routes.

FastAPI's own /docs and /openapi.json are plain routes that app-level dependencies do not guard:
they are switched off and served as API routes, behind the dependencies like every other route
(app level, so a route added later cannot ship unguarded). Used by the router and history plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI


def guarded_app(title: str, description: str, dependencies: Sequence[Callable[..., Any]]) -> FastAPI:
    from fastapi import Depends, FastAPI
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse

    app = FastAPI(
        title=title,
        description=description,
        dependencies=[Depends(d) for d in dependencies],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.get("/openapi.json", include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs() -> HTMLResponse:
        # relative: the app is mounted under a prefix (/resource-router, ...) the app does not know
        return get_swagger_ui_html(openapi_url="openapi.json", title=f"{title} API")

    return app
