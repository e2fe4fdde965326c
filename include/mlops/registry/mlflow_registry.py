"""MLflow as the model registry: log a training run, register a version, move aliases.

Every write is keyed by the Airflow run (tag `airflow.run_key`), so a retried task finds
the run or version it already made instead of creating a duplicate. Aliases, not stages.
Only MLflow's RESOURCE_DOES_NOT_EXIST answer means "absent"; any other failure (unreachable,
timeout, 5xx) raises RegistryUnavailable, because "no champion" or "no version yet" read from
an error would pass the gate unopposed or register a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from include.mlops.errors import InvalidReleaseParams, RegistryUnavailable

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

RUN_KEY_TAG = "airflow.run_key"
CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION_TAG = "release.previous_champion"
ABSENT = "RESOURCE_DOES_NOT_EXIST"
DOWNLOADED_DIR = "model"  # dst/<this>: a verified download, renamed into place whole
VERIFIED_FILE = ".mlops-verified.json"  # inside it: size and sha256 of each ONNX file as verified
T = TypeVar("T")


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
    def register_version(self, name: str, run_id: str, run_key: str, *, tags: dict[str, str]) -> ModelVersionRef: ...
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

    def _ask(self, call: str, fn: Callable[[], T]) -> T:
        """One MLflow call; any MLflow error becomes RegistryUnavailable naming the server and the call."""
        from mlflow.exceptions import MlflowException

        try:
            return fn()
        except MlflowException as e:
            raise RegistryUnavailable(
                f"MLflow at {self.tracking_uri} did not answer {call} ({e.error_code}: {_first_line(e)}); "
                "the answer is unknown, so this step fails and its retry asks again"
            ) from e

    def _ask_or_absent(self, call: str, fn: Callable[[], T]) -> T | None:
        """Like _ask, but MLflow's RESOURCE_DOES_NOT_EXIST answer is None: the one error meaning "absent"."""
        from mlflow.exceptions import MlflowException

        try:
            return fn()
        except MlflowException as e:
            if e.error_code == ABSENT:
                return None
            raise RegistryUnavailable(
                f"MLflow at {self.tracking_uri} did not answer {call} ({e.error_code}: {_first_line(e)}); "
                "the answer is unknown, so this step fails and its retry asks again"
            ) from e

    def find_run(self, experiment: str, run_key: str) -> str | None:
        client = self.client
        exp = self._ask(f"get_experiment_by_name({experiment!r})", lambda: client.get_experiment_by_name(experiment))
        if exp is None:  # the client itself reads RESOURCE_DOES_NOT_EXIST as None here
            return None
        runs = self._ask(
            f"search_runs(run_key={run_key!r})",
            lambda: client.search_runs(
                [exp.experiment_id],
                filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}' and attributes.status = 'FINISHED'",
                max_results=1,
            ),
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
        """The version this Airflow run registered, if any (a search of a model that does not exist is [])."""
        return self.find_tagged_version(name, {RUN_KEY_TAG: run_key})

    def find_tagged_version(self, name: str, tags: dict[str, str]) -> ModelVersionRef | None:
        """The newest version of `name` carrying every tag in `tags` with that value, if any."""
        client = self.client
        query = " and ".join([f"name = '{name}'", *(f"tags.`{k}` = '{v}'" for k, v in tags.items())])
        found = self._ask(f"search_model_versions({query!r})", lambda: client.search_model_versions(query))
        return _ref(max(found, key=lambda mv: int(mv.version))) if found else None

    def register_version(self, name: str, run_id: str, run_key: str, *, tags: dict[str, str]) -> ModelVersionRef:
        existing = self.find_version(name, run_key)
        if existing is not None:
            return existing
        client = self.client
        if self._ask_or_absent(f"get_registered_model({name!r})", lambda: client.get_registered_model(name)) is None:
            self._ask(
                f"create_registered_model({name!r})",
                lambda: client.create_registered_model(name, description="Card-transaction fraud model (retrain DAG)."),
            )
        import mlflow

        mlflow.set_registry_uri(self.tracking_uri)
        mlflow.set_tracking_uri(self.tracking_uri)
        mv = self._ask(
            f"register_model({name!r}, run {run_id})",
            lambda: mlflow.register_model(self._model_source(run_id), name, tags={RUN_KEY_TAG: run_key, **tags}),
        )
        return _ref(
            self._ask(f"get_model_version({name!r}, {mv.version})", lambda: client.get_model_version(name, mv.version))
        )

    def _model_source(self, run_id: str) -> str:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        models = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'", output_format="list")
        if models:
            return str(models[0].model_uri)
        return f"runs:/{run_id}/model"

    def get_alias(self, name: str, alias: str) -> ModelVersionRef | None:
        """The version `alias` points at; None only when MLflow says the model or the alias does not exist.

        Read from the registered model's alias map: MLflow answers a missing alias on
        get_model_version_by_alias with INVALID_PARAMETER_VALUE, which cannot be told apart
        from a malformed request, so that call is not used to learn absence.
        """
        client = self.client
        model = self._ask_or_absent(f"get_registered_model({name!r})", lambda: client.get_registered_model(name))
        if model is None:
            return None
        version = dict(model.aliases or {}).get(alias)
        if version is None:
            return None
        mv = self._ask_or_absent(
            f"get_model_version({name!r}, {version}) for alias {alias!r}",
            lambda: client.get_model_version(name, str(version)),
        )
        return None if mv is None else _ref(mv)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        client = self.client
        self._ask(
            f"set_registered_model_alias({name!r}, {alias!r}, {version})",
            lambda: client.set_registered_model_alias(name, alias, version),
        )

    def get_version(self, name: str, version: str) -> ModelVersionRef:
        client = self.client
        if self._ask_or_absent(f"get_registered_model({name!r})", lambda: client.get_registered_model(name)) is None:
            raise InvalidReleaseParams(f"param model_name={name!r}: no such registered model")
        if not version.isdigit():
            ref = self.get_alias(name, version)
            if ref is None:
                raise InvalidReleaseParams(f"param version={version!r}: model {name!r} has no such alias")
            return ref
        mv = self._ask_or_absent(
            f"get_model_version({name!r}, {version})", lambda: client.get_model_version(name, version)
        )
        if mv is None:
            raise InvalidReleaseParams(f"param version={version!r}: model {name!r} has no version {version}")
        return _ref(mv)

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        client = self.client
        for k, v in tags.items():
            self._ask(
                f"set_model_version_tag({name!r}, {version}, {k!r})",
                partial(client.set_model_version_tag, name, version, k, str(v)[:5000]),
            )

    def log_version_artifact(self, ref: ModelVersionRef, local_path: Path, artifact_path: str) -> None:
        """Attach a file (analysis JSON, plot) to the run that produced the version."""
        if ref.run_id is None:
            return
        self.client.log_artifact(ref.run_id, str(local_path), artifact_path=artifact_path)

    def download_onnx(self, ref: ModelVersionRef, dst: Path) -> Path:
        """The version's ONNX file under dst/, downloaded once and checked against MLflow on every call.

        A copy on disk is reused only when each ONNX file has the size MLflow lists for the artifact
        and the sha256 recorded when that copy was verified (MLflow keeps no hash of its own).
        Anything else (a truncated file, a bit flipped, a download that died half way) is downloaded
        again. A download lands in a temporary folder beside the copy and is renamed into place whole,
        so no reader ever sees a partial model.
        """
        import mlflow

        client = self.client
        # resolve models:/ through *this* registry (the process-wide default may point elsewhere)
        source = self._ask(
            f"get_model_version_download_uri({ref.name!r}, {ref.version})",
            lambda: client.get_model_version_download_uri(ref.name, ref.version),
        )
        listed = self._ask(
            f"list_artifacts({source})",
            lambda: mlflow.artifacts.list_artifacts(artifact_uri=source, tracking_uri=self.tracking_uri),
        )
        onnx_files = [f for f in listed if not f.is_dir and f.path.endswith(".onnx")]
        if not onnx_files or any(f.file_size is None for f in onnx_files):
            raise FileNotFoundError(f"model {ref.name} v{ref.version}: no .onnx file with a size in {source}")
        expected = {f.path: int(f.file_size or 0) for f in onnx_files}
        onnx_path = min(expected)
        final = dst / DOWNLOADED_DIR
        if _verified_copy(final, expected):
            return final / onnx_path
        dst.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dst))
        try:
            self._ask(
                f"download_artifacts({source})",
                lambda: mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=str(tmp), tracking_uri=self.tracking_uri
                ),
            )
            record = {}
            for rel, size in expected.items():
                got = tmp / rel
                have = got.stat().st_size if got.is_file() else None
                if have != size:
                    raise RegistryUnavailable(
                        f"model {ref.name} v{ref.version}: downloaded {rel} from {source} has "
                        f"{have if have is not None else 'no'} bytes, MLflow lists {size}"
                    )
                record[rel] = {"size": size, "sha256": _sha256(got)}
            (tmp / VERIFIED_FILE).write_text(json.dumps(record, sort_keys=True))
            _replace_dir(tmp, final, expected)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final / onnx_path  # the folder stays whole: an ONNX file may reference data beside it


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _verified_copy(folder: Path, expected: dict[str, int]) -> bool:
    """True when `folder` holds each expected file at MLflow's size and the sha256 recorded at download."""
    try:
        record = json.loads((folder / VERIFIED_FILE).read_text())
    except (OSError, ValueError):
        return False
    for rel, size in expected.items():
        path = folder / rel
        entry = record.get(rel) if isinstance(record, dict) else None
        if not isinstance(entry, dict) or entry.get("size") != size or not path.is_file():
            return False
        if path.stat().st_size != size or _sha256(path) != entry.get("sha256"):
            return False
    return True


def _replace_dir(new: Path, final: Path, expected: dict[str, int]) -> None:
    """Rename the verified download `new` to `final`, moving a stale copy aside first.

    Renaming a folder onto a name that exists fails, so a concurrent download that got there
    first wins: its copy is kept when it verifies.
    """
    if final.exists() and not _verified_copy(final, expected):
        stale = final.with_name(f".stale-{final.name}-{os.getpid()}")
        shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(final, stale)
        except FileNotFoundError:
            pass  # another process moved it aside already
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(new, final)
    except OSError:
        if not _verified_copy(final, expected):
            raise
