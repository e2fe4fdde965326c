"""The release form: its parameters, their bounds and their validation, done once at the first task.

Every rule names its param, value and rule. Kept apart from the release steps (releasing.py): the
DAG's Param schema reads the same bounds at parse time, and this is the one part of a release
that is pure logic (`make mutation` mutates this module).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from include.mlops.errors import InvalidReleaseParams

if TYPE_CHECKING:
    from include.mlops.canary.analysis import CanaryThresholds

# Upper bounds of the form (the DAG's Param schema uses the same numbers): a typo such as
# interval_s=20000 must be refused, not hold the serving target for days.
PARAM_MAXIMA: dict[str, float] = {
    "interval_s": 600,
    "ready_timeout_s": 600,
    "load_rps": 1000,
    "min_requests": 100_000,
    "max_extensions": 10,
    "failure_limit": 100,
    "max_p99_latency_ratio": 100,
}
MAX_STEPS = 20
# The analysis lasts at most steps x (1 + max_extensions) x interval_s; that product is bounded too,
# so the analyse task's execution_timeout (a fixed number: it cannot be templated from params)
# is at most a margin above the longest analysis any valid form asks for.
MAX_ANALYSIS_S = 2 * 3600


@dataclass(frozen=True)
class ReleaseParams:
    """The release form, validated once at the first task; every rule names its param."""

    model_name: str
    version: str = "challenger"
    steps_pct: tuple[int, ...] = (10, 25, 50, 100)
    interval_s: float = 20.0
    min_requests: int = 30
    max_extensions: int = 2
    failure_limit: int = 3
    max_error_rate: float = 0.02
    max_p99_latency_ratio: float = 1.5
    max_prediction_drift: float = 0.3
    ready_timeout_s: float = 60.0
    load_rps: float = 20.0
    require_approval: bool = False
    allow_gate_rejected: bool = False
    dry_run: bool = False
    # the serving state (state.json) was lost on purpose: serve this version as a first release
    reset_serving_state: bool = False

    def __post_init__(self) -> None:
        def bad(param: str, rule: str) -> InvalidReleaseParams:
            return InvalidReleaseParams(f"param {param}={getattr(self, param)!r}: {rule}")

        if not self.model_name or not self.model_name.strip():
            raise bad("model_name", "must name a registered model")
        if not self.version or not str(self.version).strip():
            raise bad("version", "must be a version number or an alias such as 'challenger'")
        steps = self.steps_pct
        if not steps:
            raise bad("steps_pct", "needs at least one step")
        if any(isinstance(s, bool) or not isinstance(s, int) or not 0 < s <= 100 for s in steps):
            raise bad("steps_pct", "every step must be an integer in 1..100")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise bad("steps_pct", "weights must be strictly increasing")
        if steps[-1] != 100:
            raise bad("steps_pct", "the last step must be 100 (the canary takes all traffic when promoted)")
        if len(steps) > MAX_STEPS:
            raise bad("steps_pct", f"at most {MAX_STEPS} steps")
        for name, low in (("interval_s", 0.0), ("ready_timeout_s", 0.0), ("load_rps", 0.0)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= low:
                raise bad(name, f"must be a number > {low:g}")
        for name in ("min_requests", "failure_limit"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        if self.max_extensions < 0:
            raise bad("max_extensions", "must be >= 0")
        if not 0 <= self.max_error_rate <= 1:
            raise bad("max_error_rate", "must be in 0..1")
        if self.max_p99_latency_ratio < 1:
            raise bad("max_p99_latency_ratio", "must be >= 1 (canary may be at most this many times slower)")
        if not 0 < self.max_prediction_drift <= 1:
            raise bad("max_prediction_drift", "must be in (0, 1] (Kolmogorov-Smirnov statistic)")
        for name, maximum in PARAM_MAXIMA.items():
            if getattr(self, name) > maximum:
                raise bad(name, f"must be <= {maximum:g} (the maximum)")
        longest = len(self.analysis_steps) * (1 + self.max_extensions) * self.interval_s
        if longest > MAX_ANALYSIS_S:
            raise bad(
                "interval_s",
                f"the analysis could last {len(self.analysis_steps)} steps x (1 + max_extensions "
                f"{self.max_extensions}) x interval_s = {longest:g} s, more than the maximum {MAX_ANALYSIS_S} s",
            )

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ReleaseParams:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in params.items() if k in known}
        if "steps_pct" in values:
            values["steps_pct"] = tuple(values["steps_pct"])
        if "version" in values:
            values["version"] = str(values["version"])
        try:
            return cls(**values)
        except TypeError as e:
            raise InvalidReleaseParams(f"release params: {e}") from e

    @property
    def analysis_steps(self) -> tuple[int, ...]:
        """Steps analysed against the stable; the final 100 % is the promotion itself."""
        return tuple(s for s in self.steps_pct if s < 100)

    def thresholds(self) -> CanaryThresholds:
        from include.mlops.canary.analysis import CanaryThresholds

        return CanaryThresholds(
            max_error_rate=self.max_error_rate,
            max_p99_latency_ratio=self.max_p99_latency_ratio,
            max_prediction_drift=self.max_prediction_drift,
            min_requests=self.min_requests,
        )
