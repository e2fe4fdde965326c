"""The canary loop's decisions, on an in-memory serving target and scripted samples.

The target below implements the DeployTarget protocol in memory (a stand-in for the local,
container or cluster target, not a mock of the runner); the sample source answers each fetch
from a script keyed by the fake clock, so every step's outcome, and when it comes, is known in
advance. With interval_s = 5 an interval is 5 ticks of 1 s: 4 early checks (ticks 1-4, two
fetches each) and the full-interval analysis after tick 5.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import scipy.stats  # noqa: F401 -- loaded at collection, not again in each mutant's fork

from include.mlops.canary.analysis import CanaryThresholds, Samples
from include.mlops.canary.runner import CanaryOutcome, HttpSampleSource, ProbeError, run_canary
from include.mlops.deploy.target import Backend, DeployTarget, ModelRef, ServingHealth, ServingState
from include.mlops.errors import MlopsError

TH = CanaryThresholds(min_requests=30)
STABLE = Backend("stable", "1", "http://127.0.0.1:1", "/m/1.onnx", pid=4141)
CANARY = Backend("canary", "2", "http://127.0.0.1:2", "/m/2.onnx", pid=4242)


def samples(n: int = 40, errors: int = 0) -> Samples:
    # the same latency and prediction pattern on both sides: only the errors differ
    return Samples(
        ts=tuple(float(i) for i in range(n)),
        latency_ms=tuple(100.0 + i % 10 for i in range(n)),
        status=tuple(500 if i < errors else 200 for i in range(n)),
        mean_prediction=tuple(None if i < errors else (i % 10) / 10 for i in range(n)),
    )


GOOD, BAD, FEW = samples(), samples(errors=20), samples(n=10)


@dataclass
class Clock:
    """The runner's sleep: no real waiting, counts ticks (and lets a test act at a given tick)."""

    slept: list[float] = field(default_factory=list)
    at_tick: dict[int, Callable[[], None]] = field(default_factory=dict)

    def __call__(self, s: float) -> None:
        # no scenario here needs 1,000 ticks: a loop that never ends fails at once instead of spinning
        assert len(self.slept) < 1_000, "the runner is still sleeping after 1,000 ticks"
        self.slept.append(s)
        action = self.at_tick.get(len(self.slept))
        if action is not None:
            action()

    @property
    def ticks(self) -> int:
        return len(self.slept)


@dataclass
class MemoryTarget:
    """A serving target held in memory: a stable, a canary, a weight, and each part's liveness."""

    stable: Backend | None = STABLE
    canary: Backend | None = CANARY
    weight: int = 0
    alive: dict[str, bool | None] = field(default_factory=lambda: {"stable": True, "canary": True, "router": True})
    restores: list[tuple[str, ...]] = field(default_factory=list)
    restore_result: tuple[str, ...] | None = None
    weights: list[int] = field(default_factory=list)
    rollbacks: list[str] = field(default_factory=list)
    health_calls: int = 0

    def status(self) -> ServingState:
        return ServingState("http://127.0.0.1:3", self.stable, self.canary, self.weight)

    def ensure_stable(self, model: ModelRef) -> Backend:
        raise NotImplementedError("not part of the canary loop")

    def start_canary(
        self, model: ModelRef, ready_timeout_s: float = 60.0, owner: dict[str, Any] | None = None
    ) -> Backend:
        raise NotImplementedError("not part of the canary loop")

    def set_canary_weight(self, pct: int) -> None:
        self.weight = pct
        self.weights.append(pct)

    def promote(self) -> Backend:
        raise NotImplementedError("promotion is the caller's step")

    def rollback(self, reason: str, owner: dict[str, Any] | None = None) -> bool:
        self.rollbacks.append(reason)
        had = self.canary is not None
        self.canary, self.weight = None, 0
        return had

    def canary_owner(self) -> dict[str, Any] | None:
        return None

    def backend_alive(self, b: Backend) -> bool:
        return True

    def record(self, key: str) -> Any:
        return None

    def set_record(self, key: str, value: Any) -> None:
        pass

    def health(self) -> ServingHealth:
        self.health_calls += 1
        return ServingHealth(self.alive["stable"], self.alive["canary"], self.alive["router"])

    def restore(self) -> tuple[str, ...]:
        dead = tuple(k for k in ("stable", "router") if self.alive[k] is False)
        for k in dead:
            self.alive[k] = True
        restored = dead if self.restore_result is None else self.restore_result
        self.restores.append(restored)
        return restored

    def stop_all(self) -> None:
        pass


