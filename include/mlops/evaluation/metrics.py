"""Binary-classification metrics for fraud probabilities, numpy only.

Training (in its own environment) and evaluation (in Airflow's) both call
binary_metrics, so the numbers logged during training and those used by the gate agree.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# Probabilities are clipped before the log so a confident wrong prediction costs a
# large but finite loss (same idea as scikit-learn's eps clipping).
LOG_LOSS_EPS = 1e-15
DECISION_THRESHOLD = 0.5


def roc_auc(y_true: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U) formula, ties at half.

    Returns NaN when y_true holds only one class (the AUC is undefined there).
    """
    import numpy as np

    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(p, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # Average rank (1-based) over each run of equal scores, so tied pairs count 1/2.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def binary_metrics(y_true: np.ndarray, p: np.ndarray, threshold: float = DECISION_THRESHOLD) -> dict[str, float]:
    """auc, log_loss, accuracy, precision, recall, f1 (at `threshold`), n and n_positive.

    precision (recall, f1) is 0.0 when nothing is predicted (present) positive, like
    scikit-learn's zero_division=0. Raises ValueError on empty or mismatched inputs.
    """
    import numpy as np

    y = np.asarray(y_true).astype(bool).ravel()
    prob = np.asarray(p, dtype=np.float64).ravel()
    if y.size == 0:
        raise ValueError("binary_metrics: no rows to score")
    if y.size != prob.size:
        raise ValueError(f"binary_metrics: {y.size} labels but {prob.size} probabilities")
    if not np.all(np.isfinite(prob)):
        raise ValueError("binary_metrics: probabilities contain NaN or inf")
    clipped = np.clip(prob, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    log_loss = -np.mean(np.where(y, np.log(clipped), np.log1p(-clipped)))
    pred = prob >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "auc": roc_auc(y, prob),
        "log_loss": float(log_loss),
        "accuracy": float(np.mean(pred == y)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "n": int(y.size),
        "n_positive": int(y.sum()),
    }


@dataclass(frozen=True)
class HoldoutMetrics:
    """A model's scores on the deterministic holdout of one batch (threshold 0.5)."""

    auc: float
    log_loss: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    n_holdout: int
    n_positive: int

    @classmethod
    def from_predictions(cls, y_true: np.ndarray, p: np.ndarray) -> HoldoutMetrics:
        m = binary_metrics(y_true, p)
        n = m.pop("n")
        return cls(n_holdout=int(n), **m)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HoldoutMetrics:
        auc = data["auc"]
        return cls(
            auc=float("nan") if auc is None else float(auc),
            log_loss=float(data["log_loss"]),
            accuracy=float(data["accuracy"]),
            precision=float(data["precision"]),
            recall=float(data["recall"]),
            f1=float(data["f1"]),
            n_holdout=int(data["n_holdout"]),
            n_positive=int(data["n_positive"]),
        )

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-safe: an undefined AUC (one-class holdout) becomes null, not NaN."""
        d: dict[str, float | int | None] = dict(asdict(self))
        if math.isnan(self.auc):
            d["auc"] = None
        return d
