"""A small landed batch and a one-epoch TrainConfig under a data root, for the training launcher tests."""

from __future__ import annotations

from pathlib import Path

from include.mlops.training.config import TrainConfig

FAST = {"batch_size": 64, "learning_rate_per_step": 3e-3, "holdout_fraction": 0.2, "epochs": 1}


def small_data_root(base: Path, n_rows: int = 600) -> Path:
    from include.mlops.data.generate import write_batch

    root = base / "data"
    (root / "landing").mkdir(parents=True)
    write_batch(root / "landing", "2026-11-02", n_rows=n_rows, seed=5)
    return root


def fast_config(data_root: Path, batch: Path | None = None, run: str = "manual__1") -> TrainConfig:
    batch = batch or next((data_root / "landing").iterdir())
    run_dir = data_root / "runs" / run
    return TrainConfig(
        data_path=str(batch), output_dir=str(run_dir / "output"), checkpoint_dir=str(run_dir / "checkpoints"), **FAST
    )
