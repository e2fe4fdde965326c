"""HTTP API and page of the release history, mounted by the Airflow plugin under /release-history.

``GET /releases`` (paginated, newest first, ``model`` and ``outcome`` filters), ``GET /releases/{run_id}``,
``GET /releases/{run_id}/canary.png``; ``/ui`` (the history page) and ``/ui/runs/{run_id}`` (the per-run
tab of a release run). Built by ``create_app``: the plugin passes the sources and Airflow's auth;
every route, pages and OpenAPI included, sits behind ``dependencies``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from include.mlops.errors import InvalidHistoryQuery, MlopsError
from include.mlops.guarded_app import guarded_app
from include.mlops.history.query import MAX_PER_PAGE, HistoryQuery, Urls, VersionSource, history_page, record_of
from include.mlops.history.records import ReleaseRunFacts

if TYPE_CHECKING:
    from fastapi import FastAPI

PAGE_PATH = Path(__file__).with_name("page.html")


class PlotSource(VersionSource, Protocol):
    def plot(self, name: str, version: str) -> bytes | None: ...


@dataclass(frozen=True)
class HistorySources:
    """Where a request's facts come from; each callable is called per request (nothing is kept)."""

    runs: Callable[[], Sequence[ReleaseRunFacts]]
    versions: Callable[[], PlotSource]
    urls: Callable[[], Urls]
    metrics: Callable[[], str] | None = None  # the pipeline's metrics in Prometheus' text format


def create_app(sources: HistorySources, *, dependencies: Sequence[Callable[..., Any]] = ()) -> FastAPI:
    from fastapi import HTTPException, Query
    from fastapi.responses import HTMLResponse, Response

    app = guarded_app(
        "Release history",
        "One record per release of the release DAG: what was released, what it was made from, "
        "what the canary measured, the verdict and why. Read from Airflow and MLflow on each request.",
        dependencies,
    )

    @app.get("/releases")
    def releases(
        model: str | None = Query(None, description="Registered model name"),
        outcome: str | None = Query(None, description="promoted, rolled-back, failed, refused, ..."),
        page: int = Query(1, description="1-based page number"),
        per_page: int = Query(20, description=f"Records per page (at most {MAX_PER_PAGE})"),
    ) -> dict[str, Any]:
        """Release records, newest first."""
        try:
            query = HistoryQuery(model=model, outcome=outcome, page=page, per_page=per_page)
        except InvalidHistoryQuery as e:
            raise HTTPException(422, detail=str(e)) from e
        return history_page(sources.runs(), query, sources.versions(), sources.urls())

    def _run(run_id: str) -> ReleaseRunFacts:
        for run in sources.runs():
            if run.run_id == run_id:
                return run
        raise HTTPException(404, detail=f"no release run {run_id!r}")

    @app.get("/releases/{run_id}")
    def release(run_id: str) -> dict[str, Any]:
        """One release run's record."""
        return record_of(_run(run_id), sources.versions(), sources.urls()).to_dict()

    @app.get("/releases/{run_id}/canary.png", response_class=Response)
    def canary_plot(run_id: str) -> Response:
        """The canary analysis plot of the run's version (from its MLflow run)."""
        run = _run(run_id)
        if not (run.model_name and run.version and run.version.isdigit()):
            raise HTTPException(404, detail=f"release run {run_id!r} resolved no model version")
        try:
            png = sources.versions().plot(run.model_name, run.version)
        except MlopsError as e:
            raise HTTPException(503, detail=str(e)) from e
        if png is None:
            raise HTTPException(404, detail=f"v{run.version} of {run.model_name!r} has no canary plot")
        return Response(png, media_type="image/png")

    @app.get("/metrics", response_class=Response)
    def metrics() -> Response:
        """The pipeline's outcomes for Prometheus (releases by outcome, last successful retrain, validation
        failures, serving version, canary weight), derived from the same facts on each scrape."""
        if sources.metrics is None:
            raise HTTPException(404, detail="no pipeline metrics configured")
        return Response(sources.metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/ui", include_in_schema=False, response_class=HTMLResponse)
    def page() -> HTMLResponse:
        # relative URLs: the app is mounted under a prefix (/release-history) it does not know
        return HTMLResponse(PAGE_PATH.read_text().replace("__API__", ".").replace("__RUN_ID__", ""))

    @app.get("/ui/runs/{run_id}", include_in_schema=False, response_class=HTMLResponse)
    def run_page(run_id: str, dag_id: str | None = None) -> HTMLResponse:
        import html

        # Airflow shows the tab on every DAG's runs: say plainly when there is no record to show
        if not any(r.run_id == run_id for r in sources.runs()):
            what = f"DAG {dag_id!r}" if dag_id else "this DAG"
            return HTMLResponse(
                f"<!doctype html><meta charset=utf-8><p style='font:14px system-ui'>No release record: run "
                f"{html.escape(run_id)} of {html.escape(what)} is not a run of the release DAG.</p>",
                status_code=404,
            )
        # the run id lands in an HTML attribute (read by the script), escaped for it
        page = PAGE_PATH.read_text().replace("__API__", "../..").replace("__RUN_ID__", html.escape(run_id, quote=True))
        return HTMLResponse(page)

    return app
