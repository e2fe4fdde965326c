"""The seam's readers of Connections and Variables: what a deployment sets arrives in the library's
settings objects, and a missing or malformed value fails naming the Variable. Variables come from
AIRFLOW_VAR_* as a deployment sets them (Airflow reads those without a metadata DB)."""

from __future__ import annotations

from pathlib import Path

import pytest

from include.mlops.airflow import config
from include.mlops.errors import SettingsError


def test_the_container_settings_come_from_the_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_TRAINING_IMAGE", "127.0.0.1:5001/mlops-train@sha256:abc")
    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_TRAINING_DOCKER_MOUNTS", '["/opt/cache:/cache"]')
    box = config.training_container_settings(tmp_path, "unix:///x/docker.sock")
    assert (box.image, box.data_root, box.docker_url, box.extra_mounts) == (
        "127.0.0.1:5001/mlops-train@sha256:abc",
        str(tmp_path.resolve()),
        "unix:///x/docker.sock",
        (("/opt/cache", "/cache"),),
    )


def test_a_docker_placement_without_a_training_image_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AIRFLOW_VAR_MLOPS_TRAINING_IMAGE", raising=False)
    with pytest.raises(SettingsError, match=r"Variable mlops_training_image \(the training image"):
        config.training_container_settings(tmp_path, None)


def test_an_unknown_capacity_source_is_refused_naming_the_variable_and_the_choices(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_ROUTER_CAPACITY_SOURCE", "slurm:queue")
    monkeypatch.setenv("AIRFLOW_VAR_ROUTER_BOOK_PATH", str(tmp_path / "book.sqlite"))
    with pytest.raises(SettingsError, match=r"router_capacity_source='slurm:queue': use 'local', 'docker'"):
        config.router()


def test_the_allow_lists_must_be_json_lists_of_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_MLOPS_ALLOWED_PRIORITY_CLASSES", "training-high")
    with pytest.raises(SettingsError, match=r"Variable mlops_allowed_priority_classes='training-high' is not JSON"):
        config.resource_policy()
