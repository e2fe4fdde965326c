"""The retrain steps against real services, with faults injected for real.

- evaluate while the MLflow server is dead (kill -9 of its process group): the step fails, it
  never scores the challenger as "no champion yet", so register and publish never run;
- train and evaluate on a batch rewritten after validation: refused, naming both fingerprints;
- a training identical to a registered version (same batch, code and params) is found as such.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from include.mlops import retraining
from include.mlops.airflow import retrain
from include.mlops.data.batches import BatchChangedError, fingerprint
from include.mlops.data.generate import write_batch
from include.mlops.errors import RegistryUnavailable
from include.mlops.registry.mlflow_registry import CHAMPION, RUN_KEY_TAG, MlflowRegistry, TrainingRecord
from include.mlops.routing.providers.local import LocalMachineProvider
from include.mlops.routing.reservations import ReservationBook
from include.mlops.routing.router import ResourceRouter
from include.mlops.settings.project import ProjectSettings
from tests.conftest import start_mlflow
from tests.model_fixtures import build_logistic_model

pytestmark = pytest.mark.slow


@dataclass
class OwnMlflow:
    """An MLflow server this module may kill (the session's shared one must stay up)."""

    uri: str
    proc: subprocess.Popen[bytes]

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def own_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnMlflow]:
    proc, uri = start_mlflow(tmp_path_factory.mktemp("own-mlflow"))
    server = OwnMlflow(uri, proc)
    try:
        yield server
    finally:
        if proc.poll() is None:
            server.kill()


def _settings(tmp_path: Path, uri: str, model: str) -> ProjectSettings:
    return ProjectSettings(
        profile="local",
        mlflow_tracking_uri=uri,
        mlflow_backend_store=tmp_path / "unused.db",
        mlflow_artifact_root=tmp_path / "unused-artifacts",
        data_root=tmp_path / "data",
        serving_root=tmp_path / "serving",
        registered_model=model,
        docker_base_url=None,
        image_registry=None,
    )


def _validated(settings: ProjectSettings, date: str = "2026-11-02") -> dict[str, str]:
    """What validate_data hands on: the batch path and the sha256 the suite ran on."""
    batch = write_batch(settings.landing_dir, date, n_rows=2_000, seed=3)
    return {"batch_path": str(batch), "fingerprint": fingerprint(batch)}


def _register(reg: MlflowRegistry, tmp_path: Path, model: str, run_key: str, tags: dict[str, str]) -> str:
    onnx = build_logistic_model(tmp_path / f"{run_key.replace('/', '_')}.onnx", seed=1)
    record = TrainingRecord(
        run_key=run_key,
        params={"epochs": 1},
        history=[],
        holdout_metrics={"auc": 0.5},
        model_onnx_path=onnx,
        input_example_path=None,
        tags={},
        artifacts={},
    )
    run_id = reg.log_training(record, retraining.EXPERIMENT_PREFIX + model)
    return reg.register_version(model, run_id, run_key, tags=tags).version


def _rewrite(batch: Path) -> None:
    """A producer rewriting the day's file in place: new rows, same name."""
    write_batch(batch.parent, batch.stem.removeprefix("transactions_"), n_rows=2_000, seed=99)


def test_evaluate_fails_when_mlflow_is_down_instead_of_passing_with_no_champion(
    own_mlflow: OwnMlflow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, own_mlflow.uri, "fraud-eval")
    reg = MlflowRegistry(own_mlflow.uri)
    reg.set_alias("fraud-eval", CHAMPION, _register(reg, tmp_path, "fraud-eval", "retrain/champ", {}))
    ident = retraining.RunIdentity("retrain", "manual__eval")
    validation = _validated(settings)
    trained = {"config": {"holdout_fraction": 0.2}, "model_onnx_path": str(build_logistic_model(tmp_path / "c.onnx"))}
    up = retraining.evaluate(settings, ident, validation=validation, trained=trained, log=lambda _: None)
    assert up["champion_version"] == "1" and up["champion"] is not None  # the setup sees its champion

    own_mlflow.kill()
    # the client's own retries (7, ~4 min) end the same way; the task's retry is what asks again
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    lines: list[str] = []
    with pytest.raises(RegistryUnavailable, match=rf"MLflow at {own_mlflow.uri} did not answer get_registered_model"):
        retraining.evaluate(settings, ident, validation=validation, trained=trained, log=lines.append)
    assert not any("no champion yet" in line for line in lines), lines


def test_evaluate_refuses_a_batch_rewritten_after_validation(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "http://127.0.0.1:9", "fraud-pinned")  # refused before any MLflow call
    validation = _validated(settings)
    _rewrite(Path(validation["batch_path"]))
    now = fingerprint(validation["batch_path"])
    trained = {"config": {"holdout_fraction": 0.2}, "model_onnx_path": str(build_logistic_model(tmp_path / "c.onnx"))}
    with pytest.raises(BatchChangedError) as err:
        retraining.evaluate(
            settings, retraining.RunIdentity("retrain", "manual__pin"), validation=validation, trained=trained
        )
    msg = str(err.value)
    assert validation["batch_path"] in msg and validation["fingerprint"] in msg and now in msg, msg


def test_train_refuses_a_batch_rewritten_after_validation_before_launching(tmp_path: Path) -> None:
    settings = _settings(tmp_path, "http://127.0.0.1:9", "fraud-pinned")
    validation = _validated(settings)
    _rewrite(Path(validation["batch_path"]))
    ident = retraining.RunIdentity("retrain", "manual__pin")
    placement = {"target": "local"}
    router = ResourceRouter(LocalMachineProvider(), ReservationBook(tmp_path / "book.sqlite"))
    with pytest.raises(BatchChangedError, match="changed after validation: validated fingerprint"):
        retraining.train(
            settings,
            ident,
            validation=validation,
            placement=placement,
            hyperparams={"epochs": 1},
            router=router,
            launcher=retrain.launcher(settings, ident, placement=placement, router=router, context=None),
            log=lambda _: None,
        )
    assert not (settings.runs_dir / ident.safe_name / "output").exists()  # no trainer was started


def test_a_training_identical_to_a_registered_version_is_found_and_any_difference_is_not(
    mlflow_server: str, tmp_path: Path
) -> None:
    model = f"fraud-same-{os.getpid()}"
    settings = _settings(tmp_path, mlflow_server, model)
    ident = retraining.RunIdentity("retrain", "manual__first")
    validation = _validated(settings)
    params = {"epochs": 3}
    config = json.loads(
        retraining.train_config(settings, ident, validation, hyperparams=retraining.hyperparams(params)).to_json()
    )
    tags = {
        retraining.DATA_FINGERPRINT_TAG: validation["fingerprint"],
        retraining.TRAINING_FINGERPRINT_TAG: retraining.training_fingerprint(config),
    }
    version = _register(MlflowRegistry(mlflow_server), tmp_path, model, ident.run_key, tags)

    again = retraining.RunIdentity("retrain", "manual__second")  # other run, other folders: same training
    lines: list[str] = []
    same = retraining.find_identical(settings, again, validation=validation, params=params, log=lines.append)
    assert same is not None and same["version"] == version
    assert any(f"identical to v{version}: nothing registered" in line for line in lines), lines
    assert retraining.find_identical(settings, again, validation=validation, params={"epochs": 4}, log=print) is None
    other = _validated(settings, "2026-11-03")
    assert retraining.find_identical(settings, again, validation=other, params=params, log=print) is None
    assert MlflowRegistry(mlflow_server).get_version(model, version).tags[RUN_KEY_TAG] == ident.run_key
