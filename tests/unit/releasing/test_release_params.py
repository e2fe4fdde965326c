"""The release form's rules that need no running service: upper bounds and the asset event's precedence."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from include.mlops import releasing
from include.mlops.errors import InvalidReleaseParams
from include.mlops.release_params import ReleaseParams


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


# --- every rule of the form at its boundary: the value just inside is accepted, just outside refused,
# with a message naming the param, its value and the rule


def _refused(message: str, **params: Any) -> None:
    with pytest.raises(InvalidReleaseParams) as exc:
        ReleaseParams(**{"model_name": "m", **params})
    assert str(exc.value) == message


@pytest.mark.parametrize("name", ["", "   "])
def test_a_blank_model_name_is_refused(name: str) -> None:
    _refused(f"param model_name={name!r}: must name a registered model", model_name=name)


@pytest.mark.parametrize("version", ["", "  "])
def test_a_blank_version_is_refused(version: str) -> None:
    _refused(f"param version={version!r}: must be a version number or an alias such as 'challenger'", version=version)


def test_steps_need_at_least_one() -> None:
    _refused("param steps_pct=(): needs at least one step", steps_pct=())


@pytest.mark.parametrize("steps", [(0, 100), (10, 101), (True, 100), (10.0, 100), (-5, 100)])
def test_each_step_is_an_integer_from_1_to_100(steps: tuple[Any, ...]) -> None:
    _refused(f"param steps_pct={steps!r}: every step must be an integer in 1..100", steps_pct=steps)


@pytest.mark.parametrize("steps", [(50, 50, 100), (50, 25, 100), (10, 100, 100)])
def test_steps_must_strictly_increase(steps: tuple[int, ...]) -> None:
    _refused(f"param steps_pct={steps!r}: weights must be strictly increasing", steps_pct=steps)


def test_the_last_step_must_be_100() -> None:
    _refused(
        "param steps_pct=(10, 50): the last step must be 100 (the canary takes all traffic when promoted)",
        steps_pct=(10, 50),
    )


def test_twenty_steps_are_accepted_twenty_one_refused() -> None:
    assert len(ReleaseParams(model_name="m", steps_pct=(*range(1, 20), 100)).steps_pct) == 20
    steps = (*range(1, 21), 100)
    _refused(f"param steps_pct={steps!r}: at most 20 steps", steps_pct=steps)


def test_the_smallest_valid_steps() -> None:
    p = ReleaseParams(model_name="m", steps_pct=(1, 100))
    assert p.analysis_steps == (1,)
    assert ReleaseParams(model_name="m", steps_pct=(100,)).analysis_steps == ()
    assert ReleaseParams(model_name="m").analysis_steps == (10, 25, 50)


@pytest.mark.parametrize("param", ["interval_s", "ready_timeout_s", "load_rps"])
@pytest.mark.parametrize("value", [0, 0.0, -1.0, float("inf"), float("nan"), "20"])
def test_durations_and_rates_must_be_finite_positive_numbers(param: str, value: Any) -> None:
    _refused(f"param {param}={value!r}: must be a number > 0", **{param: value})


@pytest.mark.parametrize("param", ["interval_s", "ready_timeout_s", "load_rps"])
def test_durations_and_rates_just_above_zero_are_accepted(param: str) -> None:
    assert getattr(ReleaseParams(model_name="m", **{param: 0.001}), param) == 0.001
    assert getattr(ReleaseParams(model_name="m", **{param: 1}), param) == 1


@pytest.mark.parametrize("param", ["min_requests", "failure_limit"])
def test_counts_must_be_at_least_one(param: str) -> None:
    _refused(f"param {param}=0: must be >= 1", **{param: 0})
    assert getattr(ReleaseParams(model_name="m", **{param: 1}), param) == 1


def test_max_extensions_may_be_zero_not_negative() -> None:
    _refused("param max_extensions=-1: must be >= 0", max_extensions=-1)
    assert ReleaseParams(model_name="m", max_extensions=0).max_extensions == 0


def test_max_error_rate_is_a_fraction_ends_included() -> None:
    for v in (-0.01, 1.01):
        _refused(f"param max_error_rate={v!r}: must be in 0..1", max_error_rate=v)
    for v in (0.0, 1.0):
        assert ReleaseParams(model_name="m", max_error_rate=v).max_error_rate == v


def test_max_latency_ratio_is_at_least_one() -> None:
    _refused(
        "param max_p99_latency_ratio=0.99: must be >= 1 (canary may be at most this many times slower)",
        max_p99_latency_ratio=0.99,
    )
    assert ReleaseParams(model_name="m", max_p99_latency_ratio=1.0).max_p99_latency_ratio == 1.0


def test_max_prediction_drift_is_in_zero_exclusive_to_one_inclusive() -> None:
    for v in (0.0, 1.01):
        _refused(
            f"param max_prediction_drift={v!r}: must be in (0, 1] (Kolmogorov-Smirnov statistic)",
            max_prediction_drift=v,
        )
    assert ReleaseParams(model_name="m", max_prediction_drift=1.0).max_prediction_drift == 1.0


@pytest.mark.parametrize(
    ("param", "maximum", "above"),
    [
        ("interval_s", 600, 600.5),
        ("ready_timeout_s", 600, 600.5),
        ("load_rps", 1000, 1000.5),
        ("min_requests", 100_000, 100_001),
        ("max_extensions", 10, 11),
        ("failure_limit", 100, 101),
        ("max_p99_latency_ratio", 100, 100.5),
    ],
)
def test_each_maximum_is_accepted_and_one_step_above_refused(param: str, maximum: float, above: float) -> None:
    # one analysis step of 600 s with 10 extensions is 6,600 s: within the bound on the whole analysis
    base = {"steps_pct": (50, 100)}
    assert getattr(ReleaseParams(model_name="m", **{**base, param: maximum}), param) == maximum
    _refused(f"param {param}={above!r}: must be <= {maximum} (the maximum)", **{**base, param: above})


def test_the_whole_analysis_may_last_exactly_two_hours_not_more() -> None:
    # 4 analysed steps x (1 + 2 extensions) x 600 s = 7,200 s: the bound itself
    ok = ReleaseParams(model_name="m", steps_pct=(10, 20, 30, 40, 100), interval_s=600)
    assert ok.analysis_steps == (10, 20, 30, 40)
    # 3 extensions: 4 x 4 x 600 = 9,600 s
    _refused(
        "param interval_s=600: the analysis could last 4 steps x (1 + max_extensions 3) x interval_s = 9600 s, "
        "more than the maximum 7200 s",
        steps_pct=(10, 20, 30, 40, 100),
        interval_s=600,
        max_extensions=3,
    )
    # the final 100 % is not analysed: 5 steps listed, 4 counted
    ReleaseParams(model_name="m", steps_pct=(10, 20, 30, 40, 100), interval_s=600, max_extensions=2)


def test_the_defaults() -> None:
    p = ReleaseParams(model_name="m")
    assert (p.version, p.steps_pct, p.interval_s, p.min_requests, p.max_extensions, p.failure_limit) == (
        "challenger",
        (10, 25, 50, 100),
        20.0,
        30,
        2,
        3,
    )
    assert (p.max_error_rate, p.max_p99_latency_ratio, p.max_prediction_drift, p.ready_timeout_s, p.load_rps) == (
        0.02,
        1.5,
        0.3,
        60.0,
        20.0,
    )
    assert not (p.require_approval or p.allow_gate_rejected or p.dry_run or p.reset_serving_state)


def test_from_params_ignores_unknown_keys_and_normalises_lists_and_numbers() -> None:
    p = ReleaseParams.from_params({"model_name": "m", "version": 7, "steps_pct": [20, 100], "unknown": 1})
    assert p.version == "7" and p.steps_pct == (20, 100)
    assert ReleaseParams.from_params({"model_name": "m"}) == ReleaseParams(model_name="m")


def test_from_params_without_a_model_name_names_the_missing_param() -> None:
    with pytest.raises(
        InvalidReleaseParams, match=r"^release params: .*missing 1 required positional argument: 'model_name'"
    ):
        ReleaseParams.from_params({"version": "3"})


def test_from_params_validates_like_the_constructor() -> None:
    with pytest.raises(InvalidReleaseParams, match=r"^param steps_pct=\(10, 50\): the last step must be 100"):
        ReleaseParams.from_params({"model_name": "m", "steps_pct": [10, 50]})


def test_the_canary_thresholds_come_from_the_form() -> None:
    th = ReleaseParams(
        model_name="m", max_error_rate=0.05, max_p99_latency_ratio=2.0, max_prediction_drift=0.4, min_requests=50
    ).thresholds()
    assert (th.max_error_rate, th.max_p99_latency_ratio, th.max_prediction_drift, th.min_requests) == (
        0.05,
        2.0,
        0.4,
        50,
    )
    assert th.alpha == 0.01  # not a release param: the analysis' default
