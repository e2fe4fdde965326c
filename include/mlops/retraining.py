"""The retrain DAG's steps: validate_data, skip_if_identical, route, train, evaluate, register.

Each function is one task body: plain arguments in, a JSON-safe dict out (the XCom),
so the DAG file stays wiring only and every step runs and is tested without Airflow.
What Airflow supplies (settings from Connections and Variables, the router, the launchers) comes
in as arguments from ``include.mlops.airflow.retrain``, which also turns ``CapacityWait`` into a
reschedule and ``PlacementError`` into a failure without retries.
The batch's fingerprint is pinned at validation: train and evaluate refuse a file whose bytes
changed since, so what was validated is what trains and is scored.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.errors import CapacityWait, PlacementError
from include.mlops.settings.project import PROJECT_ROOT, ProjectSettings

if TYPE_CHECKING:
    from include.mlops.routing.router import ResourceRouter
    from include.mlops.routing.training import ResourcePolicy
    from include.mlops.training.config import TrainConfig, TrainingResult
    from include.mlops.training.launch import Launch

SUITE_PATH = PROJECT_ROOT / "include" / "data" / "suites" / "transactions.yaml"
EXPERIMENT_PREFIX = "retrain-"
DATA_FINGERPRINT_TAG = "data.fingerprint"
TRAINING_FINGERPRINT_TAG = "training.fingerprint"
# What decides the model besides the data and the params: the training entrypoint, the feature
# encoding and the pinned training requirements. A change to any of them is a different training.
TRAINING_CODE = (
    "include/mlops/training/train.py",
    "include/mlops/training/checkpoint.py",
    "include/mlops/training/export.py",
    "include/mlops/training/config.py",
    "include/mlops/data/features.py",
    "include/mlops/data/schema.py",
    "include/mlops/data/batches.py",
    "requirements-train.txt",
)
# TrainConfig fields that name this run's folders, not how the model is trained
PER_RUN_CONFIG_FIELDS = frozenset({"data_path", "data_fingerprint", "output_dir", "checkpoint_dir"})
Log = Callable[[str], None]
# Starts (or resumes) the training of a config where the placement says; returns its result.
TrainingLauncher = Callable[["TrainConfig"], "TrainingResult"]


@dataclass(frozen=True)
class RunIdentity:
    """Which Airflow run (and try) a step belongs to: the key of every idempotent write."""

    dag_id: str
    run_id: str
    try_number: int = 1

    @property
    def run_key(self) -> str:
        return f"{self.dag_id}/{self.run_id}"

    @property
    def safe_name(self) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.run_id)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def ensure_reference_batch(settings: ProjectSettings) -> Path:
    """The reference batch the drift checks compare with (generated once, deterministically)."""
    from include.mlops.data.generate import write_reference

    ref = settings.reference_batch
    if not ref.exists():
        ref.parent.mkdir(parents=True, exist_ok=True)
        write_reference(ref)
    return ref


def resolve_batch(settings: ProjectSettings, batch_path: str | None) -> Path:
    from include.mlops.data.batches import latest_batch

    if batch_path:
        p = Path(batch_path)
        return p if p.is_absolute() else PROJECT_ROOT / p
    return latest_batch(settings.landing_dir)


def validate_data(
    settings: ProjectSettings, ident: RunIdentity, batch_path: str | None, *, log: Log = print
) -> dict[str, Any]:
    """Run the expectation suite on the batch; raise DataValidationError naming each failure."""
    from include.mlops.data_quality.validate import validate_batch

    batch = resolve_batch(settings, batch_path)
    reference = ensure_reference_batch(settings)
    report_dir = settings.reports_dir / ident.safe_name
    log(f"validating {batch} against {SUITE_PATH.name} (reference {reference.name})")
    report = validate_batch(batch, SUITE_PATH, reference, report_dir=report_dir)
    log(f"validation report: {report.result_json_path}")
    log(f"data docs: {report.data_docs_index_path}")
    log(
        f"{report.n_expectations} expectations on {report.row_count} rows in {report.duration_s:.2f} s: "
        f"{'passed' if report.success else f'{len(report.failures)} failed'}"
    )
    report.raise_for_failures()
    return {"batch_path": str(batch), **report.summary()}


def hyperparams(params: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig fields a retrain run's params set (the rest keep TrainConfig's defaults)."""
    return {"epochs": int(params["epochs"])}


