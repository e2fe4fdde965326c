"""The rollback DAG asked for 'the previous champion' when the champion has none (its first release).

Nothing is rolled back and nothing is guessed: the task fails naming the param to set, and the
champion alias stays where it was.
"""

from __future__ import annotations

import pytest

from include.mlops.registry.mlflow_registry import CHAMPION, PREVIOUS_CHAMPION_TAG, MlflowRegistry, TrainingRecord
from tests.e2e.conftest import Deployment
from tests.model_fixtures import build_logistic_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_rollback_without_a_previous_champion_fails_naming_the_version_param(deployment: Deployment) -> None:
    reg = MlflowRegistry(deployment.mlflow_uri)
    name = f"{deployment.model_name}-rb"
    model = build_logistic_model(deployment.base / "rb" / "model.onnx", seed=0)
    record = TrainingRecord(
        run_key=f"rb/{name}/1",
        params={},
        history=[],
        holdout_metrics={"auc": 0.9},
        model_onnx_path=model,
        input_example_path=None,
        tags={},
        artifacts={},
    )
    version = reg.register_version(name, reg.log_training(record, f"rb-{name}"), f"rb/{name}/1", tags={}).version
    reg.set_alias(name, CHAMPION, version)  # a first release: champion, no previous champion recorded
    assert PREVIOUS_CHAMPION_TAG not in reg.get_version(name, version).tags

    # no retry after the default 5 min retry_delay: a param a retry cannot fix fails at once
    run = deployment.dags_test("rollback", {"model_name": name}, timeout_s=240)

    assert run.state == "failed" and run.tasks == {"rollback_to_champion": "failed"}, run.explain()
    assert f"param version is empty and {name} has no previous champion recorded; name a version" in run.log
    assert "InvalidReleaseParams" in run.log, run.explain()
    champion = reg.get_alias(name, CHAMPION)
    assert champion is not None and champion.version == version
    assert not (deployment.serving_root / name).exists()  # nothing was started or stopped