Script = Callable[[str, int, bool], Samples]  # (backend name, tick, full-interval fetch) -> samples


@dataclass
class ScriptedSource:
    clock: Clock
    script: Script
    ticks_per_interval: int = 5
    fetches: list[tuple[str, int, float]] = field(default_factory=list)

    def fetch(self, backend: Backend, since_unix: float) -> Samples:
        tick = self.clock.ticks
        self.fetches.append((backend.name, tick, since_unix))
        return self.script(backend.name, tick, tick % self.ticks_per_interval == 0)


def always(s_stable: Samples, s_canary: Samples) -> Script:
    return lambda name, tick, full: s_stable if name == "stable" else s_canary


def run(target: MemoryTarget, script: Script, clock: Clock | None = None, **kw: Any) -> tuple[CanaryOutcome, Clock]:
    clock = clock or Clock()
    kw.setdefault("steps_pct", (10, 25, 50))
    kw.setdefault("interval_s", 5.0)
    kw.setdefault("thresholds", TH)
    out = run_canary(target, sample_source=ScriptedSource(clock, script), sleep=clock, **kw)
    return out, clock


def test_the_memory_target_is_a_deploy_target() -> None:
    assert isinstance(MemoryTarget(), DeployTarget)


def test_a_good_canary_walks_every_step_one_interval_each_and_is_not_rolled_back() -> None:
    target, seen = MemoryTarget(), []
    out, clock = run(target, always(GOOD, GOOD), on_step=seen.append)
    assert out.passed and out.reason == "all 3 steps passed"
    assert target.weights == [10, 25, 50] and target.rollbacks == []
    assert (out.final_canary_weight_pct, out.rolled_back, out.probe_errors, out.incidents) == (50, False, 0, ())
    assert [(s.weight_pct, s.step_index, s.extension, s.verdict) for s in out.steps] == [
        (10, 0, 0, "pass"),
        (25, 1, 0, "pass"),
        (50, 2, 0, "pass"),
    ]
    assert list(seen) == list(out.steps)
    assert all(s.analysed_at_unix is not None and s.analysed_at_unix >= out.started_at_unix for s in out.steps)
    # a pass needs the whole interval: 3 intervals of 5 ticks of 1 s, liveness checked on each tick
    assert clock.slept == [1.0] * 15 and target.health_calls == 15
    assert out.finished_at_unix >= out.started_at_unix and out.duration_s >= 0
    assert out.to_dict()["reason"] == "all 3 steps passed"


def test_each_interval_has_four_early_checks_and_one_full_analysis() -> None:
    target = MemoryTarget()
    clock = Clock()
    source = ScriptedSource(clock, always(GOOD, GOOD))
    before = time.time()
    run_canary(target, steps_pct=(10,), interval_s=5.0, thresholds=TH, sample_source=source, sleep=clock)
    assert [(name, tick) for name, tick, _ in source.fetches] == [
        (name, tick) for tick in (1, 2, 3, 4, 5) for name in ("stable", "canary")
    ]
    # every fetch asks for the samples since the step started
    assert len({since for _, _, since in source.fetches}) == 1
    assert isinstance(source.fetches[0][2], float) and source.fetches[0][2] >= before


def test_liveness_is_checked_about_every_second_within_a_tick() -> None:
    # 10 s interval: ticks of 2 s, each slept as 2 beats of 1 s with a liveness check after each
    target = MemoryTarget()
    out, clock = run(target, always(GOOD, GOOD), steps_pct=(10,), interval_s=10.0)
    assert out.passed and clock.slept == [1.0] * 10 and target.health_calls == 10
    # a short interval: one beat per tick, never a zero sleep
    target = MemoryTarget()
    out, clock = run(target, always(GOOD, GOOD), steps_pct=(10,), interval_s=0.5)
    assert out.passed and clock.slept == pytest.approx([0.1] * 5) and target.health_calls == 5


def test_a_failing_canary_is_rolled_back_at_the_first_early_check() -> None:
    target, seen = MemoryTarget(), []
    out, clock = run(target, always(GOOD, BAD), on_step=seen.append)
    assert out.passed is False and out.rolled_back and out.final_canary_weight_pct == 0
    assert out.reason.startswith("step 0 at 10 % (early check): canary error rate 50.0% > max 2.0%")
    assert target.rollbacks == [out.reason] and target.weights == [10]
    assert clock.ticks == 1  # one tick, not the whole interval
    assert [(s.weight_pct, s.step_index, s.extension, s.verdict) for s in out.steps] == [(10, 0, 0, "fail")]
    assert seen == list(out.steps) and out.steps[0].analysed_at_unix is not None