def training_fingerprint(config: dict[str, Any]) -> str:
    """sha256 over the training's params (its TrainConfig minus this run's folders) and its code."""
    h = hashlib.sha256()
    params = {k: v for k, v in config.items() if k not in PER_RUN_CONFIG_FIELDS}
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    for rel in TRAINING_CODE:
        path = PROJECT_ROOT / rel
        h.update(f"\0{rel}\0".encode())
        h.update(path.read_bytes() if path.is_file() else b"(missing)")
    return h.hexdigest()


def find_identical(
    settings: ProjectSettings,
    ident: RunIdentity,
    *,
    validation: dict[str, Any],
    params: dict[str, Any],
    log: Log = print,
) -> dict[str, Any] | None:
    """The registered version trained on this very batch with the same code and params, if any.

    Training it again would register a copy of that version and send it through a canary
    against itself, so the run stops here instead: it reports the version and registers nothing.
    """
    from include.mlops.registry.mlflow_registry import MlflowRegistry

    config = json.loads(train_config(settings, ident, validation, hyperparams=hyperparams(params)).to_json())
    wanted = {DATA_FINGERPRINT_TAG: validation["fingerprint"], TRAINING_FINGERPRINT_TAG: training_fingerprint(config)}
    same = MlflowRegistry(settings.mlflow_tracking_uri).find_tagged_version(settings.registered_model, wanted)
    if same is None:
        log(f"no version of {settings.registered_model} has this batch, code and params: training")
        return None
    log(
        f"identical to v{same.version}: nothing registered ({settings.registered_model} v{same.version} was "
        f"trained on batch {wanted[DATA_FINGERPRINT_TAG][:12]} with training fingerprint "
        f"{wanted[TRAINING_FINGERPRINT_TAG][:12]}, by run {same.tags.get('airflow.run_id', '?')})"
    )
    return {"model_name": same.name, "version": same.version, **wanted}


def route_training(
    ident: RunIdentity,
    request: dict[str, Any] | None,
    *,
    router: ResourceRouter,
    policy: ResourcePolicy | None = None,
    waited_s: float = 0.0,
    log: Log = print,
) -> dict[str, Any]:
    """Ask the resource router where training runs now (a GPU first, the local CPU as the last resort)
    and which launch task holds the placement's Airflow pool slots; the placement dict gets
    ``launch`` (that task's id). Raises CapacityWait while nothing fits, PlacementError when the
    request can never fit or has waited longer than its ``max_wait_s``."""
    from include.mlops.routing.training import place_training, release_training
    from include.mlops.training.launch import choose_launch

    key = training_task_key(ident)
    placement = place_training(key, request or {}, router=router, policy=policy, log=log, waited_s=waited_s)
    if placement.get("decision") == "wait":
        if placement.get("max_wait_exceeded"):
            raise PlacementError(
                f"gave up after waiting {waited_s:.0f}s for capacity (request max_wait_s exceeded): "
                f"{placement.get('explanation_text') or placement.get('reason')}"
            )
        raise CapacityWait(str(placement.get("reason")), float(placement.get("recheck_after_s") or 30))
    try:
        launch = choose_launch(placement)
    except PlacementError:
        release_training(key, router=router, log=log)
        raise
    placement["launch"] = launch.task_id
    slots = int(placement.get("pool_slots", 1))
    over = f" (placement asked {slots}; the DAG's slot steps round up)" if launch.pool_slots > slots else ""
    log(f"launch: {launch.task_id} in Airflow pool {launch.pool} holding {launch.pool_slots} slot(s){over}")
    return placement


def training_result(results: list[Any]) -> dict[str, Any]:
    """The one launch task that ran (the others were skipped by the branch)."""
    ran = [r for r in results if r]
    if len(ran) != 1:
        raise RuntimeError(f"expected the result of exactly one training launch task, got {len(ran)}")
    return dict(ran[0])


def training_task_key(ident: RunIdentity) -> str:
    """The router's key of this run's training: its reservation is held and released under it."""
    return f"{ident.run_key}/train"


