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
    # the allowed canary/stable latency factor: at the median, and times the stable's tail start
    # (the name predates the tail check and is kept for the release form's param of the same name)
    max_p99_latency_ratio: float = 1.5
    max_prediction_drift: float = 0.3  # Kolmogorov-Smirnov statistic between mean-prediction distributions
    min_requests: int = 30  # per side, below this a step is inconclusive
    alpha: float = 0.01  # significance level of the one-sided tests
    latency_tail_quantile: float = 0.95  # the tail starts at the stable's quantile q
    # the canary's share of requests above factor x the stable's tail start may exceed the
    # stable's own share above it by at most this much (absolute)
    max_slow_share_excess: float = 0.01

    def __post_init__(self) -> None:
        checks = {
            "max_error_rate": 0.0 <= self.max_error_rate <= 1.0,
            "max_p99_latency_ratio": self.max_p99_latency_ratio >= 1.0,
            "max_prediction_drift": 0.0 < self.max_prediction_drift <= 1.0,
            "min_requests": self.min_requests >= 1,
            "alpha": 0.0 < self.alpha < 1.0,
            "latency_tail_quantile": 0.5 <= self.latency_tail_quantile < 1.0,
            "max_slow_share_excess": 0.0 <= self.max_slow_share_excess < 1.0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise InvalidThresholds(
                f"canary thresholds out of range: {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)} "
                "(error rate in [0,1], latency ratio >= 1, drift in (0,1], min_requests >= 1, alpha in (0,1), "
                "tail quantile in [0.5,1), slow share excess in [0,1))"
            )


def _finite(p: float | None) -> bool:
    return p is not None and math.isfinite(p)


@dataclass(frozen=True)
class Samples:
    """Requests one server answered: unix ts, handler latency (ms), HTTP status, mean prediction (None if not 2xx),
    and whether the model's output was non-finite (NaN/inf; the server answers those with a 5xx).
    """

    ts: tuple[float, ...] = ()
    latency_ms: tuple[float, ...] = ()
    status: tuple[int, ...] = ()
    mean_prediction: tuple[float | None, ...] = ()
    non_finite: tuple[bool, ...] = ()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Samples:
        return cls(
            ts=tuple(d.get("ts", ())),
            latency_ms=tuple(d.get("latency_ms", ())),
            status=tuple(int(s) for s in d.get("status", ())),
            mean_prediction=tuple(d.get("mean_prediction", ())),
            non_finite=tuple(bool(x) for x in d.get("non_finite", ())),
        )

    def __len__(self) -> int:
        return len(self.status)

    def _ok_without_prediction(self) -> int:
        # a 2xx without a finite prediction: a server that let NaN through (JSON null), counted as an error
        return sum(
            1 for s, p in zip(self.status, self.mean_prediction, strict=False) if 200 <= s < 300 and not _finite(p)
        )

    @property
    def n_errors(self) -> int:
        # 4xx are the caller's fault (malformed records): not the model's errors
        return sum(1 for s in self.status if s >= 500) + self._ok_without_prediction()

    @property
    def n_non_finite(self) -> int:
        """Requests whose predictions were NaN/inf (answered 5xx, or 2xx without a usable prediction)."""
        return sum(self.non_finite) + self._ok_without_prediction()

    @property
    def predictions(self) -> list[float]:
        return [
            p
            for s, p in zip(self.status, self.mean_prediction, strict=False)
            if 200 <= s < 300 and p is not None and math.isfinite(p)
        ]


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
    # which checks were judged (a check that could not run is not listed, and fails or extends the step)
    checks_run: tuple[str, ...] = ()
    slow_share_stable: float | None = None  # share of requests above factor x the stable's tail quantile
    slow_share_canary: float | None = None
    latency_tail_p_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _pct(values: Sequence[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else None


def error_rate_p_value(err_canary: int, n_canary: int, err_stable: int, *, n_stable: int) -> float:
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


def slow_share_p_value(
    stable_ms: Sequence[float], canary_ms: Sequence[float], quantile: float, *, factor: float
) -> tuple[float, int, int, float]:
    """Is the canary too slow on more requests than the stable? (p-value, slow canary, slow stable, threshold ms).

    A request is "slow" above `factor` x the stable's own `quantile` (its p95 by default; factor is
    the release's max latency factor). The canary's share of slow requests is compared with the
    stable's share above the same threshold by Fisher's exact test (one-sided), exact at any
    sample size.

    Why a share, not a ratio of p99s: with 40-75 samples a p99 is nearly the maximum, and one
    scheduling hiccup on either side moved it 1-6 ms from step to step. Why `factor` x p95, not the
    bare p95: two server processes on one loaded host differ by a few percent all through their
    distributions, and a large step then finds that difference significant: a good canary was
    failed as "slow on 23.2 % of its requests (> the stable's p95)" at load average 15-20 on two
    cores. A canary within the allowed factor is not a tail regression; a request slower than the
    factor times the stable's tail start is.

    How many samples it takes (alpha 0.01, lognormal latencies with sigma 0.3, factor 1.5: the
    stable has about 0.1 % of its requests above 1.5 x its p95; simulated, 300 trials each): for
    3 % of the canary's requests 6 times slower, power 0.34 at 200 requests per side, 0.89 at 400,
    0.997 at 800, so about 350 per side for power 0.8. A 1 % slow path stays within the default
    max excess (1 point) and is tolerated. A step of 40-75 requests catches only gross tails
    (about 12 % of the canary slow, with none on the stable); the median check still catches a
    canary slow overall. False alarms: 0 of 2,000 identical 60-vs-40 steps, 0 of 500 steps of
    3,000 per side where the canary was 1.1x slower throughout (within the factor).
    """
    from scipy import stats

    n_s, n_c = len(stable_ms), len(canary_ms)
    m = min(n_s - 1, max(1, round((1.0 - quantile) * n_s)))
    threshold = sorted(stable_ms)[n_s - m - 1] * factor
    k_c = sum(1 for v in canary_ms if v > threshold)
    k_s = sum(1 for v in stable_ms if v > threshold)
    if k_c == 0:
        return 1.0, 0, k_s, threshold
    p = float(stats.fisher_exact([[k_c, n_c - k_c], [k_s, n_s - k_s]], alternative="greater").pvalue)
    return p, k_c, k_s, threshold


def analyse_canary_step(stable: Samples, canary: Samples, thresholds: CanaryThresholds) -> StepAnalysis:
    """Compare one step's canary samples with the stable's; "inconclusive" below min_requests per side.

    Checks (each significant at alpha, one-sided), listed in `checks_run` when they ran:
    - error_rate: the canary's 5xx share (non-finite predictions count as errors) above the max;
    - non_finite_predictions: any NaN/inf the canary's model produced fails it outright;
    - latency_median: Mann-Whitney, and the canary's median above max_p99_latency_ratio x the stable's;
    - latency_tail: share of canary requests above max_p99_latency_ratio x the stable's p95, against
      the stable's own share above it (see slow_share_p_value);
    - prediction_drift: Kolmogorov-Smirnov between the sides' mean predictions. A side with enough
      requests but too few usable predictions cannot be compared: the step fails when most of a
      side's requests gave none, and is extended (inconclusive) otherwise; it never passes.
    """
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
    pending: list[str] = []  # checks that could not run yet: the step cannot pass
    checks: list[str] = ["error_rate", "non_finite_predictions"]
    err_p = error_rate_p_value(err_c, n_c, err_s, n_stable=n_s)
    if rate_c > thresholds.max_error_rate and err_p < thresholds.alpha:
        reasons.append(
            f"canary error rate {rate_c:.1%} > max {thresholds.max_error_rate:.1%} "
            f"(stable {rate_s:.1%}, one-sided p={err_p:.2g})"
        )
    if canary.n_non_finite:
        reasons.append(
            f"canary model produced non-finite predictions (NaN/inf) on {canary.n_non_finite} of {n_c} requests"
        )

    checks.append("latency_median")
    lat_p = float(stats.mannwhitneyu(canary.latency_ms, stable.latency_ms, alternative="greater").pvalue)
    p99_s, p99_c = base["latency_p99_stable_ms"], base["latency_p99_canary_ms"]
    assert p99_s is not None and p99_c is not None
    ratio = p99_c / p99_s if p99_s > 0 else math.inf
    p50_s, p50_c = base["latency_p50_stable_ms"], base["latency_p50_canary_ms"]
    assert p50_s is not None and p50_c is not None
    ratio_p50 = p50_c / p50_s if p50_s > 0 else math.inf
    if lat_p < thresholds.alpha and ratio_p50 > thresholds.max_p99_latency_ratio:
        reasons.append(
            f"canary latency p50 {p50_c:.2f} ms is {ratio_p50:.1f}x the stable's {p50_s:.2f} ms "
            f"(max {thresholds.max_p99_latency_ratio}x; Mann-Whitney p={lat_p:.2g})"
        )

    checks.append("latency_tail")
    q, factor = thresholds.latency_tail_quantile, thresholds.max_p99_latency_ratio
    tail_p, slow_c, slow_s, tail_ms = slow_share_p_value(stable.latency_ms, canary.latency_ms, q, factor=factor)
    share_s, share_c = slow_s / n_s, slow_c / n_c
    if tail_p < thresholds.alpha and share_c - share_s > thresholds.max_slow_share_excess:
        reasons.append(
            f"canary slow on {share_c:.1%} of its requests (> {factor:g}x the stable's p{round(q * 100)}, "
            f"{tail_ms:.2f} ms; stable {share_s:.1%}, max excess {thresholds.max_slow_share_excess:.1%}; "
            f"Fisher p={tail_p:.2g})"
        )

    ks: float | None = None
    ks_p: float | None = None
    pred_s, pred_c = stable.predictions, canary.predictions
    if len(pred_s) >= thresholds.min_requests and len(pred_c) >= thresholds.min_requests:
        checks.append("prediction_drift")
        res = stats.ks_2samp(pred_c, pred_s)
        ks, ks_p = float(res.statistic), float(res.pvalue)
        if ks > thresholds.max_prediction_drift and ks_p < thresholds.alpha:
            reasons.append(
                f"prediction distribution drifted: KS {ks:.2f} > max {thresholds.max_prediction_drift} (p={ks_p:.2g})"
            )
    else:
        for side, n, preds in (("stable", n_s, pred_s), ("canary", n_c, pred_c)):
            if len(preds) >= thresholds.min_requests:
                continue
            what = (
                f"prediction drift check cannot run: {side} answered {n} requests but only {len(preds)} "
                f"usable predictions (need {thresholds.min_requests})"
            )
            (reasons if 2 * len(preds) < n else pending).append(what)

    verdict: Verdict = "fail" if reasons else ("inconclusive" if pending else "pass")
    return StepAnalysis(
        verdict=verdict,
        reasons=tuple(reasons or pending),
        error_p_value=err_p,
        latency_p_value=lat_p,
        prediction_drift_ks=ks,
        prediction_drift_p_value=ks_p,
        extra={"p99_latency_ratio": ratio, "p50_latency_ratio": ratio_p50, "slow_threshold_ms": tail_ms},
        checks_run=tuple(checks),
        slow_share_stable=share_s,
        slow_share_canary=share_c,
        latency_tail_p_value=tail_p,
        **base,
    )