def test_a_canary_failing_only_at_the_full_interval_fails_that_step() -> None:
    # early checks see too few requests (inconclusive, not a failure); the full analysis sees errors
    target = MemoryTarget()
    out, clock = run(target, lambda name, tick, full: (BAD if name == "canary" else GOOD) if full else FEW)
    assert out.reason.startswith("step 0 at 10 %: canary error rate 50.0%")
    assert clock.ticks == 5 and out.rolled_back and len(out.steps) == 1


def test_a_failure_in_a_later_step_names_that_step() -> None:
    target = MemoryTarget()
    out, _ = run(target, lambda name, tick, full: BAD if name == "canary" and tick > 5 else GOOD)
    assert out.reason.startswith("step 1 at 25 % (early check): ")
    assert [s.step_index for s in out.steps] == [0, 1] and target.weights == [10, 25]


def test_without_rollback_on_failure_the_canary_keeps_its_weight() -> None:
    target = MemoryTarget()
    out, _ = run(target, always(GOOD, BAD), rollback_on_failure=False)
    assert out.passed is False and not out.rolled_back and out.final_canary_weight_pct == 10
    assert target.rollbacks == [] and target.canary == CANARY


def test_too_little_traffic_extends_the_step_up_to_max_extensions_then_fails() -> None:
    target = MemoryTarget()
    out, clock = run(target, always(FEW, FEW), max_extensions=2)
    assert out.reason == (
        "not enough traffic to judge at 10 % after 2 extensions: "
        "too few requests to judge: stable 10, canary 10, need 30 each"
    )
    assert [(s.step_index, s.extension, s.verdict) for s in out.steps] == [
        (0, 0, "inconclusive"),
        (0, 1, "inconclusive"),
        (0, 2, "inconclusive"),
    ]
    assert out.passed is False
    assert clock.ticks == 15 and out.rolled_back


def test_no_extensions_allowed_fails_the_first_inconclusive_step() -> None:
    out, clock = run(MemoryTarget(), always(FEW, FEW), max_extensions=0)
    assert out.reason.startswith("not enough traffic to judge at 10 % after 0 extensions")
    assert len(out.steps) == 1 and clock.ticks == 5


def test_an_extended_step_that_gets_enough_traffic_passes_and_the_next_starts_fresh() -> None:
    # step 0's first interval is short of traffic, its extension (ticks 6-10) has enough
    out, clock = run(MemoryTarget(), lambda name, tick, full: FEW if tick <= 5 else GOOD, max_extensions=1)
    assert out.passed
    assert [(s.step_index, s.extension, s.verdict) for s in out.steps] == [
        (0, 0, "inconclusive"),
        (0, 1, "pass"),
        (1, 0, "pass"),
        (2, 0, "pass"),
    ]
    assert clock.ticks == 20


def probe_error(name: str) -> ProbeError:
    return ProbeError(f"cannot read samples of {name}: connection refused")


def test_consecutive_probe_errors_up_to_the_limit_fail_the_canary() -> None:
    def script(name: str, tick: int, full: bool) -> Samples:
        raise probe_error(name)

    target = MemoryTarget()
    out, clock = run(target, script, failure_limit=3)
    # early-check probe errors are not counted, the 3 full-interval ones are
    assert out.reason == "3 consecutive probe errors; last: cannot read samples of stable: connection refused"
    assert out.passed is False
    assert out.probe_errors == 3 and out.steps == () and clock.ticks == 15
    assert out.rolled_back and target.rollbacks == [out.reason]


def test_a_failure_limit_of_one_fails_at_the_first_probe_error() -> None:
    def script(name: str, tick: int, full: bool) -> Samples:
        if name == "canary":
            raise probe_error(name)
        return GOOD

    out, clock = run(MemoryTarget(), script, failure_limit=1)
    assert out.reason == "1 consecutive probe errors; last: cannot read samples of canary: connection refused"
    assert out.probe_errors == 1 and clock.ticks == 5


def test_probe_errors_apart_are_counted_but_do_not_fail_the_canary() -> None:
    # the full fetch fails at ticks 5 and 10 (step 0), succeeds at 15; fails at 20 and 25 (step 1):
    # never 3 in a row, 4 in all
    def script(name: str, tick: int, full: bool) -> Samples:
        if full and tick in (5, 10, 20, 25):
            raise probe_error(name)
        return GOOD

    out, clock = run(MemoryTarget(), script, failure_limit=3)
    assert out.passed and out.probe_errors == 4
    assert [(s.step_index, s.extension) for s in out.steps] == [(0, 0), (1, 0), (2, 0)]
    assert clock.ticks == 35


