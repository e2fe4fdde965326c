"""The MLflow registry against a real tracking server: logging, registration, aliases, idempotency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.mlops.errors import InvalidReleaseParams
from include.mlops.registry.mlflow_registry import CHALLENGER, MlflowRegistry, TrainingRecord
from tests.model_fixtures import build_logistic_model

pytestmark = pytest.mark.slow


def _record(tmp_path: Path, run_key: str, seed: int = 0) -> TrainingRecord:
    model = build_logistic_model(tmp_path / f"model-{seed}.onnx", seed=seed)
    example = tmp_path / "input_example.json"
    example.write_text(
        json.dumps(
            [
                {
                    "amount": 12.5,
                    "customer_age": 40,
                    "account_age_days": 900,
                    "tx_count_24h": 3,
                    "distance_from_home_km": 4.2,
                    "hour_of_day": 14,
                    "card_present": True,
                    "is_online": False,
                    "merchant_category": "grocery",
                    "channel": "pos",
                    "country": "DE",
                }
            ]
        )
    )
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"history": [{"epoch": 1, "train_loss": 0.5}]}))
    return TrainingRecord(
        run_key=run_key,
        params={"epochs": 1},
        history=[{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.4}],
        holdout_metrics={"auc": 0.9},
        model_onnx_path=model,
        input_example_path=example,
        tags={"data.fingerprint": "abc"},
        artifacts={"training": metrics},
    )


def test_retried_register_finds_its_own_version(mlflow_server: str, tmp_path: Path) -> None:
    reg = MlflowRegistry(mlflow_server)
    rec = _record(tmp_path, "retrain/run-1")
    run_id = reg.log_training(rec, "retrain-test")
    assert reg.log_training(rec, "retrain-test") == run_id  # retry: same run, no second run
    v1 = reg.register_version("fraud-test", run_id, rec.run_key, {"data.fingerprint": "abc"})
    again = reg.register_version("fraud-test", run_id, rec.run_key, {"data.fingerprint": "abc"})
    assert again.version == v1.version
    versions = reg.client.search_model_versions("name = 'fraud-test'")
    assert len(versions) == 1
    assert v1.tags["airflow.run_key"] == "retrain/run-1"

    history = reg.client.get_metric_history(run_id, "train_loss")
    assert [m.step for m in history] == [1, 2]


def test_aliases_and_onnx_download_round_trip(mlflow_server: str, tmp_path: Path) -> None:
    reg = MlflowRegistry(mlflow_server)
    rec = _record(tmp_path, "retrain/run-2", seed=3)
    run_id = reg.log_training(rec, "retrain-test")
    v = reg.register_version("fraud-alias", run_id, rec.run_key, {})
    assert reg.get_alias("fraud-alias", CHALLENGER) is None
    reg.set_alias("fraud-alias", CHALLENGER, v.version)
    assert reg.get_alias("fraud-alias", CHALLENGER).version == v.version  # type: ignore[union-attr]
    assert reg.get_version("fraud-alias", "challenger").version == v.version
    path = reg.download_onnx(v, tmp_path / "dl")
    assert path.read_bytes() == rec.model_onnx_path.read_bytes()


def test_unknown_model_or_version_is_a_clear_param_error(mlflow_server: str, tmp_path: Path) -> None:
    reg = MlflowRegistry(mlflow_server)
    with pytest.raises(InvalidReleaseParams, match="model_name='nope'"):
        reg.get_version("nope", "1")
    rec = _record(tmp_path, "retrain/run-3")
    reg.register_version("fraud-v", reg.log_training(rec, "retrain-test"), rec.run_key, {})
    with pytest.raises(InvalidReleaseParams, match="no version 42"):
        reg.get_version("fraud-v", "42")
    with pytest.raises(InvalidReleaseParams, match="no such alias"):
        reg.get_version("fraud-v", "champion")
