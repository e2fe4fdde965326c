"""The release form's rules that need no running service: upper bounds and the asset event's precedence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from include.mlops import releasing
from include.mlops.errors import InvalidReleaseParams
from include.mlops.releasing import ReleaseParams


@pytest.mark.parametrize("value", [1e9, 20000, 601])
def test_an_interval_beyond_its_maximum_is_refused_naming_the_param_and_the_maximum(value: float) -> None:
    with pytest.raises(InvalidReleaseParams, match=rf"param interval_s={value!r}: must be <= 600 \(the maximum\)"):
        ReleaseParams(model_name="m", interval_s=value)


@pytest.mark.parametrize(
    ("param", "value", "maximum"),
    [
        ("ready_timeout_s", 3600, "600"),
        ("load_rps", 5000, "1000"),
        ("min_requests", 10**6, "100000"),
        ("max_extensions", 50, "10"),
        ("failure_limit", 1000, "100"),
        ("max_p99_latency_ratio", 1e6, "100"),
    ],
)
def test_every_numeric_param_has_a_maximum(param: str, value: float, maximum: str) -> None:
    with pytest.raises(InvalidReleaseParams, match=rf"param {param}=.*must be <= {maximum} \(the maximum\)"):
        ReleaseParams(model_name="m", **{param: value})


def test_too_many_steps_are_refused() -> None:
    with pytest.raises(InvalidReleaseParams, match=r"param steps_pct=.*at most 20 steps"):
        ReleaseParams(model_name="m", steps_pct=(*range(1, 23), 100))


def test_an_analysis_longer_than_the_bound_is_refused_even_when_each_param_is_within_its_own() -> None:
    with pytest.raises(InvalidReleaseParams, match=r"19 steps x \(1 \+ max_extensions 10\) x interval_s = 125400 s"):
        ReleaseParams(model_name="m", steps_pct=(*range(5, 96, 5), 100), interval_s=600, max_extensions=10)


def test_the_defaults_and_the_maxima_themselves_are_accepted() -> None:
    ReleaseParams(model_name="m")
    ReleaseParams(model_name="m", steps_pct=(50, 100), interval_s=600, max_extensions=10, ready_timeout_s=600)


@dataclass
class Event:  # the shape of Airflow's AssetEvent that the release reads: its extra
    extra: dict[str, Any] = field(default_factory=dict)


FORM_DEFAULTS = {"model_name": "fraud-detector", "version": "challenger", "interval_s": 20}


def test_an_asset_triggered_release_takes_the_model_and_version_from_the_event() -> None:
    events = {"model_challenger_ready": [Event({"model_name": "fraud-detector", "version": "7"})]}
    got = releasing.requested_params(FORM_DEFAULTS, explicit=set(), event=releasing.release_event(events))
    assert got["version"] == "7" and got["model_name"] == "fraud-detector"
    assert got["interval_s"] == 20


def test_the_newest_event_wins_when_several_are_queued() -> None:
    events = {"model_challenger_ready": [Event({"model_name": "a", "version": "3"}), Event({"version": "4"})]}
    assert releasing.release_event(events) == {"version": "4"}


def test_params_given_explicitly_win_over_the_event() -> None:
    event = {"model_name": "fraud-detector", "version": "7"}
    got = releasing.requested_params({**FORM_DEFAULTS, "version": "5"}, explicit={"version"}, event=event)
    assert got["version"] == "5"


def test_a_manual_run_without_events_keeps_the_form() -> None:
    assert releasing.release_event(None) is None and releasing.release_event({}) is None
    assert releasing.requested_params(FORM_DEFAULTS, explicit=set(), event=None) == FORM_DEFAULTS
    # an event without a version (not retrain's) changes nothing
    assert releasing.release_event({"x": [Event({"path": "/data/b.parquet"})]}) is None
