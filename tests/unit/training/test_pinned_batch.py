"""The trainer parses exactly the bytes validation pinned: checked and parsed from one read.

train and evaluate check the batch's fingerprint by path before and after the trainer runs;
a file rewritten while the trainer reads it would pass both checks if it was put back in
time. The trainer itself refuses bytes whose sha256 is not the pinned one (issue 9, item 8).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from include.mlops.data.batches import BatchChangedError, fingerprint
from include.mlops.data.generate import generate_batch
from include.mlops.training.config import TrainConfig
from include.mlops.training.train import load_batch


def _config(batch: Path, pinned: str | None) -> TrainConfig:
    return TrainConfig(data_path=str(batch), output_dir="/o", checkpoint_dir="/c", data_fingerprint=pinned)


def test_the_trainer_reads_the_pinned_batch(tmp_path: Path) -> None:
    batch = tmp_path / "transactions_2026-11-01.parquet"
    generate_batch(300, seed=1).to_parquet(batch, index=False)
    assert len(load_batch(_config(batch, fingerprint(batch)))) == 300


def test_the_trainer_refuses_a_batch_whose_bytes_are_not_the_pinned_ones(tmp_path: Path) -> None:
    batch = tmp_path / "transactions_2026-11-01.parquet"
    generate_batch(300, seed=1).to_parquet(batch, index=False)
    pinned = fingerprint(batch)
    generate_batch(300, seed=2).to_parquet(batch, index=False)  # same name, other rows
    with pytest.raises(BatchChangedError) as err:
        load_batch(_config(batch, pinned))
    assert pinned in str(err.value) and fingerprint(batch) in str(err.value)


def test_the_pinned_fingerprint_is_not_a_training_parameter(tmp_path: Path) -> None:
    # the same hyperparameters and code on two batches are the same training (skip_if_identical
    # compares the batch on its own), so the fingerprint stays out of the params hash like data_path
    import dataclasses

    from include.mlops.retraining import training_fingerprint

    a, b = (dataclasses.asdict(_config(tmp_path / f"{n}.parquet", n * 64)) for n in "ab")
    assert training_fingerprint(a) == training_fingerprint(b)
    assert training_fingerprint(a) != training_fingerprint({**a, "epochs": 9})
