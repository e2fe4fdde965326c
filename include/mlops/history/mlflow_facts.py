"""Read a model version's facts from MLflow for the release history: its tags (gate, validation,
placement, image, canary verdict), the training run, and the canary analysis artifact's steps.

Read on every request, never copied: MLflow stays the one place these facts live.
"""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from pathlib import Path
from typing import Any

from include.mlops.history.records import VersionFacts
from include.mlops.registry.mlflow_registry import MlflowRegistry

ANALYSIS_ARTIFACT = "canary/analysis.json"
PLOT_ARTIFACT = "canary/analysis.png"
# the numbers of a canary step the history shows (the artifact has more: p-values, extras)
STEP_FIELDS = (
    "weight_pct",
    "verdict",
    "reasons",
    "n_stable",
    "n_canary",
    "error_rate_stable",
    "error_rate_canary",
    "latency_p99_stable_ms",
    "latency_p99_canary_ms",
    "prediction_drift_ks",
    "analysed_at_unix",
)


def _ms_time(ms: int | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC) if ms else None


class MlflowVersionFacts:
    """Version facts from one MLflow tracking server."""

    def __init__(self, tracking_uri: str) -> None:
        self.registry = MlflowRegistry(tracking_uri)

    def version(self, name: str, version: str) -> VersionFacts | None:
        """The version's facts; None when MLflow has no such version (RegistryUnavailable when it did not answer)."""
        client = self.registry.client
        mv = self.registry._ask_or_absent(
            f"get_model_version({name!r}, {version})", lambda: client.get_model_version(name, version)
        )
        if mv is None:
            return None
        run_id: str | None = mv.run_id
        run = None
        artifacts: set[str] = set()
        steps: tuple[dict[str, Any], ...] = ()
        if run_id:
            run = self.registry._ask_or_absent(f"get_run({run_id!r})", lambda: client.get_run(run_id))
            artifacts = {a.path for a in self._list(run_id, "canary")} if run else set()
            steps = self._steps(run_id) if ANALYSIS_ARTIFACT in artifacts else ()
        return VersionFacts(
            name=name,
            version=str(mv.version),
            tags=dict(mv.tags or {}),
            run_id=run_id,
            experiment_id=run.info.experiment_id if run else None,
            created_at=_ms_time(mv.creation_timestamp),
            training_start=_ms_time(run.info.start_time) if run else None,
            training_end=_ms_time(run.info.end_time) if run else None,
            canary_steps=steps,
            has_plot=PLOT_ARTIFACT in artifacts,
        )

    def _list(self, run_id: str, path: str) -> list[Any]:
        client = self.registry.client
        return list(
            self.registry._ask(f"list_artifacts({run_id!r}, {path!r})", lambda: client.list_artifacts(run_id, path))
        )

    def _steps(self, run_id: str) -> tuple[dict[str, Any], ...]:
        with tempfile.TemporaryDirectory(prefix="mlops-history-") as tmp:
            local = Path(self._download(run_id, ANALYSIS_ARTIFACT, tmp))
            analysis = json.loads(local.read_text())
        return tuple({k: step.get(k) for k in STEP_FIELDS} for step in analysis.get("steps", []))

    def _download(self, run_id: str, artifact: str, dst: str) -> str:
        client = self.registry.client
        return str(
            self.registry._ask(
                f"download_artifacts({run_id!r}, {artifact!r})",
                lambda: client.download_artifacts(run_id, artifact, dst),
            )
        )

    def plot(self, name: str, version: str) -> bytes | None:
        """The PNG of the version's canary analysis, or None when it has none."""
        client = self.registry.client
        mv = self.registry._ask_or_absent(
            f"get_model_version({name!r}, {version})", lambda: client.get_model_version(name, version)
        )
        if mv is None or not mv.run_id or PLOT_ARTIFACT not in {a.path for a in self._list(mv.run_id, "canary")}:
            return None
        with tempfile.TemporaryDirectory(prefix="mlops-history-") as tmp:
            return Path(self._download(mv.run_id, PLOT_ARTIFACT, tmp)).read_bytes()
