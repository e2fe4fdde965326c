"""The MLflow registry against a real tracking server: logging, registration, aliases, idempotency.

Server errors are injected for real: a proxy in front of the server answers chosen API paths
with 503, the way an overloaded gateway does; only MLflow's own "does not exist" means absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.mlops.errors import InvalidReleaseParams, RegistryUnavailable
from include.mlops.registry.mlflow_registry import CHALLENGER, CHAMPION, MlflowRegistry, TrainingRecord
from tests.http_fault_proxy import fault_proxy
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
    v1 = reg.register_version("fraud-test", run_id, rec.run_key, tags={"data.fingerprint": "abc"})
    again = reg.register_version("fraud-test", run_id, rec.run_key, tags={"data.fingerprint": "abc"})
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
    v = reg.register_version("fraud-alias", run_id, rec.run_key, tags={})
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
    reg.register_version("fraud-v", reg.log_training(rec, "retrain-test"), rec.run_key, tags={})
    with pytest.raises(InvalidReleaseParams, match="no version 42"):
        reg.get_version("fraud-v", "42")
    with pytest.raises(InvalidReleaseParams, match="no such alias"):
        reg.get_version("fraud-v", "champion")


@pytest.fixture
def no_client_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's client retries a 5xx 7 times over ~4 min by default; the outcome is the same, sooner."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


def test_get_alias_is_none_only_when_mlflow_says_the_model_or_alias_does_not_exist(
    mlflow_server: str, tmp_path: Path
) -> None:
    reg = MlflowRegistry(mlflow_server)
    assert reg.get_alias("no-such-model-anywhere", CHAMPION) is None
    rec = _record(tmp_path, "retrain/run-absent")
    v = reg.register_version("fraud-absent", reg.log_training(rec, "retrain-test"), rec.run_key, tags={})
    assert reg.get_alias("fraud-absent", CHAMPION) is None  # the model exists, the alias does not
    reg.set_alias("fraud-absent", CHAMPION, v.version)
    assert reg.get_alias("fraud-absent", CHAMPION) == reg.get_version("fraud-absent", v.version)


def test_a_5xx_on_the_alias_lookup_is_an_error_naming_server_and_call_not_no_champion(
    mlflow_server: str, tmp_path: Path, no_client_retries: None
) -> None:
    reg = MlflowRegistry(mlflow_server)
    rec = _record(tmp_path, "retrain/run-5xx-alias")
    v = reg.register_version("fraud-5xx-alias", reg.log_training(rec, "retrain-test"), rec.run_key, tags={})
    reg.set_alias("fraud-5xx-alias", CHAMPION, v.version)
    with fault_proxy(mlflow_server) as proxy:
        proxy.failing = {"/registered-models/get", "/registered-models/alias"}
        flaky = MlflowRegistry(proxy.url)
        with pytest.raises(RegistryUnavailable, match=rf"MLflow at {proxy.url} did not answer get_registered_model"):
            flaky.get_alias("fraud-5xx-alias", CHAMPION)
        with pytest.raises(RegistryUnavailable):  # a release must not read "no such model" from a 503
            flaky.get_version("fraud-5xx-alias", "champion")
        assert proxy.failed, "the proxy injected nothing"
        proxy.failing = set()
        assert flaky.get_alias("fraud-5xx-alias", CHAMPION).version == v.version  # type: ignore[union-attr]


def test_a_5xx_on_the_version_search_fails_the_retry_instead_of_registering_a_duplicate(
    mlflow_server: str, tmp_path: Path, no_client_retries: None
) -> None:
    reg = MlflowRegistry(mlflow_server)
    rec = _record(tmp_path, "retrain/run-5xx-search")
    run_id = reg.log_training(rec, "retrain-test")
    first = reg.register_version("fraud-5xx-search", run_id, rec.run_key, tags={})
    with fault_proxy(mlflow_server) as proxy:
        proxy.failing = {"/model-versions/search", "/runs/search"}
        flaky = MlflowRegistry(proxy.url)
        with pytest.raises(RegistryUnavailable, match="search_model_versions"):
            flaky.register_version("fraud-5xx-search", run_id, rec.run_key, tags={})  # the task's retry
        with pytest.raises(RegistryUnavailable, match="search_runs"):
            flaky.find_run("retrain-test", rec.run_key)
    versions = reg.client.search_model_versions("name = 'fraud-5xx-search'")
    assert [mv.version for mv in versions] == [first.version]


def test_a_truncated_cached_onnx_is_downloaded_again(mlflow_server: str, tmp_path: Path) -> None:
    reg = MlflowRegistry(mlflow_server)
    rec = _record(tmp_path, "retrain/run-truncated", seed=5)
    v = reg.register_version("fraud-dl", reg.log_training(rec, "retrain-test"), rec.run_key, tags={})
    original = rec.model_onnx_path.read_bytes()
    path = reg.download_onnx(v, tmp_path / "cache")
    assert path.read_bytes() == original
    with path.open("r+b") as f:  # what a download killed half way leaves behind
        f.truncate(len(original) // 2)
    again = reg.download_onnx(v, tmp_path / "cache")
    assert again == path and again.read_bytes() == original
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.relative_to(tmp_path / "cache").parts[0]]


def test_a_cached_onnx_with_a_flipped_byte_is_downloaded_again(mlflow_server: str, tmp_path: Path) -> None:
    reg = MlflowRegistry(mlflow_server)
    rec = _record(tmp_path, "retrain/run-flipped", seed=6)
    v = reg.register_version("fraud-dl-flip", reg.log_training(rec, "retrain-test"), rec.run_key, tags={})
    original = rec.model_onnx_path.read_bytes()
    path = reg.download_onnx(v, tmp_path / "cache")
    damaged = bytearray(original)
    damaged[-1] ^= 0xFF  # same size: only the hash recorded at download can tell
    path.write_bytes(bytes(damaged))
    assert reg.download_onnx(v, tmp_path / "cache").read_bytes() == original
