"""Time from fault onset (first 5xx a faulty canary answers) to 100 % stable, vs Flagger's defaults.

Flagger's defaults (analysis interval 60 s, threshold 5 failed checks) roll back ~5 min after the
fault; target here: under 2 analysis intervals. Real processes, real Caddy, loopback load.
Run: PYTHONPATH=. .venv/bin/python bench/bench_rollback.py [--interval-s 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from include.mlops.canary.analysis import CanaryThresholds
from include.mlops.canary.load import LoadGenerator
from include.mlops.canary.runner import run_canary
from include.mlops.deploy.local import LocalProcessTarget
from include.mlops.deploy.target import ModelRef
from tests.model_fixtures import build_faulty_model, build_logistic_model, sample_records

FLAGGER_INTERVAL_S = 60.0
FLAGGER_THRESHOLD = 5


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interval-s", type=float, default=5.0)
    ap.add_argument("--rps", type=float, default=30.0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        target = LocalProcessTarget(d / "state", sys.executable, drain_timeout_s=10)
        try:
            target.ensure_stable(ModelRef("fraud", "1", build_logistic_model(d / "v1.onnx")))
            target.start_canary(ModelRef("fraud", "bad", build_faulty_model(d / "bad.onnx")))
            load = LoadGenerator(target.status().router_url, sample_records(100), rps=a.rps, duration_s=600)
            outcome = run_canary(
                target,
                steps_pct=(10, 25, 50),
                interval_s=a.interval_s,
                thresholds=CanaryThresholds(min_requests=10),
                load=load,
            )
            results = load.results()
            events = [json.loads(line) for line in (d / "state" / "events.jsonl").read_text().splitlines()]
        finally:
            target.stop_all()
    onset = min(r.started_at_unix for r in results if r.status >= 500)
    rolled = next(e["ts"] for e in events if e["event"] == "rollback")
    ours = rolled - onset
    flagger = FLAGGER_INTERVAL_S * FLAGGER_THRESHOLD
    after = [r for r in results if r.started_at_unix > rolled]
    print(f"outcome: passed={outcome.passed} reason={outcome.reason}")
    print(f"{'':28}{'this project':>14}{'Flagger default':>18}")
    print(f"{'analysis interval (s)':28}{a.interval_s:>14.1f}{FLAGGER_INTERVAL_S:>18.1f}")
    print(f"{'fault onset -> 100% stable':28}{ours:>13.2f}s{flagger:>17.0f}s")
    print(f"{'in analysis intervals':28}{ours / a.interval_s:>14.2f}{FLAGGER_THRESHOLD:>18.0f}")
    print(f"speed-up vs Flagger defaults: {flagger / ours:.0f}x; target < 2 intervals: {ours < 2 * a.interval_s}")
    print(f"requests after rollback: {len(after)}, non-200 among them: {sum(r.status != 200 for r in after)}")


if __name__ == "__main__":
    main()
