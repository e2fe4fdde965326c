"""Canary analysis: statistics per step, the step loop with rollback, a loopback load generator, a plot."""

from include.mlops.canary.analysis import CanaryThresholds, Samples, StepAnalysis, analyse_canary_step

__all__ = ["CanaryThresholds", "Samples", "StepAnalysis", "analyse_canary_step"]
