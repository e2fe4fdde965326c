"""The real training entrypoint under the training interpreter (.venv-train, torch CPU).

Trains on a generated batch, scores the exported ONNX through evaluate_onnx, resumes from
checkpoints (after a clean finish and after SIGKILL), and fails clearly on bad data.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from include.mlops.data.features import encode_records
from include.mlops.data.generate import generate_batch
from include.mlops.errors import TrainingFailed
from include.mlops.evaluation.onnx_eval import evaluate_onnx, predict_onnx
from include.mlops.training.config import TrainConfig
from include.mlops.training.runner import (
    run_training_process,
    training_command,
    training_environment,
    training_python,
    write_config,
)

pytestmark = pytest.mark.slow

HOLDOUT = 0.2
# Small batches and a larger step so 3 epochs over ~5k rows learn enough to test on.
FAST = {"batch_size": 64, "learning_rate_per_step": 3e-3, "holdout_fraction": HOLDOUT}


@pytest.fixture(scope="module")
def batch_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("batch") / "transactions.parquet"
    generate_batch(6000, seed=3, batch_date="2026-11-01").to_parquet(path)
    return path


@pytest.fixture(scope="module")
def python() -> str:
    return training_python()  # fails naming MLOPS_TRAIN_PYTHON and .venv-train when absent


def _config(batch_path: Path, root: Path, epochs: int, ck: str = "ck", out: str = "out") -> TrainConfig:
    return TrainConfig(
        data_path=str(batch_path), output_dir=str(root / out), checkpoint_dir=str(root / ck), epochs=epochs, **FAST
    )


def _epoch_lines(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := re.match(r"epoch (\d+)/\d+ ", line))]


def test_train_export_evaluate_then_resume_to_more_epochs(batch_path: Path, python: str, tmp_path: Path) -> None:
    lines: list[str] = []
    first = run_training_process(_config(batch_path, tmp_path, 3), python, log=lines.append, timeout_s=120)
    assert _epoch_lines(lines) == [1, 2, 3]
    assert (first.epochs_run, first.epochs_total, first.resumed_from_epoch) == (3, 3, None)
    assert (first.device, first.amp) == ("cpu", False)
    assert first.torch_version.startswith("2.13.0")

    df = pd.read_parquet(batch_path)
    onnx_metrics = evaluate_onnx(first.model_onnx_path, df, HOLDOUT)
    assert onnx_metrics.auc > 0.7
    # ONNX Runtime in Airflow's env reproduces torch's holdout numbers from the training env.
    assert onnx_metrics.auc == pytest.approx(first.holdout_metrics["auc"], abs=1e-4)
    assert onnx_metrics.log_loss == pytest.approx(first.holdout_metrics["log_loss"], abs=1e-4)
    assert onnx_metrics.n_holdout == first.holdout_metrics["n_holdout"]

    metrics = json.loads(Path(first.metrics_path).read_text())
    check = metrics["onnx"]["check"]
    # The in-process check needs onnxruntime in the training env; the input examples below
    # compare torch's probabilities with ONNX Runtime here either way.
    assert check["max_abs_diff"] <= 1e-4 if check["checked"] else "onnxruntime" in check["reason"]
    examples = json.loads(Path(first.input_example_path).read_text())
    assert len(examples) == 5 and all("is_fraud" not in r and "transaction_id" not in r for r in examples)
    served = predict_onnx(first.model_onnx_path, encode_records(examples))
    np.testing.assert_allclose(served, metrics["input_example_probabilities"], atol=1e-4)

    lines.clear()
    second = run_training_process(_config(batch_path, tmp_path, 5), python, log=lines.append, timeout_s=120)
    assert "resumed from epoch 3" in "\n".join(lines)
    assert _epoch_lines(lines) == [4, 5]
    assert (second.epochs_run, second.epochs_total, second.resumed_from_epoch) == (2, 5, 3)
    assert [h["epoch"] for h in second.history] == [1, 2, 3, 4, 5]
    assert second.history[:3] == first.history[:3]

    # Resuming restores weights, optimizer and shuffling RNG: same model as 5 epochs in one go.
    straight = run_training_process(
        _config(batch_path, tmp_path, 5, ck="ck-straight", out="out-straight"), python, log=lambda _: None
    )
    assert straight.holdout_metrics["log_loss"] == pytest.approx(second.holdout_metrics["log_loss"], abs=1e-6)
    assert straight.holdout_metrics["auc"] == pytest.approx(second.holdout_metrics["auc"], abs=1e-6)


def test_killed_run_resumes_losing_at_most_one_epoch(batch_path: Path, python: str, tmp_path: Path) -> None:
    # Many epochs so the SIGKILL lands mid-run; resume_key ignores epochs, so the retry can ask for fewer.
    cfg = _config(batch_path, tmp_path, 200)
    proc = subprocess.Popen(
        training_command(write_config(cfg), python),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=training_environment(),
        text=True,
    )
    seen: list[int] = []
    deadline = time.monotonic() + 90
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen += _epoch_lines([line])
            if 2 in seen or time.monotonic() > deadline:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and seen[-1] == 2

    lines: list[str] = []
    resumed = run_training_process(_config(batch_path, tmp_path, 6), python, log=lines.append, timeout_s=120)
    assert resumed.resumed_from_epoch is not None and resumed.resumed_from_epoch >= seen[-1]
    assert f"resumed from epoch {resumed.resumed_from_epoch}" in "\n".join(lines)
    assert [h["epoch"] for h in resumed.history] == list(range(1, max(6, resumed.resumed_from_epoch) + 1))
    assert not list((tmp_path / "ck").glob(".*.tmp"))


def test_bad_data_path_fails_with_a_clear_message(python: str, tmp_path: Path) -> None:
    cfg = TrainConfig(
        data_path=str(tmp_path / "missing.parquet"),
        output_dir=str(tmp_path / "out"),
        checkpoint_dir=str(tmp_path / "ck"),
    )
    with pytest.raises(TrainingFailed) as info:
        run_training_process(cfg, python, log=lambda _: None, timeout_s=60)
    msg = str(info.value)
    assert "exited with code 2" in msg
    assert f"BatchReadError: data_path {tmp_path / 'missing.parquet'} does not exist" in msg


def test_batch_without_fraud_rows_fails_naming_the_split(python: str, tmp_path: Path) -> None:
    df = generate_batch(500, seed=5)
    df["is_fraud"] = False
    df.to_parquet(tmp_path / "b.parquet")
    cfg = TrainConfig(
        data_path=str(tmp_path / "b.parquet"), output_dir=str(tmp_path / "o"), checkpoint_dir=str(tmp_path / "c")
    )
    with pytest.raises(TrainingFailed, match=r"train split has \d+ rows with 0 fraud rows: it needs both classes"):
        run_training_process(cfg, python, log=lambda _: None, timeout_s=60)


EVIL_CHECKPOINT = """
import os, sys, torch
class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[2],))
torch.save({"epoch": 1, "model": RunsCode()}, sys.argv[1])
"""


def test_a_checkpoint_holding_a_pickled_object_is_refused_and_never_run(python: str, tmp_path: Path) -> None:
    """Whoever can write the shared data root plants a checkpoint whose unpickling runs a command:
    the trainer refuses it (weights_only) and the command never runs."""
    batch = tmp_path / "b.parquet"
    generate_batch(500, seed=5).to_parquet(batch)
    cfg = TrainConfig(data_path=str(batch), output_dir=str(tmp_path / "o"), checkpoint_dir=str(tmp_path / "ck"))
    (tmp_path / "ck").mkdir()
    marker = tmp_path / "code-ran"
    subprocess.run([python, "-c", EVIL_CHECKPOINT, str(tmp_path / "ck" / "last.pt"), str(marker)], check=True)
    with pytest.raises(TrainingFailed) as info:
        run_training_process(cfg, python, log=lambda _: None, timeout_s=60)
    assert not marker.exists(), "loading the checkpoint ran code from it"
    msg = str(info.value)
    assert "exited with code 2" in msg and "CheckpointRefused" in msg
    assert f"checkpoint {tmp_path / 'ck' / 'last.pt'} holds more than tensors and plain data" in msg
