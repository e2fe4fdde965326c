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
