"""Training entrypoint: `python -m include.mlops.training.train --config cfg.json`.

Runs in the training environment (torch): reads a parquet batch, trains a small MLP on
the non-holdout rows, checkpoints every epoch (a retry resumes), and exports model.onnx,
metrics.json and input_example.json to output_dir. Exit 2 = bad config or data, or a
checkpoint that is not plain data.

Checkpoints live on the shared data root, which more than one party can write: they are loaded
with ``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers (dicts,
lists, numbers, strings) and never runs code from the file. Everything saved is of that kind:
RNG states as tensors (numpy's as its key tensor plus numbers), no numpy arrays, no objects.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.data.batches import read_batch
from include.mlops.data.schema import (
    BOOLEAN_FEATURES,
    CATEGORICAL_FEATURES,
    FEATURE_NAMES,
    ID_COLUMN,
    LABEL_COLUMN,
    N_FEATURES,
    NUMERIC_FEATURES,
)
from include.mlops.errors import BatchReadError
from include.mlops.evaluation.metrics import HoldoutMetrics, binary_metrics
from include.mlops.training.checkpoint import (
    CheckpointMismatch,
    CheckpointRefused,
    load_checkpoint,
    numpy_rng_state,
    save_checkpoint,
    set_numpy_rng_state,
)
from include.mlops.training.config import (
    CHECKPOINT_FILE,
    INPUT_EXAMPLE_FILE,
    METRICS_FILE,
    MODEL_FILE,
    InvalidTrainConfig,
    TrainConfig,
)
from include.mlops.training.export import INPUT_NAME, ONNX_OPSET, OUTPUT_NAME, check_onnx, export_onnx, predict_proba

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

N_INPUT_EXAMPLES = 5


def log(msg: str) -> None:
    # One line per event, flushed: the runner (and Airflow's log view) streams stdout live.
    print(msg, flush=True)


# --------------------------------------------------------------------------- data


def load_batch(config: TrainConfig) -> pd.DataFrame:
    """Read the parquet batch and check it can be trained on; BatchReadError names the problem."""
    import pandas as pd

    path = Path(config.data_path)
    if not path.exists():
        raise BatchReadError(f"data_path {path} does not exist")
    try:
        if config.data_fingerprint is not None:
            # the bytes validation pinned, hashed and parsed from one read (BatchChangedError else)
            df = read_batch(path, expected_fingerprint=config.data_fingerprint)
        else:
            df = pd.read_parquet(path)
    except BatchReadError:
        raise
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise BatchReadError(f"data_path {path} is not a readable parquet file/dir: {exc}") from exc
    if config.max_rows is not None:
        df = df.iloc[: config.max_rows]
    needed = [ID_COLUMN, *NUMERIC_FEATURES, *BOOLEAN_FEATURES, *CATEGORICAL_FEATURES, LABEL_COLUMN]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise BatchReadError(f"batch {path} lacks column(s) {missing}")
    if len(df) == 0:
        raise BatchReadError(f"batch {path} has no rows")
    labels = df[LABEL_COLUMN]
    if labels.isna().any() or not labels.isin([0, 1, True, False]).all():
        raise BatchReadError(f"column {LABEL_COLUMN!r} of {path} must be 0/1 (or bool) without nulls")
    nulls = [c for c in needed if df[c].isna().any()]
    if nulls:
        raise BatchReadError(f"batch {path} has nulls in feature column(s) {nulls}")
    return df


def split_batch(
    df: pd.DataFrame, holdout_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """Encoded (x_train, y_train, x_holdout, y_holdout) and the raw holdout rows."""
    import numpy as np

    from include.mlops.data.features import encode_features, holdout_mask

    mask = holdout_mask(df, holdout_fraction)
    x = encode_features(df)
    if not np.all(np.isfinite(x)):
        raise BatchReadError("encoded features contain NaN/inf: check the numeric columns")
    y = df[LABEL_COLUMN].to_numpy().astype(np.float32)
    x_tr, y_tr, x_ho, y_ho = x[~mask], y[~mask], x[mask], y[mask]
    for name, ys in (("train", y_tr), ("holdout", y_ho)):
        n_pos = int(ys.sum())
        if len(ys) == 0 or n_pos == 0 or n_pos == len(ys):
            raise BatchReadError(
                f"{name} split has {len(ys)} rows with {n_pos} fraud rows: it needs both classes "
                f"(more rows, or another holdout_fraction than {holdout_fraction})"
            )
    return x_tr, y_tr, x_ho, y_ho, df.loc[mask]


# --------------------------------------------------------------------------- model


def build_model(n_features: int, hidden_units: tuple[int, ...], mean: Any, *, std: Any) -> torch.nn.Module:
    import torch
    from torch import nn

    class FraudMLP(nn.Module):
        """Raw encoded features -> fraud logit; normalisation lives in buffers (exported)."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("feature_mean", torch.as_tensor(mean, dtype=torch.float32))
            self.register_buffer("feature_std", torch.as_tensor(std, dtype=torch.float32))
            layers: list[nn.Module] = []
            width = n_features
            for h in hidden_units:
                layers += [nn.Linear(width, h), nn.ReLU()]
                width = h
            layers.append(nn.Linear(width, 1))
            self.net = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x - self.feature_mean) / self.feature_std).squeeze(-1)

    return FraudMLP()