def test_a_probe_error_in_an_early_check_does_not_hide_a_later_early_failure() -> None:
    def script(name: str, tick: int, full: bool) -> Samples:
        if tick == 1:
            raise probe_error(name)
        return BAD if name == "canary" else GOOD

    out, clock = run(MemoryTarget(), script)
    assert "(early check)" in out.reason and clock.ticks == 2 and out.probe_errors == 0


def test_a_canary_that_disappears_from_the_target_fails_the_analysis() -> None:
    # someone removed the canary (another release's rollback) during the first interval
    target = MemoryTarget()
    clock = Clock()
    clock.at_tick[2] = lambda: setattr(target, "canary", None)
    out, _ = run(target, always(GOOD, GOOD), clock=clock)
    assert out.passed is False
    assert out.reason == "canary or stable disappeared from the target during analysis"
    assert clock.ticks == 2  # the early check noticed, the interval was not slept out
    assert out.rolled_back and target.rollbacks == [out.reason] and out.steps == ()


def test_a_stable_that_disappears_from_the_target_fails_the_analysis() -> None:
    target = MemoryTarget()
    clock = Clock()
    clock.at_tick[5] = lambda: setattr(target, "stable", None)
    out, _ = run(target, always(GOOD, GOOD), clock=clock)
    assert out.reason == "canary or stable disappeared from the target during analysis"
    assert clock.ticks == 5


def test_a_dead_canary_fails_the_canary_at_once_naming_it() -> None:
    target = MemoryTarget()
    clock = Clock()
    clock.at_tick[8] = lambda: target.alive.update(canary=False)
    out, _ = run(target, always(GOOD, GOOD), clock=clock)
    assert out.reason == "step 1 at 25 %: canary v2 (pid 4242) died: its process is not running"
    assert out.passed is False
    assert clock.ticks == 8 and out.rolled_back and target.rollbacks == [out.reason]
    assert len(out.steps) == 1  # step 0 passed, step 1 never analysed


def test_a_dead_canary_no_longer_recorded_is_still_named_a_dead_canary() -> None:
    target = MemoryTarget()
    clock = Clock()

    def die() -> None:
        target.alive["canary"] = False
        target.canary = None

    clock.at_tick[1] = die
    out, _ = run(target, always(GOOD, GOOD), clock=clock)
    assert out.reason == "step 0 at 10 %: canary died: its process is not running"


@pytest.mark.parametrize(
    ("dead", "named"), [(("router",), "router"), (("stable",), "stable"), (("stable", "router"), "stable and router")]
)
def test_a_dead_stable_or_router_is_restored_and_the_canary_goes_on(dead: tuple[str, ...], named: str) -> None:
    target = MemoryTarget()
    clock = Clock()
    clock.at_tick[3] = lambda: target.alive.update(dict.fromkeys(dead, False))
    out, _ = run(target, always(GOOD, GOOD), clock=clock)
    assert out.passed and target.restores == [dead]
    assert len(out.incidents) == 1
    time_of_day, rest = out.incidents[0].split(" ", 1)
    assert len(time_of_day) == 8 and time_of_day[2] == time_of_day[5] == ":"
    assert rest.startswith(f"{named} died during the analysis; restored in ")
    assert rest.endswith(f" s: {', '.join(dead)}")
    took = float(rest.split("restored in ", 1)[1].split(" s: ", 1)[0])
    assert 0 <= took < 5  # the in-memory restore is instant


def test_a_restore_that_finds_nothing_to_do_says_so() -> None:
    target = MemoryTarget(restore_result=())
    clock = Clock()
    clock.at_tick[1] = lambda: target.alive.update(router=False)
    out, _ = run(target, always(GOOD, GOOD), clock=clock, steps_pct=(10,))
    assert out.passed and out.incidents[0].endswith("s: nothing (already restored)")


def test_a_part_with_nothing_recorded_is_not_dead() -> None:
    # health None (nothing recorded for that part) is not False: no restore, no failure
    target = MemoryTarget()
    target.alive.update(router=None)
    out, _ = run(target, always(GOOD, GOOD), steps_pct=(10,))
    assert out.passed and target.restores == [] and out.incidents == ()


