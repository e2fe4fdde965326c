"""TrainConfig validation and JSON round trip; TrainingResult read back from an output dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.mlops.errors import MlopsError, TrainingFailed
from include.mlops.training.config import InvalidTrainConfig, TrainConfig, TrainingResult


def _config(**overrides: object) -> TrainConfig:
    base: dict[str, object] = {"data_path": "/d/b.parquet", "output_dir": "/o", "checkpoint_dir": "/c"}
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_defaults_are_the_documented_ones() -> None:
    c = _config()
    assert (c.epochs, c.batch_size, c.learning_rate_per_step, c.hidden_units) == (8, 512, 1e-3, (64, 32))
    assert (c.seed, c.holdout_fraction, c.device, c.max_rows) == (42, 0.2, "auto", None)


def test_json_round_trip_restores_an_equal_config_with_tuple_hidden_units() -> None:
    c = _config(epochs=3, hidden_units=(16,), device="cuda:1", max_rows=1000, data_path=Path("/x/y.parquet"))
    back = TrainConfig.from_json(c.to_json())
    assert back == c
    assert back.hidden_units == (16,)
    assert back.data_path == "/x/y.parquet"
    assert json.loads(c.to_json())["hidden_units"] == [16]


def test_from_file_reads_the_json_the_runner_writes(tmp_path: Path) -> None:
    c = _config(epochs=2)
    (tmp_path / "cfg.json").write_text(c.to_json())
    assert TrainConfig.from_file(tmp_path / "cfg.json") == c


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("epochs", 0, "epochs=0: must be an integer >= 1"),
        ("epochs", 2.5, "epochs=2.5"),
        ("epochs", True, "epochs=True"),
        ("batch_size", 0, "batch_size=0"),
        ("learning_rate_per_step", 0.0, "learning_rate_per_step=0.0: must be a finite number > 0"),
        ("learning_rate_per_step", float("nan"), "learning_rate_per_step=nan"),
        ("holdout_fraction", 0.0, "holdout_fraction=0.0: must be strictly between 0 and 1"),
        ("holdout_fraction", 1.0, "holdout_fraction=1.0"),
        ("holdout_fraction", -0.1, "holdout_fraction=-0.1"),
        ("hidden_units", (), "hidden_units=()"),
        ("hidden_units", (64, 0), "hidden_units=(64, 0)"),
        ("device", "tpu", "device='tpu': must be one of 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ("device", "cuda:x", "device='cuda:x'"),
        ("max_rows", 0, "max_rows=0"),
        ("seed", -1, "seed=-1"),
        ("cpu_threads", 0, "cpu_threads=0"),
        ("data_path", "", "data_path=''"),
    ],
)
def test_invalid_field_is_rejected_naming_field_value_and_rule(field: str, value: object, words: str) -> None:
    with pytest.raises(InvalidTrainConfig) as info:
        _config(**{field: value})
    assert words in str(info.value)
    assert isinstance(info.value, MlopsError)


def test_unknown_and_missing_json_fields_are_named() -> None:
    with pytest.raises(InvalidTrainConfig, match=r"unknown config field\(s\) \['epoch'\]"):
        TrainConfig.from_dict({"data_path": "a", "output_dir": "b", "checkpoint_dir": "c", "epoch": 3})
    with pytest.raises(InvalidTrainConfig, match=r"missing required config field\(s\) \['checkpoint_dir'\]"):
        TrainConfig.from_dict({"data_path": "a", "output_dir": "b"})
    with pytest.raises(InvalidTrainConfig, match="not valid JSON"):
        TrainConfig.from_json("{epochs: 3")


def test_resume_key_ignores_epochs_device_and_paths_but_not_model_shape() -> None:
    a = _config()
    assert a.resume_key() == _config(epochs=20, device="cpu", output_dir="/elsewhere", cpu_threads=2).resume_key()
    assert a.resume_key() != _config(hidden_units=(8,)).resume_key()
    assert a.resume_key() != _config(holdout_fraction=0.3).resume_key()


def test_result_from_unfinished_output_dir_raises_training_failed(tmp_path: Path) -> None:
    with pytest.raises(TrainingFailed, match="did not finish"):
        TrainingResult.from_output_dir(tmp_path)


def test_result_is_read_from_metrics_json(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    metrics = {
        "history": [{"epoch": 4, "train_loss": 0.5}, {"epoch": 5, "train_loss": 0.4}],
        "holdout": {"auc": 0.9, "n_holdout": 100},
        "device": "cuda",
        "amp": True,
        "epochs_run": 2,
        "epochs_total": 5,
        "resumed_from_epoch": 3,
        "duration_s": 1.5,
        "torch_version": "2.13.0",
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    r = TrainingResult.from_output_dir(tmp_path)
    assert r.model_onnx_path == str(tmp_path / "model.onnx")
    assert (r.device, r.amp, r.epochs_run, r.epochs_total, r.resumed_from_epoch) == ("cuda", True, 2, 5, 3)
    assert r.holdout_metrics == r.holdout == {"auc": 0.9, "n_holdout": 100}
    assert [h["epoch"] for h in r.history] == [4, 5]
