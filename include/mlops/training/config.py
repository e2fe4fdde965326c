"""What a training run is asked to do (TrainConfig) and what it left behind (TrainingResult).

No torch here: Airflow's environment builds the config and reads the result; only the
training process (include.mlops.training.train) imports torch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from include.mlops.errors import MlopsError, TrainingFailed

METRICS_FILE = "metrics.json"
MODEL_FILE = "model.onnx"
INPUT_EXAMPLE_FILE = "input_example.json"
CHECKPOINT_FILE = "last.pt"

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class InvalidTrainConfig(MlopsError, ValueError):
    """A TrainConfig field breaks a rule (the message names the field, the value and the rule)."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Paths are strings so the config round-trips through JSON and XCom."""

    data_path: str
    output_dir: str
    checkpoint_dir: str
    epochs: int = 8
    batch_size: int = 512
    learning_rate_per_step: float = 1e-3
    hidden_units: tuple[int, ...] = (64, 32)
    seed: int = 42
    holdout_fraction: float = 0.2
    device: str = "auto"
    max_rows: int | None = None
    # A small MLP gains nothing from intra-op threads, and on a shared CPU extra threads
    # spin against other work (measured: 2 threads up to 35x slower than 1 under load).
    cpu_threads: int = 1
    # sha256 of the batch's bytes as validation pinned it: the trainer refuses any other bytes,
    # checked on the very bytes it parses (None: an ad-hoc run of the trainer, nothing pinned)
    data_fingerprint: str | None = None

    def __post_init__(self) -> None:
        # Accept Path objects and JSON lists, store the canonical types (frozen: object.__setattr__).
        for name in ("data_path", "output_dir", "checkpoint_dir"):
            value = getattr(self, name)
            if not isinstance(value, (str, Path)) or not str(value):
                raise InvalidTrainConfig(f"{name}={value!r}: must be a non-empty path")
            object.__setattr__(self, name, str(value))
        if isinstance(self.hidden_units, list):
            object.__setattr__(self, "hidden_units", tuple(self.hidden_units))
        self._validate()

    def _validate(self) -> None:
        def _int(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InvalidTrainConfig(f"{name}={value!r}: must be an integer >= {minimum}")

        _int("epochs", 1)
        _int("batch_size", 1)
        _int("seed", 0)
        _int("cpu_threads", 1)
        lr = self.learning_rate_per_step
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise InvalidTrainConfig(f"learning_rate_per_step={lr!r}: must be a finite number > 0")
        fr = self.holdout_fraction
        if isinstance(fr, bool) or not isinstance(fr, (int, float)) or not 0.0 < fr < 1.0:
            raise InvalidTrainConfig(f"holdout_fraction={fr!r}: must be strictly between 0 and 1 (e.g. 0.2)")
        hu = self.hidden_units
        if (
            not isinstance(hu, tuple)
            or not hu
            or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hu)
        ):
            raise InvalidTrainConfig(
                f"hidden_units={hu!r}: must be a non-empty list of positive integers (e.g. [64, 32])"
            )
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise InvalidTrainConfig(f"device={self.device!r}: must be one of 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if self.max_rows is not None:
            _int("max_rows", 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_units"] = list(self.hidden_units)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise InvalidTrainConfig(f"config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidTrainConfig(f"unknown config field(s) {unknown}; known: {sorted(known)}")
        missing = sorted(f for f in ("data_path", "output_dir", "checkpoint_dir") if f not in data)
        if missing:
            raise InvalidTrainConfig(f"missing required config field(s) {missing}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidTrainConfig(f"config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise InvalidTrainConfig(f"cannot read config file {p}: {exc.strerror}") from exc
        return cls.from_json(text)

    def resume_key(self) -> dict[str, Any]:
        """Fields a checkpoint must agree with to be resumed (epochs may grow, device may change)."""
        d = self.to_dict()
        for name in ("epochs", "device", "output_dir", "checkpoint_dir", "cpu_threads"):
            d.pop(name)
        return d


@dataclass(frozen=True)
class TrainingResult:
    """What a finished training run wrote to its output_dir (read back from metrics.json)."""

    model_onnx_path: str
    metrics_path: str
    input_example_path: str
    history: list[dict[str, float]] = field(default_factory=list)
    holdout_metrics: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    amp: bool = False
    epochs_run: int = 0
    epochs_total: int = 0
    resumed_from_epoch: int | None = None
    duration_s: float = 0.0
    torch_version: str = ""

    @property
    def holdout(self) -> dict[str, float]:
        """Alias of holdout_metrics (the name the retraining task reads)."""
        return self.holdout_metrics

    @classmethod
    def from_output_dir(cls, path: str | Path) -> TrainingResult:
        out = Path(path)
        metrics_path = out / METRICS_FILE
        model_path = out / MODEL_FILE
        if not metrics_path.is_file() or not model_path.is_file():
            raise TrainingFailed(
                f"{out} has no {METRICS_FILE} and {MODEL_FILE}: the training run did not finish "
                "(look at the training log; rerun to resume from its last checkpoint)"
            )
        m = json.loads(metrics_path.read_text())
        return cls(
            model_onnx_path=str(model_path),
            metrics_path=str(metrics_path),
            input_example_path=str(out / INPUT_EXAMPLE_FILE),
            history=list(m["history"]),
            holdout_metrics=dict(m["holdout"]),
            device=str(m["device"]),
            amp=bool(m["amp"]),
            epochs_run=int(m["epochs_run"]),
            epochs_total=int(m["epochs_total"]),
            resumed_from_epoch=m.get("resumed_from_epoch"),
            duration_s=float(m["duration_s"]),
            torch_version=str(m.get("torch_version", "")),
        )
