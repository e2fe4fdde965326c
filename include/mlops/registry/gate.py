"""The promotion gate: does the challenger beat the champion on the same holdout set?

Pure logic, no MLflow: the decision and its numbers are what gets tagged and logged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from include.mlops.errors import SettingsError

# metric -> True when higher is better
GATE_METRICS: dict[str, bool] = {"auc": True, "f1": True, "accuracy": True, "log_loss": False}


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    metric: str
    challenger_value: float
    champion_value: float | None
    min_improvement: float
    improvement: float | None
    reason: str

    def as_tags(self) -> dict[str, str]:
        return {
            "gate.decision": "passed" if self.passed else "rejected",
            "gate.metric": self.metric,
            "gate.challenger_value": f"{self.challenger_value:.6f}",
            "gate.champion_value": "none" if self.champion_value is None else f"{self.champion_value:.6f}",
            "gate.min_improvement": f"{self.min_improvement:.6f}",
            "gate.reason": self.reason,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_promotion(
    metric: str,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    *,
    min_improvement: float,
) -> GateDecision:
    """Pass when the challenger improves `metric` by at least `min_improvement` (absolute).

    No champion yet: the first model passes as champion candidate. A NaN metric never passes.
    """
    if metric not in GATE_METRICS:
        raise SettingsError(f"param gate_metric={metric!r}: must be one of {sorted(GATE_METRICS)}")
    if not math.isfinite(min_improvement) or min_improvement < 0:
        raise SettingsError(f"param gate_min_improvement={min_improvement!r}: must be a finite number >= 0")
    if metric not in challenger:
        raise SettingsError(f"challenger metrics have no {metric!r}: got {sorted(challenger)}")
    raw = challenger[metric]
    value = math.nan if raw is None else float(raw)
    if not math.isfinite(value):
        return GateDecision(False, metric, value, None, min_improvement, None, f"challenger {metric} is {value}")
    if champion is None:
        return GateDecision(
            True, metric, value, None, min_improvement, None, "no champion yet: first model is the champion candidate"
        )
    raw_base = champion.get(metric)
    base = math.nan if raw_base is None else float(raw_base)
    if not math.isfinite(base):
        return GateDecision(
            True, metric, value, None, min_improvement, None, f"champion {metric} is undefined on this holdout"
        )
    higher_better = GATE_METRICS[metric]
    improvement = (value - base) if higher_better else (base - value)
    passed = improvement >= min_improvement
    verb = "beats" if passed else "does not beat"
    reason = (
        f"challenger {metric}={value:.4f} {verb} champion {metric}={base:.4f} "
        f"by the required {min_improvement:.4f} (improvement {improvement:+.4f})"
    )
    return GateDecision(passed, metric, value, base, min_improvement, improvement, reason)
