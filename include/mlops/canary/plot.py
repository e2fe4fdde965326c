"""A PNG of a canary's analysis steps (latency, errors, drift per step), logged with the model version."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from include.mlops.canary.analysis import StepAnalysis

_COLOURS = {"pass": "tab:green", "fail": "tab:red", "inconclusive": "tab:gray"}


def plot_analysis(steps: Sequence[StepAnalysis], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    x = list(range(len(steps)))
    labels = [f"{s.weight_pct if s.weight_pct is not None else '?'}%" + (f"+{s.extension}" if s.extension else "")
              for s in steps]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(x, [s.latency_p99_stable_ms or 0 for s in steps], "o-", label="stable p99")
    ax.plot(x, [s.latency_p99_canary_ms or 0 for s in steps], "s-", label="canary p99")
    ax.set_title("latency p99 (ms)")
    ax.legend()
    ax = axes[1]
    w = 0.4
    ax.bar([i - w / 2 for i in x], [s.error_rate_stable * 100 for s in steps], w, label="stable")
    ax.bar([i + w / 2 for i in x], [s.error_rate_canary * 100 for s in steps], w, label="canary")
    ax.set_title("5xx rate (%)")
    ax.legend()
    ax = axes[2]
    ax.plot(x, [s.prediction_drift_ks if s.prediction_drift_ks is not None else 0 for s in steps], "o-")
    ax.set_title("prediction drift (KS)")
    for ax in axes:
        ax.set_xticks(x, labels)
        for i, s in enumerate(steps):
            ax.axvspan(i - 0.5, i + 0.5, color=_COLOURS[s.verdict], alpha=0.08)
    fig.suptitle("canary analysis: " + " ".join(s.verdict for s in steps))
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