def train(
    settings: ProjectSettings,
    ident: RunIdentity,
    *,
    validation: dict[str, Any],
    placement: dict[str, Any],
    hyperparams: dict[str, Any],
    router: ResourceRouter,
    launcher: TrainingLauncher,
    launch: Launch | None = None,
    keeps_reservation: Callable[[BaseException], bool] = lambda exc: False,
    log: Log = print,
) -> dict[str, Any]:
    """Run the training entrypoint where the router placed it (``launcher`` starts it there: a local
    process, a Kubernetes pod or a local Docker container, same entrypoint, same config); checkpoints
    keyed by the run survive retries. ``launch``: the launch task running this (it must hold the
    placement's pool slots). ``keeps_reservation``: whether an exception out of the launcher leaves
    the training running (an Airflow deferral: the pod runs on, and so does its reservation)."""
    from include.mlops.data.batches import check_fingerprint
    from include.mlops.training.launch import check_launch

    if launch is not None:
        check_launch(launch, placement)
    check_fingerprint(validation["batch_path"], validation["fingerprint"])
    config = train_config(settings, ident, validation, hyperparams=hyperparams)
    log(f"training on {placement.get('target')}: {placement.get('explanation_text', '')}")
    try:
        result = launcher(config)
    except BaseException as exc:
        if not keeps_reservation(exc):
            _release(ident, router, log)
        raise
    _release(ident, router, log)
    # the trainer read the file by path: a rewrite while it ran means it trained on unvalidated bytes
    check_fingerprint(validation["batch_path"], validation["fingerprint"])
    return trained_summary(config, result)


def resume_training(
    settings: ProjectSettings,
    ident: RunIdentity,
    *,
    validation: dict[str, Any],
    hyperparams: dict[str, Any],
    router: ResourceRouter,
    resumer: TrainingLauncher,
    log: Log = print,
) -> dict[str, Any]:
    """Finish a deferred training (``resumer``: from the trigger's event: log, cleanup, result)."""
    from include.mlops.data.batches import check_fingerprint

    config = train_config(settings, ident, validation, hyperparams=hyperparams)
    try:
        result = resumer(config)
    finally:
        _release(ident, router, log)
    check_fingerprint(validation["batch_path"], validation["fingerprint"])
    return trained_summary(config, result)


def train_config(
    settings: ProjectSettings, ident: RunIdentity, validation: dict[str, Any], *, hyperparams: dict[str, Any]
) -> TrainConfig:
    """The run's TrainConfig: its folders are keyed by the run, so a retry resumes from checkpoints."""
    from include.mlops.training.config import TrainConfig

    run_dir = settings.runs_dir / ident.safe_name
    return TrainConfig(
        data_path=validation["batch_path"],
        data_fingerprint=validation["fingerprint"],
        output_dir=str(run_dir / "output"),
        checkpoint_dir=str(run_dir / "checkpoints"),
        **hyperparams,
    )


def _release(ident: RunIdentity, router: ResourceRouter, log: Log) -> None:
    # the reservation bridged decision and start; a finished (or failed) training frees it now,
    # not at its TTL, or back-to-back runs on a small machine see their own stale claims
    from include.mlops.routing.training import release_training

    release_training(training_task_key(ident), router=router, log=log)


def trained_summary(config: TrainConfig, result: TrainingResult) -> dict[str, Any]:
    return {
        "output_dir": config.output_dir,
        "model_onnx_path": str(result.model_onnx_path),
        "metrics_path": str(result.metrics_path),
        "device": result.device,
        "epochs_run": result.epochs_run,
        "resumed_from_epoch": result.resumed_from_epoch,
        "duration_s": result.duration_s,
        "holdout": result.holdout,
        "config": json.loads(config.to_json()),
    }


