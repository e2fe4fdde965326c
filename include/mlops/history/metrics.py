"""The pipeline's own outcomes as Prometheus metrics, computed from the same facts as the history.

Served at /release-history/metrics (behind Airflow's auth; Prometheus scrapes it with a bearer
token). Every value is derived on each scrape from Airflow's runs and MLflow's aliases: counts are
gauges over the runs Airflow still holds, not process counters that restart at zero.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from include.mlops.history.records import ReleaseRunFacts, outcome_of


@dataclass(frozen=True)
class RetrainFacts:
    """What Airflow knows about the retrain DAG's runs, summed up."""

    last_success_end: dt.datetime | None
    failed_runs: int
    validation_failures: int  # runs whose validate_data task failed


@dataclass(frozen=True)
class ServingFacts:
    """Per model: the version MLflow names champion, and the canary's current weight (0 without one)."""

    champion_version: str | None
    canary_weight_pct: int | None


def _labels(**labels: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in labels.items()) + "}" if labels else ""


def pipeline_metrics(
    releases: Sequence[ReleaseRunFacts], retrain: RetrainFacts, serving: Mapping[str, ServingFacts]
) -> str:
    """Prometheus text exposition (format 0.0.4) of the pipeline's outcomes."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])
        lines.extend(f"{name}{_labels(**labels)} {float(value)!r}" for labels, value in samples)

    counts = Counter((r.model_name or "unknown", outcome_of(r)) for r in releases)
    metric(
        "mlops_releases",
        "gauge",
        "Release runs Airflow holds, by model and outcome",
        [({"model": m, "outcome": o}, float(n)) for (m, o), n in sorted(counts.items())],
    )
    last: dict[tuple[str, str], float] = {}
    for r in releases:
        when = r.end or r.start
        if when is not None:
            key = (r.model_name or "unknown", outcome_of(r))
            last[key] = max(last.get(key, 0.0), when.timestamp())
    metric(
        "mlops_release_last_timestamp_seconds",
        "gauge",
        "When the latest release run of each model and outcome ended (or started, while running)",
        [({"model": m, "outcome": o}, t) for (m, o), t in sorted(last.items())],
    )
    awaiting = Counter(r.model_name or "unknown" for r in releases if outcome_of(r) == "awaiting-approval")
    metric(
        "mlops_release_awaiting_approval",
        "gauge",
        "Release runs waiting for a human approval, per model",
        [({"model": m}, float(awaiting.get(m, 0))) for m in sorted(serving) or sorted(awaiting)],
    )
    if retrain.last_success_end is not None:
        metric(
            "mlops_retrain_last_success_timestamp_seconds",
            "gauge",
            "When the latest successful retrain run ended",
            [({}, retrain.last_success_end.timestamp())],
        )
    metric("mlops_retrain_failed_runs", "gauge", "Failed retrain runs Airflow holds", [({}, retrain.failed_runs)])
    metric(
        "mlops_validation_failures",
        "gauge",
        "Retrain runs whose data validation failed",
        [({}, retrain.validation_failures)],
    )
    metric(
        "mlops_serving_version",
        "gauge",
        "The model version MLflow names champion (the one serving as stable)",
        [({"model": m}, float(f.champion_version)) for m, f in sorted(serving.items()) if f.champion_version],
    )
    metric(
        "mlops_canary_weight_percent",
        "gauge",
        "The canary's share of traffic now (0 without a canary)",
        [
            ({"model": m}, float(f.canary_weight_pct))
            for m, f in sorted(serving.items())
            if f.canary_weight_pct is not None
        ],
    )
    return "\n".join(lines) + "\n"
