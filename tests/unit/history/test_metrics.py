"""The pipeline's Prometheus metrics from the history's facts, parsed back with prometheus_client."""

from __future__ import annotations

import datetime as dt

from prometheus_client.parser import text_string_to_metric_families

from include.mlops.history.metrics import RetrainFacts, ServingFacts, pipeline_metrics
from tests.unit.history.test_records import PLAN, T0, _run, _task


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_releases_by_outcome_and_report_retrain_and_serving() -> None:
    rolled = {"analyse": _task("failed"), "rollback": _task("failed", 5)}
    runs = [
        _run(run_id="a"),
        _run(run_id="b"),
        _run("failed", run_id="c", tasks=rolled),
        _run("running", run_id="d", tasks={"approve": _task("deferred")}, plan={**PLAN, "model_name": "churn"}),
    ]
    ok_at = T0 - dt.timedelta(days=2)
    text = pipeline_metrics(
        runs,
        RetrainFacts(last_success_end=ok_at, failed_runs=3, validation_failures=1),
        {"fraud": ServingFacts("7", 0), "churn": ServingFacts(None, 25)},
    )
    got = _samples(text)
    assert got[("mlops_releases", (("model", "fraud"), ("outcome", "promoted")))] == 2
    assert got[("mlops_releases", (("model", "fraud"), ("outcome", "rolled-back")))] == 1
    assert got[("mlops_releases", (("model", "churn"), ("outcome", "awaiting-approval")))] == 1
    assert got[("mlops_release_awaiting_approval", (("model", "churn"),))] == 1
    assert got[("mlops_release_awaiting_approval", (("model", "fraud"),))] == 0
    assert got[("mlops_retrain_last_success_timestamp_seconds", ())] == ok_at.timestamp()
    assert got[("mlops_retrain_failed_runs", ())] == 3 and got[("mlops_validation_failures", ())] == 1
    assert got[("mlops_serving_version", (("model", "fraud"),))] == 7
    assert ("mlops_serving_version", (("model", "churn"),)) not in got  # no champion: no sample, not 0
    assert got[("mlops_canary_weight_percent", (("model", "churn"),))] == 25


def test_no_successful_retrain_leaves_the_timestamp_out_so_absent_can_alert() -> None:
    text = pipeline_metrics([], RetrainFacts(None, 2, 0), {})
    assert "mlops_retrain_last_success_timestamp_seconds" not in text
    assert _samples(text)[("mlops_retrain_failed_runs", ())] == 2
