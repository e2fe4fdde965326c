"""Canary statistics on known distributions: what passes, what fails, what is too little to judge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
    p_small = error_rate_p_value(3, 40, 0, 400)
    assert 1e-5 < p_small < 0.01
    # large counts: z test; equal rates give p near 0.5
    assert error_rate_p_value(50, 500, 50, 500) == pytest.approx(0.5, abs=0.01)
    assert error_rate_p_value(0, 100, 0, 100) == 1.0


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
        slow_share_p_value(rng.lognormal(0, 0.3, 60).tolist(), rng.lognormal(0, 0.3, 40).tolist(), 0.95, 1.5)[0] < 0.01
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