def normalisation(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    mean = x_train.mean(axis=0, dtype=np.float64)
    std = x_train.std(axis=0, dtype=np.float64)
    # A constant column (e.g. a category absent from this batch) would divide by zero.
    std = np.where(std < 1e-6, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


# --------------------------------------------------------------------------- training


def resolve_device(requested: str) -> torch.device:
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidTrainConfig(f"device={requested!r} but CUDA is not available here; use 'auto' or 'cpu'")
    return torch.device(requested)


def input_example_records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """The first holdout rows as JSON records of the raw feature columns (no id, no label)."""
    cols = [*NUMERIC_FEATURES, *BOOLEAN_FEATURES, *CATEGORICAL_FEATURES]
    out = []
    for rec in rows[cols].head(N_INPUT_EXAMPLES).to_dict(orient="records"):
        clean: dict[str, Any] = {}
        for col, v in rec.items():
            if col in BOOLEAN_FEATURES:
                clean[col] = bool(v)
            elif col in NUMERIC_FEATURES:
                clean[col] = int(v) if NUMERIC_FEATURES[col][0].startswith("int") else float(v)
            else:
                clean[col] = str(v)
        out.append(clean)
    return out


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False))
    os.replace(tmp, path)


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) training and write the outputs; returns the metrics.json content."""
    import numpy as np
    import torch

    started = time.monotonic()
    device = resolve_device(config.device)
    amp = device.type == "cuda"
    if device.type == "cpu":
        torch.set_num_threads(config.cpu_threads)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)

    df = load_batch(config)
    x_tr, y_tr, x_ho, y_ho, holdout_rows = split_batch(df, config.holdout_fraction)
    n_pos = float(y_tr.sum())
    pos_weight = (len(y_tr) - n_pos) / n_pos  # fraud is rare: weigh positives up to balance
    log(
        f"data: {len(df)} rows, train {len(y_tr)} ({int(n_pos)} fraud), holdout {len(y_ho)} "
        f"({int(y_ho.sum())} fraud); device {device}, amp {amp}, pos_weight {pos_weight:.2f}"
    )

    mean, std = normalisation(x_tr)
    model = build_model(N_FEATURES, config.hidden_units, mean, std=std).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate_per_step)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device))
    shuffle_gen = torch.Generator().manual_seed(config.seed)

    ckpt_path = Path(config.checkpoint_dir) / CHECKPOINT_FILE
    history: list[dict[str, float]] = []
    start_epoch = 0
    resumed_from: int | None = None
    state = load_checkpoint(ckpt_path, config)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if amp and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        shuffle_gen.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        if amp and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        set_numpy_rng_state(state["numpy_rng"])
        history = list(state["history"])
        start_epoch = resumed_from = int(state["epoch"])
        log(f"resumed from epoch {start_epoch} ({ckpt_path})")
        if start_epoch >= config.epochs:
            log(f"checkpoint already has {start_epoch} >= epochs={config.epochs}; exporting it")

    xt = torch.from_numpy(x_tr).to(device)
    yt = torch.from_numpy(y_tr).to(device)
    xh = torch.from_numpy(x_ho).to(device)

    for epoch in range(start_epoch + 1, config.epochs + 1):
        t0 = time.monotonic()
        model.train()
        perm = torch.randperm(len(xt), generator=shuffle_gen).to(device)
        total = torch.zeros((), device=device)
        seen = 0
        for i in range(0, len(perm), config.batch_size):
            idx = perm[i : i + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                loss = loss_fn(model(xt[idx]), yt[idx])
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += loss.detach().float() * len(idx)  # no per-step host sync on GPU
            seen += len(idx)
        train_loss = float(total) / seen
        if not math.isfinite(train_loss):
            raise RuntimeError(
                f"training loss became {train_loss} at epoch {epoch}: lower learning_rate_per_step "
                f"(now {config.learning_rate_per_step})"
            )
        ho = binary_metrics(y_ho, predict_proba(model, xh))
        entry = {
            "epoch": epoch,
            "train_loss": train_loss,
            "holdout_log_loss": ho["log_loss"],
            "holdout_auc": ho["auc"],
            "epoch_duration_s": time.monotonic() - t0,
        }
        history.append(entry)
        save_checkpoint(
            ckpt_path,
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if amp else None,
                "shuffle_rng": shuffle_gen.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if amp else None,
                "numpy_rng": numpy_rng_state(),
                "history": history,
                "resume_key": config.resume_key(),
            },
        )
        # Logged after the checkpoint is on disk: seeing "epoch N/" means epoch N is durable.
        log(
            f"epoch {epoch}/{config.epochs} train_loss {train_loss:.4f} "
            f"holdout_loss {ho['log_loss']:.4f} holdout_auc {ho['auc']:.4f} "
            f"({entry['epoch_duration_s']:.2f}s)"
        )

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    p_ho = predict_proba(model, xh)
    holdout = HoldoutMetrics.from_predictions(y_ho, p_ho)
    model_path = out / MODEL_FILE
    export_onnx(model, model_path, torch.from_numpy(x_ho[:2]))
    onnx_check = check_onnx(model_path, model, x_ho[:2048])
    examples = input_example_records(holdout_rows)
    _write_json(out / INPUT_EXAMPLE_FILE, examples)
    metrics = {
        "holdout": holdout.to_dict(),
        "history": history,
        "device": str(device),
        "amp": amp,
        "torch_version": torch.__version__,
        "duration_s": time.monotonic() - started,
        "epochs_run": max(0, config.epochs - start_epoch),
        "epochs_total": len(history),
        "resumed_from_epoch": resumed_from,
        "n_train": len(y_tr),
        "pos_weight": pos_weight,
        "onnx": {
            "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME,
            "opset": ONNX_OPSET,
            "feature_names": list(FEATURE_NAMES),
            "check": onnx_check,
        },
        # Torch's own probabilities for input_example.json: a server can check it matches.
        "input_example_probabilities": [float(v) for v in p_ho[: len(examples)]],
        "config": config.to_dict(),
    }
    _write_json(out / METRICS_FILE, metrics)  # written last: its presence means "finished"
    log(
        f"done: holdout auc {holdout.auc:.4f} log_loss {holdout.log_loss:.4f} f1 {holdout.f1:.4f} "
        f"-> {model_path} in {metrics['duration_s']:.1f}s"
    )
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.mlops.training.train", description=__doc__)
    parser.add_argument("--config", required=True, help="path of a TrainConfig JSON file")
    args = parser.parse_args(argv)
    try:
        config = TrainConfig.from_file(args.config)
        train(config)
    except (InvalidTrainConfig, BatchReadError, CheckpointMismatch, CheckpointRefused) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
