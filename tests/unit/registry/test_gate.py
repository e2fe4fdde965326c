"""Gate logic: the challenger must beat the champion by the configured margin on the same holdout.

Metric values are binary fractions (0.5, 0.625, 0.75, ...) so every difference is exact in floating
point: "exactly at the margin" really is equality, and the expected reasons are derived by hand.
"""

from __future__ import annotations

import math

import pytest

from include.mlops.errors import SettingsError
from include.mlops.registry.gate import GATE_METRICS, GateDecision, decide_promotion

HIGHER_IS_BETTER = ["auc", "f1", "accuracy"]


def test_first_model_passes_as_champion_candidate() -> None:
    d = decide_promotion("f1", {"f1": 0.75}, None, min_improvement=0.25)
    assert d == GateDecision(
        True, "f1", 0.75, None, 0.25, None, "no champion yet: first model is the champion candidate"
    )


@pytest.mark.parametrize("metric", HIGHER_IS_BETTER)
def test_higher_is_better_metric_passes_at_exactly_the_margin(metric: str) -> None:
    d = decide_promotion(metric, {metric: 0.75}, {metric: 0.5}, min_improvement=0.25)
    reason = f"challenger {metric}=0.7500 beats champion {metric}=0.5000 by the required 0.2500 (improvement +0.2500)"
    assert d == GateDecision(True, metric, 0.75, 0.5, 0.25, 0.25, reason)


@pytest.mark.parametrize("metric", HIGHER_IS_BETTER)
def test_higher_is_better_metric_just_below_the_margin_is_rejected(metric: str) -> None:
    d = decide_promotion(metric, {metric: 0.625}, {metric: 0.5}, min_improvement=0.25)
    reason = (
        f"challenger {metric}=0.6250 does not beat champion {metric}=0.5000 by the required 0.2500 "
        "(improvement +0.1250)"
    )
    assert d == GateDecision(False, metric, 0.625, 0.5, 0.25, 0.125, reason)


@pytest.mark.parametrize("metric", HIGHER_IS_BETTER)
def test_higher_is_better_metric_above_the_margin_passes(metric: str) -> None:
    d = decide_promotion(metric, {metric: 0.875}, {metric: 0.5}, min_improvement=0.25)
    assert d.passed and d.improvement == 0.375


@pytest.mark.parametrize("metric", HIGHER_IS_BETTER)
def test_a_lower_value_of_a_higher_is_better_metric_is_a_negative_improvement(metric: str) -> None:
    d = decide_promotion(metric, {metric: 0.5}, {metric: 0.75}, min_improvement=0.0)
    assert not d.passed and d.improvement == -0.25
    assert d.reason.endswith("(improvement -0.2500)")


def test_lower_is_better_for_log_loss_at_below_and_above_the_margin() -> None:
    at = decide_promotion("log_loss", {"log_loss": 0.5}, {"log_loss": 0.75}, min_improvement=0.25)
    assert at == GateDecision(
        True, "log_loss", 0.5, 0.75, 0.25, 0.25,
        "challenger log_loss=0.5000 beats champion log_loss=0.7500 by the required 0.2500 (improvement +0.2500)",
    )  # fmt: skip
    below = decide_promotion("log_loss", {"log_loss": 0.625}, {"log_loss": 0.75}, min_improvement=0.25)
    assert not below.passed and below.improvement == 0.125
    above = decide_promotion("log_loss", {"log_loss": 0.375}, {"log_loss": 0.75}, min_improvement=0.25)
    assert above.passed and above.improvement == 0.375
    worse = decide_promotion("log_loss", {"log_loss": 1.0}, {"log_loss": 0.75}, min_improvement=0.0)
    assert not worse.passed and worse.improvement == -0.25


def test_with_a_zero_margin_a_tie_passes() -> None:
    d = decide_promotion("auc", {"auc": 0.75}, {"auc": 0.75}, min_improvement=0.0)
    assert d.passed and d.improvement == 0.0


