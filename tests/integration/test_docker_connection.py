"""docker_default as Airflow reads it (its secrets backends, AIRFLOW_CONN_ variables): only an
absent connection means "no engine"; a broken one fails, naming the connection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.mlops.airflow.config import project_settings
from include.mlops.errors import BuildError, SettingsError
from include.mlops.settings.project import ProjectSettings

MLFLOW = json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": 5999, "schema": "http"})


@pytest.fixture()
def airflow_conns(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", MLFLOW)
    monkeypatch.delenv("AIRFLOW_CONN_DOCKER_DEFAULT", raising=False)
    return monkeypatch


def _docker(monkeypatch: pytest.MonkeyPatch, value: object) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_DOCKER_DEFAULT", value if isinstance(value, str) else json.dumps(value))


def test_an_absent_docker_connection_means_no_engine(airflow_conns: pytest.MonkeyPatch) -> None:
    s = project_settings()
    assert (s.docker_base_url, s.image_registry) == (None, None)


def test_a_well_formed_docker_connection_gives_its_engine_and_registry(airflow_conns: pytest.MonkeyPatch) -> None:
    _docker(airflow_conns, {"conn_type": "docker", "host": "unix:///x/docker.sock", "extra": {"registry": "r:5001"}})
    s = project_settings()
    assert (s.docker_base_url, s.image_registry) == ("unix:///x/docker.sock", "r:5001")
    # the provider's shape: host = registry, login, engine in extra.base_url
    _docker(airflow_conns, {"conn_type": "docker", "host": "reg.example.org", "port": 443, "login": "ci"})
    s = project_settings()
    assert (s.docker_base_url, s.image_registry) == (None, "reg.example.org:443")


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ('{"conn_type": "docker", "host": ', "AIRFLOW_CONN_DOCKER_DEFAULT is set but Airflow cannot read it"),
        ({"conn_type": "docker", "host": "unix//var/run/docker.sock"}, "is not a Docker engine URL"),
        ({"conn_type": "docker", "host": "htp://engine:2375"}, "has scheme 'htp'"),
        ({"conn_type": "docker", "host": "tcp://"}, "names no host"),
        ({"conn_type": "docker", "host": ""}, "has no host"),
        ({"conn_type": "docker", "host": "unix:///s.sock", "extra": "registry=r:5001"}, "extra is not valid JSON"),
        ({"conn_type": "docker", "host": "unix:///s.sock", "extra": {"registry": 5001}}, "extra.registry=5001"),
        ({"conn_type": "docker", "host": "r", "login": "ci", "extra": {"base_url": "docker.sock"}}, "extra.base_url"),
    ],
)
def test_a_broken_docker_connection_fails_naming_it(
    airflow_conns: pytest.MonkeyPatch, value: object, named: str
) -> None:
    _docker(airflow_conns, value)
    with pytest.raises(SettingsError, match="docker_default") as err:
        project_settings()
    assert named in str(err.value)


def test_an_unreachable_engine_skips_the_image_on_the_local_profile_only(tmp_path: Path) -> None:
    from include.mlops.releasing import build_image

    plan = {"noop": False, "dry_run": False, "model_name": "m", "version": "1"}
    local = ProjectSettings(
        profile="local",
        mlflow_tracking_uri="http://127.0.0.1:5999",
        mlflow_backend_store=tmp_path / "mlflow.db",
        mlflow_artifact_root=tmp_path / "artifacts",
        data_root=tmp_path / "data",
        serving_root=tmp_path / "serving",
        registered_model="m",
        docker_base_url=f"unix://{tmp_path}/no-engine.sock",
        image_registry="127.0.0.1:5001",
    )
    skipped = build_image(local, plan, log=lambda _: None)
    assert "no Docker engine reachable" in skipped["skipped"] and "no-engine.sock" in skipped["skipped"]

    import dataclasses

    with pytest.raises(BuildError, match=r"profile 'docker' serves images, but connection docker_default: .*no-engine"):
        build_image(dataclasses.replace(local, profile="docker"), plan, log=lambda _: None)
