"""Statistics of one canary step: is the canary worse than the stable on errors, latency or predictions?

Pure functions over request samples (numpy/scipy only), unit-tested with known distributions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from include.mlops.errors import MlopsError

Verdict = Literal["pass", "fail", "inconclusive"]


class InvalidThresholds(MlopsError):
    """CanaryThresholds has a value outside its allowed range."""


@dataclass(frozen=True)
class CanaryThresholds:
    """Rules a canary step must keep. A rule fails only when the difference is also significant at alpha."""

    max_error_rate: float = 0.02  # canary 5xx fraction allowed (absolute)
    max_p99_latency_ratio: float = 1.5  # canary/stable latency factor, at p99 or at p50 (see analyse_canary_step)
    max_prediction_drift: float = 0.3  # Kolmogorov-Smirnov statistic between mean-prediction distributions
    min_requests: int = 30  # per side, below this a step is inconclusive
    alpha: float = 0.01  # significance level of the one-sided tests

    def __post_init__(self) -> None:
        checks = {
            "max_error_rate": 0.0 <= self.max_error_rate <= 1.0,
            "max_p99_latency_ratio": self.max_p99_latency_ratio >= 1.0,
            "max_prediction_drift": 0.0 < self.max_prediction_drift <= 1.0,
            "min_requests": self.min_requests >= 1,
            "alpha": 0.0 < self.alpha < 1.0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise InvalidThresholds(
                f"canary thresholds out of range: {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)} "
                "(error rate in [0,1], latency ratio >= 1, drift in (0,1], min_requests >= 1, alpha in (0,1))"
            )


@dataclass(frozen=True)
class Samples:
    """Requests one server answered: unix ts, handler latency (ms), HTTP status, mean prediction (None if not 2xx)."""

    ts: tuple[float, ...] = ()
    latency_ms: tuple[float, ...] = ()
    status: tuple[int, ...] = ()
    mean_prediction: tuple[float | None, ...] = ()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Samples:
        return cls(
            ts=tuple(d.get("ts", ())),
            latency_ms=tuple(d.get("latency_ms", ())),
            status=tuple(int(s) for s in d.get("status", ())),
            mean_prediction=tuple(d.get("mean_prediction", ())),
        )

    def __len__(self) -> int:
        return len(self.status)

    @property
    def n_errors(self) -> int:
        # 4xx are the caller's fault (malformed records): not the model's errors
        return sum(1 for s in self.status if s >= 500)

    @property
    def predictions(self) -> list[float]:
        return [p for p in self.mean_prediction if p is not None]


@dataclass(frozen=True)
class StepAnalysis:
    verdict: Verdict
    reasons: tuple[str, ...]
    n_stable: int
    n_canary: int
    error_rate_stable: float
    error_rate_canary: float
    error_p_value: float | None
    latency_p50_stable_ms: float | None
    latency_p99_stable_ms: float | None
    latency_p50_canary_ms: float | None
    latency_p99_canary_ms: float | None
    latency_p_value: float | None
    prediction_drift_ks: float | None
    prediction_drift_p_value: float | None
    weight_pct: int | None = None
    step_index: int | None = None
    extension: int = 0
    analysed_at_unix: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _pct(values: Sequence[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else None


def error_rate_p_value(err_canary: int, n_canary: int, err_stable: int, n_stable: int) -> float:
    """One-sided p-value that the canary's error rate is higher than the stable's.

    Fisher's exact test when any expected cell count is below 5 (the normal approximation
    is poor there), else a pooled two-proportion z-test.
    """
    from scipy import stats

    total_err = err_canary + err_stable
    total = n_canary + n_stable
    if total_err == 0:
        return 1.0
    expected = [
        n_canary * total_err / total,
        n_stable * total_err / total,
        n_canary * (total - total_err) / total,
        n_stable * (total - total_err) / total,
    ]
    if min(expected) < 5:
        table = [[err_canary, n_canary - err_canary], [err_stable, n_stable - err_stable]]
        return float(stats.fisher_exact(table, alternative="greater").pvalue)
    p1, p2 = err_canary / n_canary, err_stable / n_stable
    pooled = total_err / total
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_canary + 1 / n_stable))
    if se == 0:
        return 1.0 if p1 <= p2 else 0.0
    return float(stats.norm.sf((p1 - p2) / se))


def analyse_canary_step(stable: Samples, canary: Samples, thresholds: CanaryThresholds) -> StepAnalysis:
    """Compare one step's canary samples with the stable's; "inconclusive" below min_requests per side."""
    from scipy import stats

    n_s, n_c = len(stable), len(canary)
    err_s, err_c = stable.n_errors, canary.n_errors
    rate_s = err_s / n_s if n_s else 0.0
    rate_c = err_c / n_c if n_c else 0.0
    base: dict[str, Any] = {
        "n_stable": n_s,
        "n_canary": n_c,
        "error_rate_stable": rate_s,
        "error_rate_canary": rate_c,
        "latency_p50_stable_ms": _pct(stable.latency_ms, 50),
        "latency_p99_stable_ms": _pct(stable.latency_ms, 99),
        "latency_p50_canary_ms": _pct(canary.latency_ms, 50),
        "latency_p99_canary_ms": _pct(canary.latency_ms, 99),
    }
    if n_s < thresholds.min_requests or n_c < thresholds.min_requests:
        return StepAnalysis(
            verdict="inconclusive",
            reasons=(f"too few requests to judge: stable {n_s}, canary {n_c}, need {thresholds.min_requests} each",),
            error_p_value=None,
            latency_p_value=None,
            prediction_drift_ks=None,
            prediction_drift_p_value=None,
            **base,
        )

    reasons: list[str] = []
    err_p = error_rate_p_value(err_c, n_c, err_s, n_s)
    if rate_c > thresholds.max_error_rate and err_p < thresholds.alpha:
        reasons.append(
            f"canary error rate {rate_c:.1%} > max {thresholds.max_error_rate:.1%} "
            f"(stable {rate_s:.1%}, one-sided p={err_p:.2g})"
        )

    lat_p = float(stats.mannwhitneyu(canary.latency_ms, stable.latency_ms, alternative="greater").pvalue)
    p99_s, p99_c = base["latency_p99_stable_ms"], base["latency_p99_canary_ms"]
    assert p99_s is not None and p99_c is not None
    ratio = p99_c / p99_s if p99_s > 0 else math.inf
    p50_s, p50_c = base["latency_p50_stable_ms"], base["latency_p50_canary_ms"]
    assert p50_s is not None and p50_c is not None
    ratio_p50 = p50_c / p50_s if p50_s > 0 else math.inf
    # With tens of samples a p99 is nearly the max, and one scheduling hiccup on the stable hides
    # a slow canary; so the factor may be exceeded at the tail or at the median, provided the
    # canary is significantly slower overall (Mann-Whitney, one-sided).
    if lat_p < thresholds.alpha and max(ratio, ratio_p50) > thresholds.max_p99_latency_ratio:
        reasons.append(
            f"canary latency p99 {p99_c:.2f} ms / p50 {p50_c:.2f} ms is {ratio:.1f}x / {ratio_p50:.1f}x the "
            f"stable's {p99_s:.2f} / {p50_s:.2f} ms "
            f"(max {thresholds.max_p99_latency_ratio}x; Mann-Whitney p={lat_p:.2g})"
        )

    ks: float | None = None
    ks_p: float | None = None
    pred_s, pred_c = stable.predictions, canary.predictions
    if len(pred_s) >= thresholds.min_requests and len(pred_c) >= thresholds.min_requests:
        res = stats.ks_2samp(pred_c, pred_s)
        ks, ks_p = float(res.statistic), float(res.pvalue)
        if ks > thresholds.max_prediction_drift and ks_p < thresholds.alpha:
            reasons.append(
                f"prediction distribution drifted: KS {ks:.2f} > max {thresholds.max_prediction_drift} (p={ks_p:.2g})"
            )

    return StepAnalysis(
        verdict="fail" if reasons else "pass",
        reasons=tuple(reasons),
        error_p_value=err_p,
        latency_p_value=lat_p,
        prediction_drift_ks=ks,
        prediction_drift_p_value=ks_p,
        extra={"p99_latency_ratio": ratio, "p50_latency_ratio": ratio_p50},
        **base,
    )