def test_metric_directions_are_the_documented_ones() -> None:
    assert GATE_METRICS == {"auc": True, "f1": True, "accuracy": True, "log_loss": False}


@pytest.mark.parametrize(("raw", "shown"), [(math.nan, "nan"), (None, "nan"), (math.inf, "inf"), (-math.inf, "-inf")])
def test_undefined_challenger_metric_never_passes_even_without_a_champion(raw: float | None, shown: str) -> None:
    for champion in (None, {"auc": 0.5}):
        d = decide_promotion("auc", {"auc": raw}, champion, min_improvement=0.0)  # type: ignore[dict-item]
        assert d.passed is False
        assert (d.metric, d.champion_value, d.min_improvement, d.improvement) == ("auc", None, 0.0, None)
        assert d.reason == f"challenger auc is {shown}"
        assert str(d.challenger_value) == shown


@pytest.mark.parametrize("champion", [{"auc": None}, {"auc": math.nan}, {"f1": 0.75}])
def test_undefined_champion_metric_is_not_a_blocker(champion: dict[str, float]) -> None:
    d = decide_promotion("auc", {"auc": 0.5}, champion, min_improvement=0.25)
    assert d == GateDecision(True, "auc", 0.5, None, 0.25, None, "champion auc is undefined on this holdout")


def test_tags_carry_decision_and_numbers() -> None:
    tags = decide_promotion("auc", {"auc": 0.625}, {"auc": 0.75}, min_improvement=0.0).as_tags()
    assert tags == {
        "gate.decision": "rejected",
        "gate.metric": "auc",
        "gate.challenger_value": "0.625000",
        "gate.champion_value": "0.750000",
        "gate.min_improvement": "0.000000",
        "gate.reason": "challenger auc=0.6250 does not beat champion auc=0.7500 by the required 0.0000 "
        "(improvement -0.1250)",
    }
    first = decide_promotion("log_loss", {"log_loss": 0.5}, None, min_improvement=0.25).as_tags()
    assert first["gate.decision"] == "passed" and first["gate.champion_value"] == "none"
    assert first["gate.min_improvement"] == "0.250000" and first["gate.metric"] == "log_loss"


def test_to_dict_has_every_field() -> None:
    assert decide_promotion("auc", {"auc": 0.75}, {"auc": 0.5}, min_improvement=0.25).to_dict() == {
        "passed": True,
        "metric": "auc",
        "challenger_value": 0.75,
        "champion_value": 0.5,
        "min_improvement": 0.25,
        "improvement": 0.25,
        "reason": "challenger auc=0.7500 beats champion auc=0.5000 by the required 0.2500 (improvement +0.2500)",
    }


@pytest.mark.parametrize(
    ("metric", "margin", "message"),
    [
        (
            "precision@k",
            0.0,
            r"param gate_metric='precision@k': must be one of \['accuracy', 'auc', 'f1', 'log_loss'\]",
        ),
        ("auc", -0.25, r"param gate_min_improvement=-0.25: must be a finite number >= 0"),
        ("auc", math.inf, r"param gate_min_improvement=inf: must be a finite number >= 0"),
        ("auc", math.nan, r"param gate_min_improvement=nan: must be a finite number >= 0"),
    ],
)
def test_bad_gate_params_are_rejected_naming_param_value_and_rule(metric: str, margin: float, message: str) -> None:
    with pytest.raises(SettingsError, match=f"^{message}$"):
        decide_promotion(metric, {"auc": 0.75}, None, min_improvement=margin)


def test_challenger_without_the_gate_metric_is_an_error_naming_what_it_has() -> None:
    with pytest.raises(SettingsError, match=r"^challenger metrics have no 'auc': got \['f1', 'log_loss'\]$"):
        decide_promotion("auc", {"log_loss": 0.5, "f1": 0.75}, {"auc": 0.5}, min_improvement=0.0)
