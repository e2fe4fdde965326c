"""Score exported ONNX models on a batch's deterministic holdout with ONNX Runtime.

Challenger and champion are scored on exactly the same rows (features.holdout_mask),
with the same encoder the model server uses, so their metrics can be compared directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from include.mlops.errors import BatchReadError, ModelLoadError
from include.mlops.evaluation.metrics import HoldoutMetrics

if TYPE_CHECKING:
    import numpy as np
    import onnxruntime as ort
    import pandas as pd

__all__ = ["HoldoutMetrics", "ModelLoadError", "evaluate_models", "evaluate_onnx", "predict_onnx"]

INPUT_NAME = "features"
# Bounded batches keep ORT's memory flat on large holdouts.
_CHUNK_ROWS = 65_536


def _session(model_path: str | Path) -> ort.InferenceSession:
    import onnxruntime as ort

    p = Path(model_path)
    if not p.is_file():
        raise ModelLoadError(f"ONNX model {p} does not exist")
    opts = ort.SessionOptions()
    # Evaluation shares the machine with the scheduler: stay on a couple of threads.
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(p), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own untyped errors for corrupt files
        raise ModelLoadError(f"ONNX Runtime cannot load {p}: {exc}") from exc
    names = [i.name for i in sess.get_inputs()]
    if names != [INPUT_NAME]:
        raise ModelLoadError(f"ONNX model {p} takes inputs {names}; expected [{INPUT_NAME!r}]")
    return sess


def predict_onnx(model_path: str | Path, features: np.ndarray) -> np.ndarray:
    """Fraud probabilities, shape (n,), for an encoded (n, N_FEATURES) float32 matrix."""
    import numpy as np

    sess = _session(model_path)
    x = np.ascontiguousarray(features, dtype=np.float32)
    parts = [
        np.asarray(sess.run(None, {INPUT_NAME: x[i : i + _CHUNK_ROWS]})[0]).reshape(-1)
        for i in range(0, len(x), _CHUNK_ROWS)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


def _holdout(df: pd.DataFrame, holdout_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    from include.mlops.data.features import encode_features, holdout_mask
    from include.mlops.data.schema import LABEL_COLUMN

    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction={holdout_fraction!r}: must be strictly between 0 and 1")
    if LABEL_COLUMN not in df.columns:
        raise BatchReadError(f"batch has no label column {LABEL_COLUMN!r}: cannot score a holdout")
    mask = holdout_mask(df, holdout_fraction)
    rows = df.loc[mask]
    if len(rows) == 0:
        raise BatchReadError(f"holdout_fraction={holdout_fraction} selects no rows of a {len(df)}-row batch")
    try:
        x = encode_features(rows)
    except KeyError as exc:
        raise BatchReadError(f"batch lacks feature column {exc}") from exc
    return x, rows[LABEL_COLUMN].to_numpy().astype(bool)


def evaluate_onnx(model_path: str | Path, df: pd.DataFrame, holdout_fraction: float) -> HoldoutMetrics:
    """Metrics of one ONNX model on the holdout rows of `df` (the training split's holdout)."""
    x, y = _holdout(df, holdout_fraction)
    return HoldoutMetrics.from_predictions(y, predict_onnx(model_path, x))


def evaluate_models(
    model_paths: dict[str, str | Path], df: pd.DataFrame, holdout_fraction: float
) -> dict[str, HoldoutMetrics]:
    """Metrics of several models (e.g. {"challenger": ..., "champion": ...}) on one holdout.

    The holdout is selected and encoded once, so every model sees identical inputs.
    """
    x, y = _holdout(df, holdout_fraction)
    return {name: HoldoutMetrics.from_predictions(y, predict_onnx(path, x)) for name, path in model_paths.items()}
