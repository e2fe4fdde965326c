"""The serving state lock across processes: several real processes change one LocalProcessTarget.

Writers in separate processes set the canary weight (Caddy's admin API is called under the lock)
and add bookkeeping records (a read-modify-write of state.json); readers in other processes read
state.json and status() all the while. The lock must lose no update, a reader must never see a
half-written file, and what Caddy applies must be what state.json says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from include.mlops.deploy import caddy
from include.mlops.deploy.local import LocalProcessTarget
from include.mlops.deploy.target import ModelRef
from tests.model_fixtures import build_logistic_model

pytestmark = pytest.mark.slow

WRITERS, ROUNDS, READERS = 4, 12, 2

WRITER = """
import sys
from pathlib import Path
from include.mlops.deploy.local import LocalProcessTarget
state_dir, me, rounds = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
t = LocalProcessTarget(state_dir, sys.executable)
for i in range(rounds):
    t.set_canary_weight(1 + me * rounds + i)  # every write a weight no other write uses
    t.set_record(f"w{me}-{i}", i)
"""

READER = """
import json, sys, time
from pathlib import Path
from include.mlops.deploy.local import LocalProcessTarget
state_dir, stop = Path(sys.argv[1]), Path(sys.argv[2])
t = LocalProcessTarget(state_dir, sys.executable)
reads = bad = 0
while not stop.exists():
    try:
        json.loads((state_dir / "state.json").read_text())
        assert 0 <= t.status().canary_weight_pct <= 100
    except ValueError:
        bad += 1
    reads += 1
print(json.dumps({"reads": reads, "bad": bad}))
"""


@pytest.fixture
def target(tmp_path: Path):  # type: ignore[no-untyped-def]
    t = LocalProcessTarget(tmp_path / "state", sys.executable, drain_timeout_s=5.0)
    t.ensure_stable(ModelRef("fraud", "1", build_logistic_model(tmp_path / "v1.onnx", seed=0)))
    t.start_canary(ModelRef("fraud", "2", build_logistic_model(tmp_path / "v2.onnx", seed=1)))
    yield t
    t.stop_all()


def test_concurrent_processes_lose_no_update_and_never_see_a_partial_state(
    target: LocalProcessTarget, tmp_path: Path
) -> None:
    stop = tmp_path / "stop"
    cwd = str(Path(__file__).resolve().parents[2])
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(target.state_dir), str(stop)], cwd=cwd, stdout=subprocess.PIPE, text=True
        )
        for _ in range(READERS)
    ]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target.state_dir), str(me), str(ROUNDS)],
            cwd=cwd,
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in range(WRITERS)
    ]
    try:
        for w in writers:
            _, err = w.communicate(timeout=240)
            assert w.returncode == 0, err[-2000:]
    finally:
        stop.touch()
        seen = [json.loads(r.communicate(timeout=60)[0]) for r in readers]

    assert all(s["reads"] > 0 for s in seen) and [s["bad"] for s in seen] == [0] * READERS, seen
    state = json.loads(target.state_path.read_text())
    # every writer's every record is there: no read-modify-write overwrote another's
    assert state["records"] == {f"w{me}-{i}": i for me in range(WRITERS) for i in range(ROUNDS)}
    # the last weight written is the one state.json holds and the one Caddy applies
    events = [json.loads(line) for line in (target.state_dir / "events.jsonl").read_text().splitlines()]
    weights = [e["canary_weight_pct"] for e in events if e["event"] == "weight"]
    assert sorted(weights) == list(range(1, WRITERS * ROUNDS + 1))
    assert state["canary_weight_pct"] == weights[-1] == target.status().canary_weight_pct
    expected = caddy.split_for(
        f"127.0.0.1:{state['stable']['port']}", f"127.0.0.1:{state['canary']['port']}", weights[-1]
    )
    assert caddy.current_split(state["router"]["admin_port"]) == expected