@pytest.mark.parametrize("steps", [(), (0, 50), (10, 100), (50, 25), (10, 101)])
def test_steps_must_be_increasing_percentages_below_100(steps: tuple[int, ...]) -> None:
    with pytest.raises(MlopsError) as exc:
        run(MemoryTarget(), always(GOOD, GOOD), steps_pct=steps)
    assert str(exc.value) == f"steps_pct={list(steps)!r} must be increasing percentages in 1..99"


def test_the_first_and_last_allowed_steps() -> None:
    out, _ = run(MemoryTarget(), always(GOOD, GOOD), steps_pct=(1, 99))
    assert out.passed and out.final_canary_weight_pct == 99


@pytest.mark.parametrize(
    ("kw", "shown"),
    [
        ({"interval_s": 0.0}, "interval_s=0.0"),
        ({"max_extensions": -1}, "max_extensions=-1"),
        ({"failure_limit": 0}, "failure_limit=0"),
    ],
)
def test_loop_params_out_of_range_are_refused(kw: dict[str, Any], shown: str) -> None:
    with pytest.raises(MlopsError, match=r"must be > 0, max_extensions=.* >= 0, failure_limit=.* >= 1") as exc:
        run(MemoryTarget(), always(GOOD, GOOD), **kw)
    assert shown in str(exc.value)


def test_the_smallest_loop_params_are_accepted() -> None:
    out, _ = run(MemoryTarget(), always(GOOD, GOOD), steps_pct=(10,), max_extensions=0, failure_limit=1)
    assert out.passed


def test_default_thresholds_judge_the_steps() -> None:
    # no thresholds given: CanaryThresholds() (min_requests 30): 40 requests per side suffice
    target = MemoryTarget()
    clock = Clock()
    out = run_canary(
        target, steps_pct=(10,), interval_s=5.0, sample_source=ScriptedSource(clock, always(GOOD, GOOD)), sleep=clock
    )
    assert out.passed


@dataclass
class StandInLoad:
    """The load generator's start/stop contract: started unless already running, always stopped."""

    _thread: object | None = None
    calls: list[str] = field(default_factory=list)

    def start(self) -> StandInLoad:
        self.calls.append("start")
        self._thread = object()
        return self

    def stop(self) -> list[Any]:
        self.calls.append("stop")
        return []


def test_the_load_is_started_and_stopped_around_the_analysis_even_on_failure() -> None:
    load = StandInLoad()
    run(MemoryTarget(), always(GOOD, GOOD), load=load)
    assert load.calls == ["start", "stop"]
    load = StandInLoad()
    run(MemoryTarget(), always(GOOD, BAD), load=load)
    assert load.calls == ["start", "stop"]
    load = StandInLoad(_thread=object())  # already running: not started again
    run(MemoryTarget(), always(GOOD, GOOD), load=load)
    assert load.calls == ["stop"]


# the HTTP sample source against a real HTTP server on loopback


@pytest.fixture
def samples_server() -> Iterator[tuple[str, list[str]]]:
    paths: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            if "since=1.0" in self.path:
                body, code = b'{"status": [200], "latency_ms": [3.0], "mean_prediction": [0.5], "ts": [2.0]}', 200
            elif "since=2.0" in self.path:
                body, code = b"not json", 200
            else:
                body, code = b"boom", 500
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", paths
    server.shutdown()
    server.server_close()


def _backend(url: str) -> Backend:
    return Backend("canary", "2", url, "/m/2.onnx")


def test_http_source_reads_the_samples_since_a_time(samples_server: tuple[str, list[str]]) -> None:
    url, paths = samples_server
    s = HttpSampleSource(timeout_s=5.0).fetch(_backend(url), 1.0)
    assert s == Samples(ts=(2.0,), latency_ms=(3.0,), status=(200,), mean_prediction=(0.5,))
    assert paths == ["/samples?since=1.0"]


@pytest.mark.parametrize(("since", "why"), [(2.0, "Expecting value"), (3.0, "500 Internal Server Error")])
def test_http_source_turns_bad_answers_into_probe_errors(
    samples_server: tuple[str, list[str]], since: float, why: str
) -> None:
    url, _ = samples_server
    with pytest.raises(ProbeError, match=rf"^cannot read samples of canary v2 at {url}: .*{why}"):
        HttpSampleSource().fetch(_backend(url), since)


def test_http_source_turns_a_refused_connection_into_a_probe_error() -> None:
    with socket.socket() as s:  # a port bound and never listened on: connections are refused
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(ProbeError, match=rf"^cannot read samples of canary v2 at {url}: "):
            HttpSampleSource(timeout_s=2.0).fetch(_backend(url), 0.0)


