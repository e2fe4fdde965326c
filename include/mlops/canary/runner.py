"""The canary loop: raise the canary's weight step by step, judge each step, roll back on failure.

Failure policy (Flagger-like, but judged on statistics rather than a fixed count of bad checks):
- a metric failure (errors, latency or prediction drift, significant at alpha) fails the canary
  at once: each step already needs min_requests per side, so one failure is evidence, not noise;
  failures are also checked 4 times within each interval, so a broken canary does not wait
  for the end of its step (a pass always needs the full interval);
- an inconclusive step (too little traffic) is extended by one interval, up to max_extensions,
  then the canary fails with "not enough traffic to judge";
- probe errors (a /samples endpoint unreachable) are counted apart; failure_limit consecutive
  ones fail the canary (the network blipped, or the server hangs);
- liveness is checked about every second (target.health(), no HTTP): a dead canary fails the
  canary at once, naming it (it is never restarted); a dead stable or router is restored from
  the recorded state (target.restore()) and the step goes on, the restoration listed in
  `incidents`. Waiting for probe errors took 3 intervals, 15-19 s of failed requests measured.
On failure the target is rolled back at once (stable 100 %) unless rollback_on_failure is False.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from include.mlops.canary.analysis import CanaryThresholds, Samples, StepAnalysis, analyse_canary_step
from include.mlops.errors import MlopsError

if TYPE_CHECKING:
    from include.mlops.canary.load import LoadGenerator
    from include.mlops.deploy.target import Backend, DeployTarget

log = logging.getLogger(__name__)
LIVENESS_INTERVAL_S = 1.0


class ProbeError(MlopsError):
    """The samples of a backend could not be read."""


class SampleSource(Protocol):
    """Where request samples of a backend come from (the server's /samples; Prometheus in a cluster)."""

    def fetch(self, backend: Backend, since_unix: float) -> Samples: ...


class HttpSampleSource:
    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s

    def fetch(self, backend: Backend, since_unix: float) -> Samples:
        import httpx

        try:
            r = httpx.get(f"{backend.url}/samples", params={"since": since_unix}, timeout=self.timeout_s)
            r.raise_for_status()
            return Samples.from_dict(r.json())
        except (httpx.HTTPError, ValueError) as exc:
            raise ProbeError(
                f"cannot read samples of {backend.name} v{backend.version} at {backend.url}: {exc}"
            ) from exc


@dataclass(frozen=True)
class CanaryOutcome:
    passed: bool
    reason: str
    steps: tuple[StepAnalysis, ...]
    final_canary_weight_pct: int
    rolled_back: bool
    probe_errors: int
    started_at_unix: float
    finished_at_unix: float
    # what died and was restored during the analysis (e.g. the router), with when
    incidents: tuple[str, ...] = ()

    @property
    def duration_s(self) -> float:
        return self.finished_at_unix - self.started_at_unix

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CanaryDied(MlopsError):
    """The canary's process is gone: a failed canary (never restarted)."""


def _check_liveness(target: DeployTarget, incidents: list[str]) -> None:
    """Raise CanaryDied for a dead canary; restore a dead stable or router and note it in incidents."""
    health = target.health()
    if health.canary is False:
        c = target.status().canary
        what = f"v{c.version} (pid {c.pid})" if c is not None else ""
        raise CanaryDied(f"canary {what} died: its process is not running".replace("  ", " "))
    if health.stable is False or health.router is False:
        dead = [k for k in health.dead if k != "canary"]
        t0 = time.monotonic()
        restored = target.restore()
        incidents.append(
            f"{time.strftime('%H:%M:%S')} {' and '.join(dead)} died during the analysis; restored in "
            f"{time.monotonic() - t0:.1f} s: " + (", ".join(restored) or "nothing (already restored)")
        )
        log.warning("%s", incidents[-1])


def _watch_for_early_failure(
    target: DeployTarget,
    source: SampleSource,
    thresholds: CanaryThresholds,
    step_start: float,
    interval_s: float,
    sleep: Callable[[float], None],
    incidents: list[str],
    checks: int = 5,
) -> StepAnalysis | None:
    """Sleep through one interval, checking `checks` times; return the analysis as soon as it fails.

    A pass needs the whole interval, a failure does not: a broken canary is rolled back within
    one interval of getting min_requests, instead of at the end of the step. Liveness is
    checked about every second in between (CanaryDied for a dead canary).
    """
    tick = interval_s / checks
    beats = max(1, math.ceil(tick / LIVENESS_INTERVAL_S))
    for i in range(checks):
        for _ in range(beats):
            sleep(tick / beats)
            _check_liveness(target, incidents)
        if i == checks - 1:
            return None  # the full-interval analysis follows in the caller
        state = target.status()
        if state.canary is None or state.stable is None:
            return None
        try:
            a = analyse_canary_step(
                source.fetch(state.stable, step_start), source.fetch(state.canary, step_start), thresholds
            )
        except ProbeError:
            continue  # probes are judged (and counted) at the end of the interval
        if a.verdict == "fail":
            return a
    return None


def run_canary(
    target: DeployTarget,
    steps_pct: Sequence[int] = (10, 25, 50),
    interval_s: float = 30.0,
    *,
    max_extensions: int = 2,
    failure_limit: int = 3,
    thresholds: CanaryThresholds | None = None,
    load: LoadGenerator | None = None,
    on_step: Callable[[StepAnalysis], None] | None = None,
    sample_source: SampleSource | None = None,
    rollback_on_failure: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> CanaryOutcome:
    """Walk the canary through steps_pct; returns the outcome (promotion is the caller's next step)."""
    thresholds = thresholds or CanaryThresholds()
    source = sample_source or HttpSampleSource()
    # 100 % is promotion's job: at 100 % the stable gets no traffic to compare against
    if not steps_pct or any(not 0 < p < 100 for p in steps_pct) or list(steps_pct) != sorted(steps_pct):
        raise MlopsError(f"steps_pct={list(steps_pct)} must be increasing percentages in 1..99")
    if interval_s <= 0 or max_extensions < 0 or failure_limit < 1:
        raise MlopsError(
            f"interval_s={interval_s} must be > 0, max_extensions={max_extensions} >= 0, "
            f"failure_limit={failure_limit} >= 1"
        )
    # scipy's first import takes seconds on a busy machine; paid here, not inside the first
    # check, where it would delay the liveness checks around it
    import scipy.stats  # noqa: F401

    started = time.time()
    analyses: list[StepAnalysis] = []
    incidents: list[str] = []
    probe_errors = 0
    weight = 0

    def finish(passed: bool, reason: str) -> CanaryOutcome:
        rolled_back = False
        if not passed and rollback_on_failure:
            target.rollback(reason)
            rolled_back = True
        return CanaryOutcome(
            passed=passed,
            reason=reason,
            steps=tuple(analyses),
            final_canary_weight_pct=0 if rolled_back else weight,
            rolled_back=rolled_back,
            probe_errors=probe_errors,
            started_at_unix=started,
            finished_at_unix=time.time(),
            incidents=tuple(incidents),
        )

    if load is not None and getattr(load, "_thread", None) is None:
        load.start()
    try:
        for index, pct in enumerate(steps_pct):
            target.set_canary_weight(pct)
            weight = pct
            step_start = time.time()
            extensions = 0
            consecutive_probe_errors = 0
            while True:
                try:
                    early = _watch_for_early_failure(
                        target, source, thresholds, step_start, interval_s, sleep, incidents
                    )
                except CanaryDied as exc:
                    return finish(False, f"step {index} at {pct} %: {exc}")
                if early is not None:
                    a = replace(
                        early, weight_pct=pct, step_index=index, extension=extensions, analysed_at_unix=time.time()
                    )
                    analyses.append(a)
                    if on_step is not None:
                        on_step(a)
                    return finish(False, f"step {index} at {pct} % (early check): " + "; ".join(a.reasons))
                state = target.status()
                if state.canary is None or state.stable is None:
                    return finish(False, "canary or stable disappeared from the target during analysis")
                try:
                    s_stable = source.fetch(state.stable, step_start)
                    s_canary = source.fetch(state.canary, step_start)
                except ProbeError as exc:
                    probe_errors += 1
                    consecutive_probe_errors += 1
                    if consecutive_probe_errors >= failure_limit:
                        return finish(False, f"{consecutive_probe_errors} consecutive probe errors; last: {exc}")
                    continue
                consecutive_probe_errors = 0
                a = replace(
                    analyse_canary_step(s_stable, s_canary, thresholds),
                    weight_pct=pct,
                    step_index=index,
                    extension=extensions,
                    analysed_at_unix=time.time(),
                )
                analyses.append(a)
                if on_step is not None:
                    on_step(a)
                if a.verdict == "pass":
                    break
                if a.verdict == "fail":
                    return finish(False, f"step {index} at {pct} %: " + "; ".join(a.reasons))
                extensions += 1
                if extensions > max_extensions:
                    return finish(
                        False,
                        f"not enough traffic to judge at {pct} % after {max_extensions} extensions: {a.reasons[0]}",
                    )
        return finish(True, f"all {len(steps_pct)} steps passed")
    finally:
        if load is not None:
            load.stop()
