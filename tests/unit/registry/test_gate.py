"""Gate logic: the challenger must beat the champion by the configured margin on the same holdout."""

from __future__ import annotations

import math

import pytest

from include.mlops.errors import SettingsError
from include.mlops.registry.gate import decide_promotion


def test_first_model_passes_as_champion_candidate() -> None:
    d = decide_promotion("auc", {"auc": 0.7}, None, 0.01)
    assert d.passed and d.champion_value is None and "first model" in d.reason


def test_challenger_must_improve_by_the_margin() -> None:
    assert decide_promotion("auc", {"auc": 0.905}, {"auc": 0.90}, 0.0).passed
    rejected = decide_promotion("auc", {"auc": 0.905}, {"auc": 0.90}, 0.01)
    assert not rejected.passed
    assert rejected.improvement == pytest.approx(0.005)
    assert "does not beat" in rejected.reason and "0.9050" in rejected.reason


def test_lower_is_better_for_log_loss() -> None:
    assert decide_promotion("log_loss", {"log_loss": 0.20}, {"log_loss": 0.25}, 0.01).passed
    assert not decide_promotion("log_loss", {"log_loss": 0.30}, {"log_loss": 0.25}, 0.0).passed


def test_nan_metric_never_passes() -> None:
    d = decide_promotion("auc", {"auc": math.nan}, None, 0.0)
    assert not d.passed


def test_tags_carry_decision_and_numbers() -> None:
    tags = decide_promotion("auc", {"auc": 0.8}, {"auc": 0.9}, 0.0).as_tags()
    assert tags["gate.decision"] == "rejected" and tags["gate.champion_value"] == "0.900000"


@pytest.mark.parametrize(("metric", "margin"), [("precision@k", 0.0), ("auc", -0.1), ("auc", math.inf)])
def test_bad_gate_params_are_rejected(metric: str, margin: float) -> None:
    with pytest.raises(SettingsError):
        decide_promotion(metric, {"auc": 0.9}, None, margin)


def test_undefined_challenger_auc_is_rejected_but_undefined_champion_auc_is_not_a_blocker() -> None:
    assert not decide_promotion("auc", {"auc": None}, {"auc": 0.9}, 0.0).passed  # type: ignore[dict-item]
    d = decide_promotion("auc", {"auc": 0.8}, {"auc": None}, 0.0)  # type: ignore[dict-item]
    assert d.passed and "undefined" in d.reason