def test_http_source_default_timeout() -> None:
    assert HttpSampleSource().timeout_s == 5.0


def test_http_source_answers_the_source_protocol_to_json_round_trip() -> None:
    # what a server's /samples returns is what Samples.from_json reads
    d = {"status": [200, 503], "latency_ms": [1.0, 2.0], "mean_prediction": [0.1, None], "ts": [0.0, 1.0]}
    assert Samples.from_dict(json.loads(json.dumps(d))).n_errors == 1


def test_the_restore_is_logged_as_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    target = MemoryTarget()
    clock = Clock()
    clock.at_tick[1] = lambda: target.alive.update(router=False)
    with caplog.at_level("WARNING", logger="include.mlops.canary.runner"):
        out, _ = run(target, always(GOOD, GOOD), clock=clock, steps_pct=(10,))
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == list(out.incidents)


TWO_FAULTS = Samples(
    ts=GOOD.ts,
    latency_ms=tuple(10 * v for v in GOOD.latency_ms),  # 10x slower: the median rule fails too
    status=BAD.status,
    mean_prediction=BAD.mean_prediction,
)


def test_every_reason_of_a_failed_step_is_given_joined_by_semicolons() -> None:
    out, _ = run(MemoryTarget(), always(GOOD, TWO_FAULTS))
    head, reasons = out.reason.split(": ", 1)
    assert head == "step 0 at 10 % (early check)"
    assert reasons == "; ".join(out.steps[0].reasons) and len(out.steps[0].reasons) >= 2
    # the same at the full-interval analysis
    out, _ = run(MemoryTarget(), lambda name, tick, full: (TWO_FAULTS if name == "canary" else GOOD) if full else FEW)
    assert out.reason == "step 0 at 10 %: " + "; ".join(out.steps[0].reasons)
    assert out.passed is False


def test_an_early_failure_in_an_extension_records_the_extension() -> None:
    # the first interval is short of traffic; in the extension the first early check (tick 6) fails
    out, clock = run(MemoryTarget(), lambda name, tick, full: FEW if tick <= 5 else (BAD if name == "canary" else GOOD))
    assert [(s.step_index, s.extension, s.verdict) for s in out.steps] == [(0, 0, "inconclusive"), (0, 1, "fail")]
    assert clock.ticks == 6


def test_a_successful_probe_resets_the_count_of_consecutive_probe_errors() -> None:
    # step 0, failure_limit 3: error (tick 5), too little traffic (10: extended), error (15), error (20),
    # pass (25): never 3 in a row
    def script(name: str, tick: int, full: bool) -> Samples:
        if full and tick in (5, 15, 20):
            raise probe_error(name)
        return FEW if tick <= 10 else GOOD

    out, _ = run(MemoryTarget(), script, steps_pct=(10,), failure_limit=3, max_extensions=1)
    assert out.passed and out.probe_errors == 3


def test_the_loop_defaults_interval_30_s_two_extensions_three_probe_errors() -> None:
    def run_defaults(script: Script) -> tuple[CanaryOutcome, Clock]:
        clock = Clock()
        return run_canary(
            MemoryTarget(), steps_pct=(10,), thresholds=TH, sample_source=ScriptedSource(clock, script, 30), sleep=clock
        ), clock

    out, clock = run_defaults(always(GOOD, GOOD))
    assert out.passed and clock.slept == [1.0] * 30  # 5 ticks of 6 s, each 6 beats of 1 s
    out, clock = run_defaults(always(FEW, FEW))
    assert len(out.steps) == 3 and out.reason.startswith("not enough traffic to judge at 10 % after 2 extensions")

    def down(name: str, tick: int, full: bool) -> Samples:
        raise probe_error(name)

    out, clock = run_defaults(down)
    assert out.probe_errors == 3 and out.reason.startswith("3 consecutive probe errors")


def test_http_source_gives_up_on_a_server_that_hangs_after_its_timeout() -> None:
    # a server that accepts and never answers in time: a probe error after timeout_s, not a hang
    release = threading.Event()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            release.wait(3.0)
            body = b'{"status": []}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        t0 = time.monotonic()
        with pytest.raises(ProbeError, match=rf"^cannot read samples of canary v2 at {url}: "):
            HttpSampleSource(timeout_s=0.3).fetch(_backend(url), 0.0)
        assert time.monotonic() - t0 < 2.5
    finally:
        release.set()
        server.shutdown()
        server.server_close()
