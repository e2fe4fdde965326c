"""binary_metrics against hand-computed values and a brute-force pairwise AUC."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.mlops.evaluation.metrics import HoldoutMetrics, binary_metrics, roc_auc


def _pairwise_auc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def test_hand_computed_example() -> None:
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.6, 0.35, 0.8, 0.7, 0.2])
    m = binary_metrics(y, p)
    # Positive/negative pairs ranked right: 0.35>{0.1,0.2}, 0.8>all 3, 0.7>all 3 -> 8 of 9.
    assert m["auc"] == pytest.approx(8 / 9)
    # Predicted positive at 0.5: 0.6 (neg), 0.8, 0.7 -> tp=2 fp=1 fn=1 tn=2.
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    expected_ll = -np.mean(np.log([0.9, 0.4, 0.35, 0.8, 0.7, 0.8]))
    assert m["log_loss"] == pytest.approx(expected_ll)
    assert (m["n"], m["n_positive"]) == (6, 3)


def test_ties_count_half_and_constant_scores_give_half() -> None:
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert roc_auc(np.array([0, 1, 1, 0]), np.array([0.3, 0.3, 0.9, 0.1])) == pytest.approx(
        _pairwise_auc(np.array([0, 1, 1, 0]), np.array([0.3, 0.3, 0.9, 0.1]))
    )
    assert roc_auc(np.array([1, 0, 1, 0]), np.full(4, 0.2)) == 0.5


def test_perfect_and_inverted_rankings() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0


def test_one_class_gives_nan_auc_and_zero_division_gives_zero() -> None:
    m = binary_metrics(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]))
    assert math.isnan(m["auc"])
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"]) == (0.0, 0.0, 0.0, 1.0)


def test_confident_wrong_prediction_has_finite_log_loss() -> None:
    m = binary_metrics(np.array([1, 0]), np.array([0.0, 1.0]))
    assert math.isfinite(m["log_loss"]) and m["log_loss"] > 30


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="no rows"):
        binary_metrics(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="3 labels but 2"):
        binary_metrics(np.array([0, 1, 0]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics(np.array([0, 1]), np.array([0.1, np.nan]))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0])),
        min_size=2,
        max_size=40,
    )
)
def test_rank_auc_equals_pairwise_definition(rows: list[tuple[bool, float]]) -> None:
    y = np.array([r[0] for r in rows], dtype=int)
    p = np.array([r[1] for r in rows])
    if y.min() == y.max():
        assert math.isnan(roc_auc(y, p))
    else:
        assert roc_auc(y, p) == pytest.approx(_pairwise_auc(y, p), abs=1e-12)


def test_holdout_metrics_to_dict_is_json_safe_and_round_trips() -> None:
    hm = HoldoutMetrics.from_predictions(np.zeros(3), np.array([0.1, 0.2, 0.9]))
    d = hm.to_dict()
    assert d["auc"] is None and d["n_holdout"] == 3 and d["n_positive"] == 0
    back = HoldoutMetrics.from_dict(d)
    assert math.isnan(back.auc) and back.accuracy == pytest.approx(2 / 3)
