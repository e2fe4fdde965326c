"""MLflow as the model registry: log a training run, register a version, move aliases.

Every write is keyed by the Airflow run (tag `airflow.run_key`), so a retried task finds
the run or version it already made instead of creating a duplicate. Aliases, not stages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from include.mlops.errors import InvalidReleaseParams

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

RUN_KEY_TAG = "airflow.run_key"
CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION_TAG = "release.previous_champion"


@dataclass(frozen=True)
class ModelVersionRef:
    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class TrainingRecord:
    """What a training produced, in the shape the registry logs it."""

    run_key: str
    params: dict[str, Any]
    history: list[dict[str, float]]
    holdout_metrics: dict[str, float]
    model_onnx_path: Path
    input_example_path: Path | None
    tags: dict[str, str]
    artifacts: dict[str, Path]


class ModelRegistry(Protocol):
    def log_training(self, record: TrainingRecord, experiment: str) -> str: ...
    def register_version(self, name: str, run_id: str, run_key: str, tags: dict[str, str]) -> ModelVersionRef: ...
    def get_alias(self, name: str, alias: str) -> ModelVersionRef | None: ...
    def set_alias(self, name: str, alias: str, version: str) -> None: ...
    def get_version(self, name: str, version: str) -> ModelVersionRef: ...
    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None: ...
    def download_onnx(self, ref: ModelVersionRef, dst: Path) -> Path: ...


def _ref(mv: Any) -> ModelVersionRef:
    return ModelVersionRef(
        name=mv.name, version=str(mv.version), run_id=mv.run_id, source=mv.source, tags=dict(mv.tags or {})
    )


class MlflowRegistry:
    """ModelRegistry on an MLflow tracking server (all profiles; the URI comes from the connection)."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri

    @property
    def client(self) -> MlflowClient:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def find_run(self, experiment: str, run_key: str) -> str | None:
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            return None
        runs = self.client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}' and attributes.status = 'FINISHED'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def log_training(self, record: TrainingRecord, experiment: str) -> str:
        """Log params, per-epoch metrics, holdout metrics, lineage tags and the ONNX model; return run id."""
        existing = self.find_run(experiment, record.run_key)
        if existing:
            return existing
        import mlflow
        import numpy as np
        import onnx
        from mlflow.models import infer_signature

        from include.mlops.data.features import encode_records

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_experiment(experiment)
        with mlflow.start_run(tags={RUN_KEY_TAG: record.run_key, **record.tags}) as run:
            mlflow.log_params({k: str(v)[:500] for k, v in record.params.items()})
            for row in record.history:
                epoch = int(row.get("epoch", 0))
                mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=epoch)
            mlflow.log_metrics({f"holdout_{k}": float(v) for k, v in record.holdout_metrics.items() if v is not None})
            for name, path in record.artifacts.items():
                if path.is_dir():
                    mlflow.log_artifacts(str(path), artifact_path=name)
                elif path.exists():
                    mlflow.log_artifact(str(path), artifact_path=name)
            example = None
            signature = None
            if record.input_example_path is not None and record.input_example_path.exists():
                records = json.loads(record.input_example_path.read_text())
                example = encode_records(records)
                import onnxruntime as ort

                sess = ort.InferenceSession(str(record.model_onnx_path), providers=["CPUExecutionProvider"])
                out = sess.run(None, {sess.get_inputs()[0].name: example})[0]
                signature = infer_signature(example, np.asarray(out))
                mlflow.log_artifact(str(record.input_example_path), artifact_path="raw_input_example")
            mlflow.onnx.log_model(
                onnx.load(str(record.model_onnx_path)),
                name="model",
                signature=signature,
                input_example=example,
                save_as_external_data=False,  # one self-contained file for servers and image builds
            )
            return str(run.info.run_id)

    def find_version(self, name: str, run_key: str) -> ModelVersionRef | None:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.search_model_versions(f"name = '{name}' and tags.`{RUN_KEY_TAG}` = '{run_key}'")
        except MlflowException:
            return None
        return _ref(found[0]) if found else None

    def register_version(self, name: str, run_id: str, run_key: str, tags: dict[str, str]) -> ModelVersionRef:
        existing = self.find_version(name, run_key)
        if existing is not None:
            return existing
        from mlflow.exceptions import MlflowException

        client = self.client
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="Card-transaction fraud model (retrain DAG).")
        import mlflow

        mlflow.set_registry_uri(self.tracking_uri)
        mlflow.set_tracking_uri(self.tracking_uri)
        mv = mlflow.register_model(self._model_source(run_id), name, tags={RUN_KEY_TAG: run_key, **tags})
        return _ref(client.get_model_version(name, mv.version))

    def _model_source(self, run_id: str) -> str:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        models = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list")
        if models:
            return str(models[0].model_uri)
        return f"runs:/{run_id}/model"

    def get_alias(self, name: str, alias: str) -> ModelVersionRef | None:
        from mlflow.exceptions import MlflowException

        try:
            return _ref(self.client.get_model_version_by_alias(name, alias))
        except MlflowException:
            return None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def get_version(self, name: str, version: str) -> ModelVersionRef:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException as e:
            raise InvalidReleaseParams(f"param model_name={name!r}: no such registered model") from e
        if not version.isdigit():
            ref = self.get_alias(name, version)
            if ref is None:
                raise InvalidReleaseParams(f"param version={version!r}: model {name!r} has no such alias")
            return ref
        try:
            return _ref(self.client.get_model_version(name, version))
        except MlflowException as e:
            raise InvalidReleaseParams(f"param version={version!r}: model {name!r} has no version {version}") from e

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(name, version, k, str(v)[:5000])

    def log_version_artifact(self, ref: ModelVersionRef, local_path: Path, artifact_path: str) -> None:
        """Attach a file (analysis JSON, plot) to the run that produced the version."""
        if ref.run_id is None:
            return
        self.client.log_artifact(ref.run_id, str(local_path), artifact_path=artifact_path)

    def download_onnx(self, ref: ModelVersionRef, dst: Path) -> Path:
        """Download the version's ONNX file to dst/ (cached: a second call reads the disk)."""
        import mlflow

        dst.mkdir(parents=True, exist_ok=True)
        cached = sorted(dst.rglob("*.onnx"))
        if cached:
            return cached[0]
        # resolve models:/ through *this* registry (the process-wide default may point elsewhere)
        source = self.client.get_model_version_download_uri(ref.name, ref.version)
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=self.tracking_uri)
        )
        found = sorted(local.rglob("*.onnx"))
        if not found:
            raise FileNotFoundError(f"model {ref.name} v{ref.version}: no .onnx file in {ref.uri}")
        return found[0]  # left in place: an ONNX file may reference external data beside it