def evaluate(
    settings: ProjectSettings,
    ident: RunIdentity,
    *,
    validation: dict[str, Any],
    trained: dict[str, Any],
    log: Log = print,
) -> dict[str, Any]:
    """Score challenger and current champion on the same holdout rows of this batch."""
    from include.mlops.data.batches import read_batch
    from include.mlops.evaluation.onnx_eval import evaluate_models
    from include.mlops.registry.mlflow_registry import CHAMPION, MlflowRegistry

    fraction = float(trained["config"]["holdout_fraction"])
    df = read_batch(Path(validation["batch_path"]), expected_fingerprint=validation["fingerprint"])
    registry = MlflowRegistry(settings.mlflow_tracking_uri)
    champ_ref = registry.get_alias(settings.registered_model, CHAMPION)
    models: dict[str, str | Path] = {"challenger": Path(trained["model_onnx_path"])}
    if champ_ref is not None:
        dst = settings.runs_dir / ident.safe_name / f"champion-v{champ_ref.version}"
        models["champion"] = registry.download_onnx(champ_ref, dst)
    # one holdout encoding for both models: the gate compares them on exactly the same rows
    scores = evaluate_models(models, df, fraction)
    challenger = scores["challenger"].to_dict()
    champion = scores["champion"].to_dict() if "champion" in scores else None
    log(f"challenger on holdout: {challenger}")
    log(f"champion v{champ_ref.version} on the same holdout: {champion}" if champ_ref else "no champion yet")
    return {
        "challenger": challenger,
        "champion": champion,
        "champion_version": champ_ref.version if champ_ref else None,
    }


def register(
    settings: ProjectSettings,
    ident: RunIdentity,
    *,
    validation: dict[str, Any],
    placement: dict[str, Any],
    trained: dict[str, Any],
    evaluation: dict[str, Any],
    gate_metric: str,
    gate_min_improvement: float,
    log: Log = print,
) -> dict[str, Any]:
    """Log the run, register a version (once per Airflow run), alias it challenger, record the gate."""
    from include.mlops.registry.gate import decide_promotion
    from include.mlops.registry.mlflow_registry import CHALLENGER, MlflowRegistry, TrainingRecord

    metrics = json.loads(Path(trained["metrics_path"]).read_text())
    output_dir = Path(trained["output_dir"])
    decision = decide_promotion(
        gate_metric, evaluation["challenger"], evaluation["champion"], min_improvement=gate_min_improvement
    )
    lineage = {
        "airflow.dag_id": ident.dag_id,
        "airflow.run_id": ident.run_id,
        "airflow.try_number": str(ident.try_number),
        "git.commit": git_commit(),
        "data.path": validation["batch_path"],
        DATA_FINGERPRINT_TAG: validation["fingerprint"],
        TRAINING_FINGERPRINT_TAG: training_fingerprint(trained["config"]),
        "data.rows": str(validation["row_count"]),
        "validation.success": str(validation["success"]),
        "validation.expectations": str(validation["n_expectations"]),
        "placement.target": str(placement.get("target")),
        "placement.summary": str(placement.get("explanation_text", ""))[:4000],
        "training.device": str(trained["device"]),
    }
    record = TrainingRecord(
        run_key=ident.run_key,
        params=trained["config"],
        history=metrics.get("history", []),
        holdout_metrics=evaluation["challenger"],
        model_onnx_path=Path(trained["model_onnx_path"]),
        input_example_path=output_dir / "input_example.json",
        tags=lineage,
        artifacts={"training": Path(trained["metrics_path"]), "validation": Path(validation["result_json_path"])},
    )
    registry = MlflowRegistry(settings.mlflow_tracking_uri)
    run_id = registry.log_training(record, EXPERIMENT_PREFIX + settings.registered_model)
    version = registry.register_version(settings.registered_model, run_id, ident.run_key, tags=lineage)
    registry.set_version_tags(settings.registered_model, version.version, decision.as_tags())
    registry.set_alias(settings.registered_model, CHALLENGER, version.version)
    log(f"registered {settings.registered_model} v{version.version} (run {run_id}) as {CHALLENGER}")
    log(f"gate: {'PASSED' if decision.passed else 'REJECTED'}: {decision.reason}")
    return {
        "model_name": settings.registered_model,
        "version": version.version,
        "run_id": run_id,
        "gate": decision.to_dict(),
        "tracking_uri": settings.mlflow_tracking_uri,
    }


def batch_from_asset_events(events: Any) -> str | None:
    """The batch path a `transactions_landing` event carries in its extra, if the run was asset-triggered."""
    if not events:
        return None
    for _asset, asset_events in events.items():
        for event in reversed(list(asset_events)):
            path = (getattr(event, "extra", None) or {}).get("path")
            if path:
                return str(path)
    return None
