"""Filter, order and page release runs, then assemble the page's records with their MLflow facts.

Filtering uses Airflow's facts only (model name from the run's plan, outcome from task states), so
MLflow is asked only about the versions on the page asked for.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from include.mlops.errors import InvalidHistoryQuery, MlopsError
from include.mlops.history.records import OUTCOMES, ReleaseRecord, ReleaseRunFacts, VersionFacts, assemble, outcome_of

MAX_PER_PAGE = 100
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class VersionSource(Protocol):
    def version(self, name: str, version: str) -> VersionFacts | None: ...


@dataclass(frozen=True)
class HistoryQuery:
    model: str | None = None
    outcome: str | None = None
    page: int = 1
    per_page: int = 20

    def __post_init__(self) -> None:
        if self.outcome is not None and self.outcome not in OUTCOMES:
            raise InvalidHistoryQuery(f"param outcome={self.outcome!r}: must be one of {', '.join(OUTCOMES)}")
        if self.page < 1:
            raise InvalidHistoryQuery(f"param page={self.page}: must be 1 or more")
        if not 1 <= self.per_page <= MAX_PER_PAGE:
            raise InvalidHistoryQuery(f"param per_page={self.per_page}: must be between 1 and {MAX_PER_PAGE}")
        if self.model is not None and not self.model.strip():
            raise InvalidHistoryQuery(f"param model={self.model!r}: must not be blank (leave it out for every model)")


@dataclass(frozen=True)
class Urls:
    airflow_ui: str
    mlflow_ui: str | None
    api_prefix: str


def newest_first(runs: Sequence[ReleaseRunFacts]) -> list[ReleaseRunFacts]:
    return sorted(runs, key=lambda r: (r.start or r.queued_at or _EPOCH, r.run_id), reverse=True)


def record_of(run: ReleaseRunFacts, versions: VersionSource, urls: Urls) -> ReleaseRecord:
    """The run's record; when MLflow cannot tell, the record says so and keeps Airflow's facts."""
    facts: VersionFacts | None = None
    missing: tuple[str, ...] = ()
    if run.model_name and run.version and run.version.isdigit():
        try:
            facts = versions.version(run.model_name, run.version)
            if facts is None:
                missing = (f"MLflow has no version {run.version} of {run.model_name!r}",)
        except MlopsError as e:
            missing = (f"MLflow facts unavailable: {e}",)
    return assemble(
        run, facts, airflow_ui=urls.airflow_ui, mlflow_ui=urls.mlflow_ui, api_prefix=urls.api_prefix, missing=missing
    )


def history_page(
    runs: Sequence[ReleaseRunFacts], query: HistoryQuery, versions: VersionSource, urls: Urls
) -> dict[str, Any]:
    """One page of records, newest first, with the totals and the filter values that exist."""
    ordered = newest_first(runs)
    chosen = [
        r
        for r in ordered
        if (query.model is None or r.model_name == query.model)
        and (query.outcome is None or outcome_of(r) == query.outcome)
    ]
    start = (query.page - 1) * query.per_page
    page = chosen[start : start + query.per_page]
    return {
        "releases": [record_of(r, versions, urls).to_dict() for r in page],
        "page": query.page,
        "per_page": query.per_page,
        "total": len(chosen),
        "pages": max(1, -(-len(chosen) // query.per_page)),
        "filters": {"model": query.model, "outcome": query.outcome},
        "models": sorted({r.model_name for r in ordered if r.model_name}),
        "outcomes": list(OUTCOMES),
    }
