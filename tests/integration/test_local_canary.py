"""The local deploy target for real: model-server processes behind a real Caddy, traffic flowing.

Weight splits, transitions under continuous traffic, canaries that never load, fail at run time,
are slow, or are good and get promoted.
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import httpx
import pytest

from include.mlops.canary.analysis import CanaryThresholds
from include.mlops.canary.load import LoadGenerator
from include.mlops.canary.runner import run_canary
from include.mlops.deploy.local import LocalProcessTarget
from include.mlops.deploy.process import pid_alive
from include.mlops.deploy.target import ModelRef
from include.mlops.errors import DeployError
from tests.model_fixtures import (
    build_faulty_model,
    build_logistic_model,
    build_slow_model,
    build_unloadable_model,
    processes_with,
    sample_records,
)

pytestmark = pytest.mark.slow

RECORDS = sample_records(50, seed=7)
# the two servers share 2 busy cores: a good canary must not fail on scheduling noise
TH = CanaryThresholds(max_error_rate=0.02, max_p99_latency_ratio=2.5, max_prediction_drift=0.5, min_requests=15)


@pytest.fixture
def models(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "models"
    return {
        "v1": build_logistic_model(d / "v1.onnx", seed=0),
        "v2": build_logistic_model(d / "v2.onnx", seed=0),
        "faulty": build_faulty_model(d / "faulty.onnx"),
        "slow": build_slow_model(d / "slow.onnx", seed=0),
        "broken": build_unloadable_model(d / "broken.onnx"),
    }


@pytest.fixture
def target(tmp_path: Path, models: dict[str, Path]):
    t = LocalProcessTarget(tmp_path / "state", sys.executable, drain_timeout_s=10.0)
    t.ensure_stable(ModelRef("fraud", "1", models["v1"]))
    yield t
    t.stop_all()


def _served_by(url: str, n: int) -> collections.Counter:
    with httpx.Client(timeout=10) as c:
        return collections.Counter(
            c.post(f"{url}/predict", json={"records": RECORDS[:1]}).headers["x-model-version"] for _ in range(n)
        )


def test_weight_split_follows_configured_weight(target: LocalProcessTarget, models):
    target.start_canary(ModelRef("fraud", "2", models["v2"]))
    url = target.status().router_url
    assert _served_by(url, 20) == {"1": 20}  # a new canary starts at 0 %
    for pct in (10, 50, 90):
        target.set_canary_weight(pct)
        got = _served_by(url, 100)
        assert abs(got["2"] - pct) <= 10, (pct, got)
        assert target.status().canary_weight_pct == pct


def test_weight_steps_promote_and_rollback_drop_no_request_under_traffic(target: LocalProcessTarget, models):
    url = target.status().router_url
    with LoadGenerator(url, RECORDS, rps=15, duration_s=60) as load:
        target.start_canary(ModelRef("fraud", "2", models["v2"]))
        for pct in (10, 50, 90):
            target.set_canary_weight(pct)
            load.stop_event.wait(0.7)
        old_stable = target.status().stable
        promoted = target.promote()
        load.stop_event.wait(0.7)
        assert target.promote() == promoted  # idempotent
        target.start_canary(ModelRef("fraud", "3", models["v1"]))
        target.set_canary_weight(50)
        load.stop_event.wait(0.7)
        target.rollback("test: roll back a healthy canary under traffic")
        load.stop_event.wait(0.7)
        results = load.stop()
    assert len(results) > 50
    failed = [r for r in results if r.status != 200]
    assert failed == []
    # a retry is only for a keep-alive connection a config reload closed: at most one per reload
    # (8 route changes above), never a routine part of serving
    retried = [r for r in results if r.attempts > 1]
    assert len(retried) <= 8, retried
    assert {r.served_version for r in results} == {"1", "2", "3"}
    state = target.status()
    assert state.stable.version == "2" and state.canary is None
    assert not pid_alive(old_stable.pid, old_stable.pid_start_ticks)
    assert _served_by(url, 20) == {"2": 20}


def test_canary_that_never_loads_raises_and_leaves_nothing_running(target: LocalProcessTarget, models):
    with pytest.raises(DeployError, match="did not become ready"):
        target.start_canary(ModelRef("fraud", "9", models["broken"]), ready_timeout_s=20)
    assert target.status().canary is None
    assert processes_with(str(models["broken"])) == []
    # a timeout (server up but never ready in time) cleans up the same way
    with pytest.raises(DeployError, match="did not become ready"):
        target.start_canary(ModelRef("fraud", "9", models["v2"]), ready_timeout_s=0.01)
    assert processes_with(str(models["v2"])) == []
    assert _served_by(target.status().router_url, 10) == {"1": 10}


def test_faulty_canary_fails_analysis_and_rollback_leaves_full_stable(target: LocalProcessTarget, models):
    url = target.status().router_url
    target.start_canary(ModelRef("fraud", "f", models["faulty"]))
    canary_pid = target.status().canary.pid
    load = LoadGenerator(url, RECORDS, rps=30, duration_s=60)
    outcome = run_canary(target, steps_pct=(30, 60), interval_s=2.0, max_extensions=2, thresholds=TH, load=load)
    assert not outcome.passed and outcome.rolled_back
    assert "error rate" in outcome.reason
    assert len(outcome.steps) == 1  # judged at the first step
    state = target.status()
    assert state.canary is None and state.stable.version == "1"
    assert not pid_alive(canary_pid, None)
    # only the faulty version answered errors; the stable answered everything else
    bad = [r for r in load.results() if r.status != 200]
    assert bad and all(r.served_version == "f" and r.status == 500 for r in bad), [
        r for r in bad if r.served_version != "f" or r.status != 500
    ]
    assert _served_by(url, 20) == {"1": 20}


def test_slow_canary_fails_on_latency(target: LocalProcessTarget, models):
    target.start_canary(ModelRef("fraud", "s", models["slow"]))
    load = LoadGenerator(target.status().router_url, RECORDS, rps=30, duration_s=60)
    outcome = run_canary(target, steps_pct=(50,), interval_s=2.0, max_extensions=2, thresholds=TH, load=load)
    assert not outcome.passed
    assert "latency" in outcome.reason, outcome.reason
    assert outcome.steps[-1].latency_p_value < TH.alpha
    assert target.status().canary is None


def test_good_canary_passes_and_is_promoted(target: LocalProcessTarget, models, tmp_path: Path):
    from include.mlops.canary.plot import plot_analysis

    old = target.status().stable
    target.start_canary(ModelRef("fraud", "2", models["v2"]))
    seen = []
    load = LoadGenerator(target.status().router_url, RECORDS, rps=30, duration_s=60)
    outcome = run_canary(
        target, steps_pct=(25, 50), interval_s=2.0, max_extensions=2, thresholds=TH, load=load, on_step=seen.append
    )
    assert outcome.passed, outcome.reason
    assert [s.weight_pct for s in seen if s.verdict == "pass"] == [25, 50]
    assert all(r.status == 200 for r in load.results())
    target.promote()
    state = target.status()
    assert state.stable.version == "2" and state.canary is None
    assert not pid_alive(old.pid, old.pid_start_ticks)
    assert plot_analysis(outcome.steps, tmp_path / "a.png").exists()


def test_too_little_traffic_fails_as_not_enough_to_judge(target: LocalProcessTarget, models):
    target.start_canary(ModelRef("fraud", "2", models["v2"]))
    outcome = run_canary(target, steps_pct=(10,), interval_s=0.3, max_extensions=1, thresholds=TH, load=None)
    assert not outcome.passed and "not enough traffic" in outcome.reason
    assert [s.verdict for s in outcome.steps] == ["inconclusive", "inconclusive"]
    assert target.status().canary is None
