"""Canary statistics on known distributions: what passes, what fails, what is too little to judge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.stats  # noqa: F401 -- loaded at collection, not again in each mutant's fork

from include.mlops.canary.analysis import (
    CanaryThresholds,
    InvalidThresholds,
    Samples,
    analyse_canary_step,
    error_rate_p_value,
)
from include.mlops.canary.plot import plot_analysis

TH = CanaryThresholds(max_error_rate=0.02, max_p99_latency_ratio=1.5, max_prediction_drift=0.3, min_requests=30)


def make_samples(n: int, seed: int, latency_scale: float = 1.0, error_rate: float = 0.0, pred_shift: float = 0.0):
    rng = np.random.default_rng(seed)
    lat = rng.lognormal(mean=0.0, sigma=0.3, size=n) * latency_scale
    status = np.where(rng.random(n) < error_rate, 500, 200)
    preds = np.clip(rng.beta(2, 5, size=n) + pred_shift, 0, 1)
    return Samples(
        ts=tuple(float(i) for i in range(n)),
        latency_ms=tuple(lat.tolist()),
        status=tuple(int(s) for s in status),
        mean_prediction=tuple(None if s >= 500 else float(p) for s, p in zip(status, preds, strict=True)),
    )


def test_identical_distributions_pass():
    a = analyse_canary_step(make_samples(400, 1), make_samples(200, 2), TH)
    assert a.verdict == "pass", a.reasons
    assert a.n_stable == 400 and a.n_canary == 200
    assert a.latency_p_value is not None and a.latency_p_value > TH.alpha


def test_five_times_latency_fails_with_small_p_value():
    a = analyse_canary_step(make_samples(400, 1), make_samples(100, 2, latency_scale=5.0), TH)
    assert a.verdict == "fail"
    assert a.latency_p_value is not None and a.latency_p_value < 1e-6
    assert any("latency" in r for r in a.reasons)
    assert a.extra["p99_latency_ratio"] > 3


def test_twenty_percent_errors_fail():
    a = analyse_canary_step(make_samples(400, 1), make_samples(100, 2, error_rate=0.2), TH)
    assert a.verdict == "fail"
    assert a.error_rate_canary == pytest.approx(0.2, abs=0.1)
    assert a.error_p_value is not None and a.error_p_value < 1e-4
    assert any("error rate" in r for r in a.reasons)


def test_too_few_requests_is_inconclusive_even_if_all_fail():
    a = analyse_canary_step(make_samples(400, 1), make_samples(10, 2, error_rate=1.0), TH)
    assert a.verdict == "inconclusive"
    assert "too few requests" in a.reasons[0]


def test_prediction_drift_fails():
    a = analyse_canary_step(make_samples(400, 1), make_samples(200, 2, pred_shift=0.3), TH)
    assert a.verdict == "fail"
    assert a.prediction_drift_ks is not None and a.prediction_drift_ks > 0.3


def test_small_error_rate_within_threshold_passes():
    # 1 error in 200 is below the 2 % rule even if the stable has none
    canary = make_samples(200, 2)
    status = list(canary.status)
    status[0] = 500
    canary = Samples(canary.ts, canary.latency_ms, tuple(status), (None, *canary.mean_prediction[1:]))
    assert analyse_canary_step(make_samples(400, 1), canary, TH).verdict == "pass"


def test_fisher_used_for_small_counts_and_z_test_agrees_for_large():
    # small counts: Fisher exact, p of 3/40 vs 0/400 is small but not tiny
    p_small = error_rate_p_value(3, 40, 0, n_stable=400)
    assert 1e-5 < p_small < 0.01
    # large counts: z test; equal rates give p near 0.5
    assert error_rate_p_value(50, 500, 50, n_stable=500) == pytest.approx(0.5, abs=0.01)
    assert error_rate_p_value(0, 100, 0, n_stable=100) == 1.0


def test_4xx_are_not_counted_as_model_errors():
    s = Samples(ts=(0.0,) * 3, latency_ms=(1.0,) * 3, status=(200, 422, 503), mean_prediction=(0.1, None, None))
    assert s.n_errors == 1


def test_thresholds_out_of_range_are_rejected_with_names():
    with pytest.raises(InvalidThresholds, match=r"alpha=1\.5"):
        CanaryThresholds(alpha=1.5)


def test_plot_writes_png(tmp_path: Path):
    from dataclasses import replace

    steps = [
        replace(analyse_canary_step(make_samples(100, 1), make_samples(100, 2), TH), weight_pct=10),
        replace(analyse_canary_step(make_samples(100, 1), make_samples(100, 3, latency_scale=5), TH), weight_pct=50),
    ]
    out = plot_analysis(steps, tmp_path / "canary.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 5_000


def _tail_samples(n: int, seed: int, slow_share: float = 0.0, bulk_scale: float = 1.0) -> Samples:
    """Lognormal latencies; a `slow_share` of requests 6x slower, the rest scaled by bulk_scale."""
    rng = np.random.default_rng(seed)
    lat = rng.lognormal(mean=0.0, sigma=0.3, size=n) * bulk_scale
    slow = rng.random(n) < slow_share
    lat = np.where(slow, lat / bulk_scale * 6.0, lat)
    preds = rng.beta(2, 5, size=n)
    return Samples(
        ts=tuple(float(i) for i in range(n)),
        latency_ms=tuple(lat.tolist()),
        status=(200,) * n,
        mean_prediction=tuple(float(p) for p in preds),
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_canary_six_times_slower_on_three_percent_with_same_median_fails_on_tail_share(seed: int):
    # a fast path that got a little faster and a slow path on 3 % of requests: medians match, so
    # Mann-Whitney sees nothing; 6x the median is far above 1.5 x the stable's p95 (exp(0.3 * 1.645)
    # = 1.64x the median), which about 0.1 % of the stable's requests exceed: 3 points of excess
    stable = _tail_samples(4000, seed)
    canary = _tail_samples(4000, 100 + seed, slow_share=0.03, bulk_scale=0.98)
    a = analyse_canary_step(stable, canary, TH)
    assert a.latency_p50_canary_ms == pytest.approx(a.latency_p50_stable_ms, rel=0.1)
    assert a.verdict == "fail", a.reasons
    assert any("slow on" in r and "1.5x the stable's p95" in r for r in a.reasons), a.reasons
    assert a.latency_tail_p_value is not None and a.latency_tail_p_value < TH.alpha
    assert a.slow_share_canary is not None and 0.02 < a.slow_share_canary < 0.04
    assert a.slow_share_stable is not None and a.slow_share_stable < 0.005


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_canary_slower_throughout_but_within_the_factor_passes_the_tail_check(seed: int):
    # two processes on one loaded host differ by a few percent everywhere: 1.15x throughout is
    # inside the 1.5x factor, so neither the median nor the tail fails, even with 3,000 per side
    # (the share above the bare stable p95 would be about 10 % against 5 %: "significant")
    stable = _tail_samples(3000, seed)
    canary = _tail_samples(3000, 100 + seed, bulk_scale=1.15)
    a = analyse_canary_step(stable, canary, TH)
    assert a.verdict == "pass", a.reasons
    assert "latency_tail" in a.checks_run


def test_identical_latency_distributions_pass_the_tail_check():
    # 8 seeds x 3 sizes = 24 identical steps; at alpha 0.01 one false alarm is within chance
    # (p about 0.21), two are not (p about 0.02)
    failed = []
    for seed in range(8):
        for n_s, n_c in ((60, 40), (400, 200), (3000, 3000)):
            a = analyse_canary_step(_tail_samples(n_s, seed), _tail_samples(n_c, 50 + seed), TH)
            assert "latency_tail" in a.checks_run and "latency_median" in a.checks_run
            if a.verdict != "pass":
                failed.append((seed, n_s, n_c, a.reasons))
    assert len(failed) <= 1, failed


def test_tail_test_keeps_its_false_alarm_rate_at_small_samples():
    # Fisher's exact test: 2,000 identical steps of 60 vs 40 requests alarm at most ~alpha
    from include.mlops.canary.analysis import slow_share_p_value

    rng = np.random.default_rng(11)
    alarms = sum(
        slow_share_p_value(rng.lognormal(0, 0.3, 60).tolist(), rng.lognormal(0, 0.3, 40).tolist(), 0.95, factor=1.5)[0]
        < 0.01
        for _ in range(2000)
    )
    assert alarms <= 2000 * 0.015


def test_non_finite_predictions_fail_the_step_and_are_named():
    canary = make_samples(100, 2)
    nf = tuple(i % 2 == 0 for i in range(100))
    canary = Samples(
        canary.ts,
        canary.latency_ms,
        tuple(500 if x else 200 for x in nf),
        tuple(None if x else p for x, p in zip(nf, canary.mean_prediction, strict=True)),
        nf,
    )
    a = analyse_canary_step(make_samples(200, 1), canary, TH)
    assert a.verdict == "fail"
    assert any("non-finite predictions" in r and "50 of 100" in r for r in a.reasons), a.reasons
    assert a.error_rate_canary == pytest.approx(0.5)  # each NaN answer counts once, as an error


def test_ok_answers_without_usable_predictions_fail_never_pass():
    # a server that answered 200 with NaN, serialised as null: the drift check cannot run
    canary = make_samples(100, 2)
    canary = Samples(canary.ts, canary.latency_ms, (200,) * 100, (None,) * 100)
    a = analyse_canary_step(make_samples(200, 1), canary, TH)
    assert a.verdict == "fail"
    assert any("non-finite" in r for r in a.reasons), a.reasons
    assert any("drift check cannot run" in r for r in a.reasons), a.reasons
    assert "prediction_drift" not in a.checks_run


def test_every_verdict_lists_the_checks_that_ran():
    a = analyse_canary_step(make_samples(400, 1), make_samples(200, 2), TH)
    assert a.checks_run == (
        "error_rate",
        "non_finite_predictions",
        "latency_median",
        "latency_tail",
        "prediction_drift",
    )
    assert analyse_canary_step(make_samples(400, 1), make_samples(10, 2), TH).checks_run == ()


# --- boundaries of each rule that combines a threshold with a significance test -------------------
# Deterministic samples, so every expected value below is derived by hand: latencies are integer ms
# (exact in binary), predictions a repeating grid, errors the first k requests.


def _side(
    latency_ms: list[float], errors: int = 0, preds: list[float] | None = None, status: list[int] | None = None
) -> Samples:
    n = len(latency_ms)
    st = list(status) if status is not None else [500 if i < errors else 200 for i in range(n)]
    pr = preds if preds is not None else [(i % 10) / 10 for i in range(n)]
    return Samples(
        ts=tuple(float(i) for i in range(n)),
        latency_ms=tuple(float(v) for v in latency_ms),
        status=tuple(st),
        mean_prediction=tuple(None if s >= 500 else float(p) for s, p in zip(st, pr, strict=True)),
    )


def _flat(n: int) -> list[float]:
    # the same latency pattern on both sides: neither latency rule can fire
    return [100.0 + (i % 100) for i in range(n)]


def _verdict_with(stable: Samples, canary: Samples, th: CanaryThresholds = TH):
    a = analyse_canary_step(stable, canary, th)
    return a.verdict, a


# errors: rate_c > max_error_rate (2 %) and one-sided p < alpha (0.01)


def test_error_rate_over_the_max_but_not_significant_passes():
    # 3 of 100 (3 % > 2 %) against 0 of 100: Fisher one-sided p = C(100,3)/C(200,3)
    verdict, a = _verdict_with(_side(_flat(100)), _side(_flat(100), errors=3))
    assert a.error_rate_canary == pytest.approx(0.03)
    assert a.error_p_value == pytest.approx(100 * 99 * 98 / (200 * 199 * 198))  # 0.1231
    assert verdict == "pass", a.reasons


def test_error_rate_as_high_as_the_stables_is_not_significant():
    # 3 of 100 on both sides: equal tables, one-sided Fisher p = 0.5 + P(X=3)/2 > 0.5
    verdict, a = _verdict_with(_side(_flat(100), errors=3), _side(_flat(100), errors=3))
    assert a.error_p_value is not None and a.error_p_value > 0.5
    assert verdict == "pass", a.reasons


def test_error_rate_exactly_at_the_max_and_significant_passes():
    # 20 of 1000 = 2.0 %, not above the 2 % max; against 0 of 1000 it is significant (z = 4.49)
    verdict, a = _verdict_with(_side(_flat(1000)), _side(_flat(1000), errors=20))
    assert a.error_rate_canary == 0.02
    assert a.error_p_value is not None and a.error_p_value < 1e-4
    assert verdict == "pass", a.reasons


def test_error_rate_significant_but_below_the_max_passes():
    # 15 of 1000 = 1.5 % against 0 of 1000: z = 0.015 / sqrt(0.0075 * 0.9925 * 0.002) = 3.89
    verdict, a = _verdict_with(_side(_flat(1000)), _side(_flat(1000), errors=15))
    assert a.error_p_value is not None and a.error_p_value < TH.alpha
    assert verdict == "pass", a.reasons


def test_error_rate_just_over_the_max_and_significant_fails_naming_the_rates():
    # 21 of 1000 = 2.1 % > 2 %, stable 0 of 1000
    verdict, a = _verdict_with(_side(_flat(1000)), _side(_flat(1000), errors=21))
    assert verdict == "fail"
    assert a.reasons[0].startswith("canary error rate 2.1% > max 2.0% (stable 0.0%, one-sided p=")
    assert "error_rate" in a.checks_run


def test_error_p_value_by_hand_fisher_below_five_expected_z_test_from_five():
    # Fisher (an expected cell < 5): 2 of 10 vs 0 of 10, P(X >= 2) = C(10,2) / C(20,2) = 45/190
    assert error_rate_p_value(2, 10, 0, n_stable=10) == pytest.approx(45 / 190)
    # one error in all: P(X >= 1) = 10/20
    assert error_rate_p_value(1, 10, 0, n_stable=10) == pytest.approx(0.5)
    assert error_rate_p_value(0, 10, 1, n_stable=10) == pytest.approx(1.0)
    # every expected cell exactly 5 (50 + 50 requests, 10 errors): the pooled z-test
    # p1 = 0.14, p2 = 0.06, pooled 0.1, se = sqrt(0.1 * 0.9 * (1/50 + 1/50)) = 0.06, z = 0.08 / 0.06
    import math

    z = 0.08 / 0.06
    assert error_rate_p_value(7, 50, 3, n_stable=50) == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)))
    # unequal sizes: p1 = 50/500, p2 = 30/1000, pooled 80/1500, se from 1/500 + 1/1000
    pooled = 80 / 1500
    z2 = (0.1 - 0.03) / math.sqrt(pooled * (1 - pooled) * (1 / 500 + 1 / 1000))
    assert error_rate_p_value(50, 500, 30, n_stable=1000) == pytest.approx(0.5 * math.erfc(z2 / math.sqrt(2)))
    # the canary better than the stable: one-sided, so p > 0.5 (z-test) and Fisher alike
    assert error_rate_p_value(30, 1000, 50, n_stable=500) > 0.99
    assert error_rate_p_value(0, 10, 5, n_stable=10) == 1.0


# latency median: Mann-Whitney p < alpha and canary p50 > 1.5 x the stable's (the tail rule is
# switched off here with a max slow-share excess it cannot exceed, to judge the median alone)
MEDIAN_ONLY = CanaryThresholds(max_p99_latency_ratio=1.5, min_requests=30, max_slow_share_excess=0.99)


def test_median_over_the_factor_but_not_significant_passes():
    # two clusters, 1 ms and 10 ms: the stable 15 + 15 (median 5.57), the canary 14 + 16 (median 10.005):
    # ratio 1.8 > 1.5, but one request moved between clusters is far from significant
    stable = [1 + 0.01 * i for i in range(15)] + [10 + 0.01 * i for i in range(15)]
    canary = [1 + 0.01 * i for i in range(14)] + [10 + 0.01 * i for i in range(16)]
    verdict, a = _verdict_with(_side(stable), _side(canary), MEDIAN_ONLY)
    assert a.latency_p50_stable_ms == pytest.approx(5.57)
    assert a.latency_p50_canary_ms == pytest.approx(10.005)
    assert a.extra["p50_latency_ratio"] > 1.5
    assert a.latency_p_value is not None and a.latency_p_value > 0.1
    assert verdict == "pass", a.reasons


def test_median_significantly_slower_but_within_the_factor_passes():
    # 1.4x throughout, 200 per side: certainly significant, within 1.5x
    stable = [float(v) for v in range(100, 300)]
    verdict, a = _verdict_with(_side(stable), _side([1.4 * v for v in stable]), MEDIAN_ONLY)
    assert a.latency_p_value is not None and a.latency_p_value < 1e-6
    assert a.extra["p50_latency_ratio"] == pytest.approx(1.4)
    assert verdict == "pass", a.reasons


def test_median_exactly_at_the_factor_passes_and_just_over_fails():
    # stable 100..299 ms: median (199 + 200) / 2 = 199.5; canary 1.5x: median 299.25, ratio exactly 1.5
    stable = [float(v) for v in range(100, 300)]
    verdict, a = _verdict_with(_side(stable), _side([1.5 * v for v in stable]), MEDIAN_ONLY)
    assert a.latency_p50_canary_ms == 299.25 and a.extra["p50_latency_ratio"] == 1.5
    assert a.latency_p_value is not None and a.latency_p_value < TH.alpha
    assert verdict == "pass", a.reasons
    # 1 ms more on each request: median 300.25, ratio 1.505
    verdict, a = _verdict_with(_side(stable), _side([1.5 * v + 1 for v in stable]), MEDIAN_ONLY)
    assert verdict == "fail"
    assert a.reasons == (
        "canary latency p50 300.25 ms is 1.5x the stable's 199.50 ms "
        f"(max 1.5x; Mann-Whitney p={a.latency_p_value:.2g})",
    )


def test_latency_percentiles_and_ratios_are_reported():
    # numpy's linear percentile of 100..299: p50 = 199.5, p99 at rank 0.99 * 199 = 197.01 -> 297.01
    stable = [float(v) for v in range(100, 300)]
    a = analyse_canary_step(_side(stable), _side([2 * v for v in stable]), MEDIAN_ONLY)
    assert a.latency_p50_stable_ms == 199.5 and a.latency_p99_stable_ms == pytest.approx(297.01)
    assert a.latency_p50_canary_ms == 399.0 and a.latency_p99_canary_ms == pytest.approx(594.02)
    assert a.extra["p99_latency_ratio"] == pytest.approx(2.0)
    assert a.extra["p50_latency_ratio"] == pytest.approx(2.0)


def test_a_stable_answering_in_zero_ms_makes_the_ratios_infinite_not_a_crash():
    a = analyse_canary_step(_side([0.0] * 40), _side([1.0] * 40), MEDIAN_ONLY)
    assert a.extra["p50_latency_ratio"] == float("inf") and a.extra["p99_latency_ratio"] == float("inf")
    assert a.verdict == "fail"


# latency tail: Fisher p < alpha and canary slow share - stable slow share > 1 point, where slow is
# above 1.5 x the stable's p95 (the (n - m - 1)-th sorted value, m = round(0.05 n))


def _with_slow(base: list[float], k: int) -> list[float]:
    # the k largest requests become 1,000 ms: the median does not move
    return base[: len(base) - k] + [1000.0] * k


def test_tail_threshold_is_factor_times_the_stables_p95_by_hand():
    # 200 stable requests 100..299: m = 10, the 190th value 289 ms, x 1.5 = 433.5 ms
    from include.mlops.canary.analysis import slow_share_p_value

    stable = [float(v) for v in range(100, 300)]
    p, k_c, k_s, thr = slow_share_p_value(stable, _with_slow(stable, 3), 0.95, factor=1.5)
    assert thr == 433.5 and (k_c, k_s) == (3, 0)
    # Fisher one-sided with 3 slow in all: all three on the canary's side, C(200,3) / C(400,3)
    assert p == pytest.approx(200 * 199 * 198 / (400 * 399 * 398))
    # nothing slow on the canary: p = 1 without a test, the stable's count still reported
    assert slow_share_p_value(_with_slow(stable, 2), stable, 0.95, factor=1.5) == (1.0, 0, 2, 433.5)
    # 10 requests: round(0.5) = 0, at least one above the tail start: the 9th value
    assert slow_share_p_value([float(v) for v in range(1, 11)], [1.0] * 10, 0.95, factor=2.0)[3] == 18.0
    # q = 0.5 on 20 requests: m = 10, the 10th value (10 ms) x 1
    assert slow_share_p_value([float(v) for v in range(1, 21)], [1.0] * 20, 0.5, factor=1.0)[3] == 10.0
    # a slow request exactly at the threshold is not above it
    assert slow_share_p_value(stable, [433.5] * 200, 0.95, factor=1.5)[1] == 0


def test_tail_share_over_the_excess_but_not_significant_passes():
    # 3 of 200 slow (1.5 % > 1 point over the stable's 0 %): Fisher p = 0.124
    stable = [float(v) for v in range(100, 300)]
    verdict, a = _verdict_with(_side(stable), _side(_with_slow(stable, 3)))
    assert a.slow_share_canary == 0.015 and a.slow_share_stable == 0.0
    assert a.latency_tail_p_value == pytest.approx(200 * 199 * 198 / (400 * 399 * 398))
    assert verdict == "pass", a.reasons


def test_tail_share_exactly_at_the_excess_and_significant_passes_one_more_fails():
    # 2,000 per side, 100.0..299.9 ms: m = 100, the 1900th value 289.9 ms, threshold 434.85 ms.
    # 20 slow of 2,000 = exactly 1 point more than the stable's 0: significant (about 0.5^20) but not above
    stable = [100 + i / 10 for i in range(2000)]
    verdict, a = _verdict_with(_side(stable), _side(_with_slow(stable, 20)))
    assert a.extra["slow_threshold_ms"] == pytest.approx(434.85)
    assert a.slow_share_canary == 0.01 and a.slow_share_stable == 0.0
    assert a.latency_tail_p_value is not None and a.latency_tail_p_value < 1e-5
    assert verdict == "pass", a.reasons
    verdict, a = _verdict_with(_side(stable), _side(_with_slow(stable, 21)))
    assert verdict == "fail"
    assert a.reasons[0].startswith(
        "canary slow on 1.1% of its requests (> 1.5x the stable's p95, 434.85 ms; stable 0.0%, max excess 1.0%; "
    )


def test_tail_excess_is_measured_over_the_stables_own_slow_share():
    # stable 20 slow of 2,000 (1 %), canary 40 (2 %): 2 % alone is over the 1 point, the excess
    # over the stable is exactly 1 point: significant (40 vs 20 of 2,000 each) but not above
    stable_base = [100 + i / 10 for i in range(2000)]
    verdict, a = _verdict_with(_side(_with_slow(stable_base, 20)), _side(_with_slow(stable_base, 40)))
    assert a.slow_share_stable == 0.01 and a.slow_share_canary == 0.02
    assert a.latency_tail_p_value is not None and a.latency_tail_p_value < TH.alpha
    assert verdict == "pass", a.reasons


# prediction drift: KS statistic > max drift and p < alpha. Predictions on a grid with n a power of
# two: both empirical CDFs are multiples of 1/n, exact in binary, so the KS statistic is exact: the
# canary shifted by s + 0.5 leaves s + 1 stable values below its first one, D = (s + 1) / n


def _drift(n: int, shift: float) -> tuple[Samples, Samples]:
    grid = [float(i) for i in range(n)]
    return _side(_flat(n), preds=grid), _side(_flat(n), preds=[g + shift for g in grid])


DRIFT_TH = CanaryThresholds(max_prediction_drift=0.25, min_requests=30)


def test_drift_over_the_max_but_not_significant_passes():
    # 32 per side, D = 9/32 = 0.28 > 0.25, not significant at 32 per side (p about 0.15)
    verdict, a = _verdict_with(*_drift(32, 8.5), DRIFT_TH)
    assert a.prediction_drift_ks == 9 / 32
    assert a.prediction_drift_p_value is not None and a.prediction_drift_p_value > TH.alpha
    assert verdict == "pass", a.reasons


def test_drift_exactly_at_the_max_and_significant_passes_one_more_fails():
    # 256 per side: D = 64/256 = 0.25 exactly, significant (critical D at 0.01 about 0.144)
    verdict, a = _verdict_with(*_drift(256, 63.5), DRIFT_TH)
    assert a.prediction_drift_ks == 0.25
    assert a.prediction_drift_p_value is not None and a.prediction_drift_p_value < TH.alpha
    assert verdict == "pass", a.reasons
    verdict, a = _verdict_with(*_drift(256, 64.5), DRIFT_TH)
    assert a.prediction_drift_ks == 65 / 256
    assert verdict == "fail"
    assert a.reasons == (f"prediction distribution drifted: KS 0.25 > max 0.25 (p={a.prediction_drift_p_value:.2g})",)


def test_drift_significant_but_within_the_max_passes():
    # D = 48/256 = 0.19, p well below 0.01
    verdict, a = _verdict_with(*_drift(256, 47.5), DRIFT_TH)
    assert a.prediction_drift_ks == 48 / 256
    assert a.prediction_drift_p_value is not None and a.prediction_drift_p_value < TH.alpha
    assert verdict == "pass", a.reasons


# too few usable predictions on a side (4xx answers carry none and are not the model's errors):
# fail when fewer than half the side's requests gave one, extend (inconclusive) otherwise


def _with_4xx(n: int, k: int) -> Samples:
    return _side(_flat(n), status=[422 if i < k else 200 for i in range(n)])


def test_half_the_requests_without_predictions_is_inconclusive_fewer_fails():
    # 50 requests, 25 answered 422: 25 predictions < 30 needed, but 2 x 25 is not below 50: extend
    verdict, a = _verdict_with(_side(_flat(50)), _with_4xx(50, 25))
    assert verdict == "inconclusive"
    assert a.reasons == (
        "prediction drift check cannot run: canary answered 50 requests but only 25 usable predictions (need 30)",
    )
    assert a.prediction_drift_ks is None and "prediction_drift" not in a.checks_run
    # 26 answered 422: 24 predictions, fewer than half: the step fails
    verdict, a = _verdict_with(_side(_flat(50)), _with_4xx(50, 26))
    assert verdict == "fail"
    # the stable's side is judged the same way and named
    verdict, a = _verdict_with(_with_4xx(50, 26), _side(_flat(50)))
    assert verdict == "fail"
    assert a.reasons == (
        "prediction drift check cannot run: stable answered 50 requests but only 24 usable predictions (need 30)",
    )


def test_exactly_min_requests_predictions_on_each_side_runs_the_drift_check():
    # 40 requests, 10 answered 422: exactly 30 predictions, the check runs
    verdict, a = _verdict_with(_with_4xx(40, 10), _with_4xx(40, 10))
    assert "prediction_drift" in a.checks_run and a.prediction_drift_ks == 0.0
    assert verdict == "pass", a.reasons


def test_exactly_min_requests_per_side_is_judged_one_fewer_is_inconclusive():
    a = analyse_canary_step(_side(_flat(30)), _side(_flat(30)), TH)
    assert a.verdict == "pass" and a.checks_run[0] == "error_rate"
    for n_s, n_c in ((29, 30), (30, 29)):
        a = analyse_canary_step(_side(_flat(n_s)), _side(_flat(n_c)), TH)
        assert a.verdict == "inconclusive" and a.checks_run == ()
        assert a.reasons == (f"too few requests to judge: stable {n_s}, canary {n_c}, need 30 each",)
        assert a.error_p_value is None and a.latency_p_value is None and a.prediction_drift_ks is None
        assert a.n_stable == n_s and a.n_canary == n_c


def test_status_classes_errors_and_predictions():
    # 499 is the caller's, 500 the server's; a prediction counts from a 2xx only (200..299)
    s = Samples(
        status=(199, 200, 299, 300, 499, 500, 200),
        mean_prediction=(0.1, 0.2, 0.3, 0.4, 0.5, None, float("nan")),
        non_finite=(False, False, False, False, False, True, False),
    )
    assert s.n_errors == 2  # the 500, and the 200 whose prediction is NaN
    assert s.n_non_finite == 2  # flagged by the server, and the NaN let through
    assert s.predictions == [0.2, 0.3]
    assert len(s) == 7


def test_samples_from_json_reads_each_field_and_defaults_to_empty():
    s = Samples.from_dict(
        {"ts": [1.0], "latency_ms": [2.5], "status": ["503"], "mean_prediction": [None], "non_finite": [1]}
    )
    assert s == Samples(ts=(1.0,), latency_ms=(2.5,), status=(503,), mean_prediction=(None,), non_finite=(True,))
    assert Samples.from_dict({}) == Samples()


def test_error_rates_and_to_json():
    a = analyse_canary_step(_side(_flat(40), errors=1), _side(_flat(50), errors=2), TH)
    assert a.error_rate_stable == 1 / 40 and a.error_rate_canary == 2 / 50
    d = a.to_dict()
    assert d["verdict"] == "pass" and d["n_stable"] == 40 and d["checks_run"][0] == "error_rate"


@pytest.mark.parametrize(
    ("field", "ok", "bad"),
    [
        ("max_error_rate", [0.0, 1.0], [-0.01, 1.01]),
        ("max_p99_latency_ratio", [1.0], [0.99]),
        ("max_prediction_drift", [1.0, 0.01], [0.0, 1.01]),
        ("min_requests", [1], [0]),
        ("alpha", [0.001, 0.999], [0.0, 1.0]),
        ("latency_tail_quantile", [0.5, 0.99], [0.49, 1.0]),
        ("max_slow_share_excess", [0.0, 0.99], [-0.01, 1.0]),
    ],
)
def test_threshold_ranges_inclusive_and_exclusive_ends(field: str, ok: list, bad: list):
    for v in ok:
        assert getattr(CanaryThresholds(**{field: v}), field) == v
    for v in bad:
        with pytest.raises(InvalidThresholds, match=rf"out of range: {field}={v!r} \(error rate in \[0,1\]"):
            CanaryThresholds(**{field: v})


def test_threshold_defaults():
    th = CanaryThresholds()
    assert (th.max_error_rate, th.max_p99_latency_ratio, th.max_prediction_drift, th.min_requests) == (
        0.02,
        1.5,
        0.3,
        30,
    )
    assert (th.alpha, th.latency_tail_quantile, th.max_slow_share_excess) == (0.01, 0.95, 0.01)


def _fisher_greater(a: int, n1: int, c: int, n2: int) -> float:
    """One-sided Fisher p by hand: P(X >= a), X hypergeometric (a + c slow or failed among n1 + n2, n1 drawn)."""
    import math

    k, n = a + c, n1 + n2
    return sum(math.comb(k, x) * math.comb(n - k, n1 - x) for x in range(a, min(k, n1) + 1)) / math.comb(n, n1)


@pytest.mark.parametrize(
    "case",
    [
        # (errors canary, n canary, errors stable, n stable): the one expected cell below 5 decides Fisher
        (2, 20, 18, 200),  # the canary's errors: 20 x 20 / 220 = 1.8
        (18, 200, 2, 20),  # the stable's errors
        (18, 20, 182, 200),  # the canary's successes: 20 x 20 / 220 = 1.8
        (182, 200, 18, 20),  # the stable's successes
    ],
)
def test_fisher_is_used_when_any_one_expected_cell_is_below_five(case: tuple[int, int, int, int]) -> None:
    err_canary, n_canary, err_stable, n_stable = case
    p = error_rate_p_value(err_canary, n_canary, err_stable, n_stable=n_stable)
    assert p == pytest.approx(_fisher_greater(*case), rel=1e-9)


def test_samples_with_fewer_predictions_than_statuses_count_what_pairs() -> None:
    # a server may omit trailing predictions: zip pairs what there is, never raises
    s = Samples(status=(200, 200, 300), mean_prediction=(None,))
    assert s.n_errors == 1 and s.predictions == []
    # a 3xx without a prediction is not an error (only 2xx must carry one)
    assert Samples(status=(300, 301), mean_prediction=(None, None)).n_errors == 0


def test_empty_sides_are_inconclusive_with_zero_rates_and_no_percentiles() -> None:
    a = analyse_canary_step(Samples(), Samples(), TH)
    assert a.verdict == "inconclusive" and a.n_stable == 0 and a.n_canary == 0
    assert a.error_rate_stable == 0.0 and a.error_rate_canary == 0.0
    assert a.latency_p50_stable_ms is None and a.latency_p99_canary_ms is None


def test_a_sub_millisecond_stable_still_gives_a_finite_ratio() -> None:
    a = analyse_canary_step(_side([0.5] * 40), _side([1.0] * 40), MEDIAN_ONLY)
    assert a.extra["p99_latency_ratio"] == 2.0 and a.extra["p50_latency_ratio"] == 2.0


def test_slow_share_counts_by_hand() -> None:
    from include.mlops.canary.analysis import slow_share_p_value

    stable = [float(v) for v in range(100, 300)]
    # one slow canary request: all of the single slow one on the canary's side, p = 200/400
    assert slow_share_p_value(stable, _with_slow(stable, 1), 0.95, factor=1.5)[:3] == (pytest.approx(0.5), 1, 0)
    # slow on both sides: 3 of 200 against 2 of 200
    p, k_c, k_s, _ = slow_share_p_value(_with_slow(stable, 2), _with_slow(stable, 3), 0.95, factor=1.5)
    assert (k_c, k_s) == (3, 2) and p == pytest.approx(_fisher_greater(3, 200, 2, 200))
    # a stable request exactly at the threshold is not slow: 1..10 at q 0.5, factor 1: m = 5, the 5th value
    p, k_c, k_s, thr = slow_share_p_value([float(v) for v in range(1, 11)], [5.0, 6.0], 0.5, factor=1.0)
    assert thr == 5.0 and (k_c, k_s) == (1, 5)
    # 2 and 3 requests at q 0.5: m = round(1.0) = 1 and round(1.5) = 2, each the 1st value
    assert slow_share_p_value([1.0, 2.0], [1.0], 0.5, factor=1.0)[3] == 1.0
    assert slow_share_p_value([1.0, 2.0, 3.0], [1.0], 0.5, factor=1.0)[3] == 1.0


def test_the_drift_check_that_cannot_run_reports_no_statistic_and_names_only_the_short_side() -> None:
    # stable: 40 requests, 10 answered 422: exactly 30 predictions, enough; the canary 24 of 50: too few
    verdict, a = _verdict_with(_with_4xx(40, 10), _with_4xx(50, 26))
    assert verdict == "fail"
    assert a.reasons == (
        "prediction drift check cannot run: canary answered 50 requests but only 24 usable predictions (need 30)",
    )
    assert a.prediction_drift_ks is None and a.prediction_drift_p_value is None


def _failing_case(rule: str) -> tuple[Samples, Samples, CanaryThresholds]:
    stable = [float(v) for v in range(100, 300)]
    if rule == "error_rate":
        return _side(_flat(100)), _side(_flat(100), errors=3), TH
    if rule == "latency_median":
        return _side(stable), _side([1.5 * v + 1 for v in stable]), MEDIAN_ONLY
    if rule == "latency_tail":
        return _side(stable), _side(_with_slow(stable, 3)), TH
    return (*_drift(32, 8.5), DRIFT_TH)


@pytest.mark.parametrize("rule", ["error_rate", "latency_median", "latency_tail", "prediction_drift"])
def test_a_p_value_exactly_at_alpha_is_not_significant_just_below_it_is(rule: str) -> None:
    # each case is beyond its threshold; alpha set to the case's own p-value: not significant (p < alpha
    # is the rule), then alpha one float above it: significant, and the step fails
    import math
    from dataclasses import replace

    stable, canary, th = _failing_case(rule)
    a = analyse_canary_step(stable, canary, replace(th, alpha=0.5))
    p = {
        "error_rate": a.error_p_value,
        "latency_median": a.latency_p_value,
        "latency_tail": a.latency_tail_p_value,
        "prediction_drift": a.prediction_drift_p_value,
    }[rule]
    assert p is not None and 0 < p < 0.5
    assert analyse_canary_step(stable, canary, replace(th, alpha=p)).verdict == "pass"
    failed = analyse_canary_step(stable, canary, replace(th, alpha=math.nextafter(p, 1.0)))
    assert failed.verdict == "fail" and len(failed.reasons) == 1


def test_several_thresholds_out_of_range_are_all_named() -> None:
    with pytest.raises(InvalidThresholds) as exc:
        CanaryThresholds(max_error_rate=2.0, alpha=1.5)
    assert str(exc.value) == (
        "canary thresholds out of range: max_error_rate=2.0, alpha=1.5 (error rate in [0,1], latency ratio >= 1, "
        "drift in (0,1], min_requests >= 1, alpha in (0,1), tail quantile in [0.5,1), slow share excess in [0,1))"
    )


def test_a_significantly_faster_canary_has_a_one_sided_latency_p_value_near_one() -> None:
    # the test asks "is the canary slower?": a canary at half the stable's latency gives no evidence
    stable = [float(v) for v in range(100, 300)]
    a = analyse_canary_step(_side(stable), _side([v / 2 for v in stable]), TH)
    assert a.latency_p_value is not None and a.latency_p_value > 0.99
    assert a.verdict == "pass", a.reasons


def test_a_side_with_exactly_min_requests_predictions_is_not_named_as_short() -> None:
    # stable: 30 predictions of 40 (enough); canary: 25 of 50 (too few, half: extend): only the canary is named
    verdict, a = _verdict_with(_with_4xx(40, 10), _with_4xx(50, 25))
    assert verdict == "inconclusive"
    assert a.reasons == (
        "prediction drift check cannot run: canary answered 50 requests but only 25 usable predictions (need 30)",
    )
