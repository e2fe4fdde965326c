"""Where things are for one run of the pipeline: the profile, endpoints, data and serving folders.

Built from Airflow Connections/Variables inside a task (``include.mlops.airflow.config.project_settings``),
or from airflow_settings.yaml for the local stack commands and tests (`from_settings_file`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from include.mlops.errors import SettingsError

PROJECT_ROOT = Path(__file__).resolve().parents[3]
PROFILES = ("local", "docker", "kubernetes")
MLFLOW_CONN_ID = "mlflow_default"
DOCKER_CONN_ID = "docker_default"
KUBERNETES_CONN_ID = "kubernetes_default"


# Another settings file for the local stack commands (a throwaway stack in tests, a second
# checkout on other ports): the default is the checkout's own airflow_settings.yaml.
SETTINGS_FILE_ENV = "MLOPS_SETTINGS_FILE"


def settings_file() -> Path:
    return Path(os.environ.get(SETTINGS_FILE_ENV) or PROJECT_ROOT / "airflow_settings.yaml")


def resolve_path(value: str, root: Path = PROJECT_ROOT) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (root / p)


@dataclass(frozen=True)
class ProjectSettings:
    profile: str
    mlflow_tracking_uri: str
    mlflow_backend_store: Path
    mlflow_artifact_root: Path
    data_root: Path
    serving_root: Path
    registered_model: str
    docker_base_url: str | None
    image_registry: str | None
    # replicas per track of the docker profile's Swarm services (Variable mlops_serving_replicas)
    serving_replicas: int = 2

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise SettingsError(f"variable mlops_profile={self.profile!r}: must be one of {PROFILES}")

    @property
    def landing_dir(self) -> Path:
        return self.data_root / "landing"

    @property
    def reports_dir(self) -> Path:
        return self.data_root / "reports"

    @property
    def runs_dir(self) -> Path:
        """Per-Airflow-run working folders (training outputs, checkpoints)."""
        return self.data_root / "runs"

    @property
    def reference_batch(self) -> Path:
        return self.data_root / "reference" / "transactions_reference.parquet"

    @classmethod
    def from_settings_file(cls, path: str | Path | None = None) -> ProjectSettings:
        from include.mlops.settings.airflow_settings import load_airflow_settings

        s = load_airflow_settings(path or settings_file())
        ml = s.connection(MLFLOW_CONN_ID)
        dk = s.connection(DOCKER_CONN_ID)
        return cls(
            profile=os.environ.get("AIRFLOW_VAR_MLOPS_PROFILE", s.variable("mlops_profile")),
            mlflow_tracking_uri=f"{ml.schema or 'http'}://{ml.host}:{ml.port}",
            mlflow_backend_store=resolve_path(str(ml.extra.get("backend_store", ".local/mlflow/mlflow.db"))),
            mlflow_artifact_root=resolve_path(str(ml.extra.get("artifact_root", ".local/mlflow/artifacts"))),
            data_root=resolve_path(s.variable("mlops_data_root")),
            serving_root=resolve_path(s.variable("mlops_serving_root")),
            registered_model=s.variable("mlops_registered_model"),
            docker_base_url=dk.host,
            image_registry=dk.extra.get("registry"),
            serving_replicas=int(s.variable("mlops_serving_replicas")),
        )
