"""The retrain DAG end to end: real GX, real training process, real MLflow server, real Airflow runs.

The runs build on each other (one deployment per module, in order): a first model, the same
batch again that must register nothing, a drifted batch that must stop at validation, a better
model gated against a champion, and a challenger the gate must reject.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.mlops.assets import MODEL_CHALLENGER_READY
from include.mlops.registry.mlflow_registry import CHALLENGER, CHAMPION, MlflowRegistry
from include.mlops.routing.model import Claim
from include.mlops.training.launch import LAUNCHES
from tests.e2e.conftest import Deployment

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LAUNCH_TASKS = tuple(x.task_id for x in LAUNCHES)
DOWNSTREAM_OF_VALIDATION = (
    "skip_if_identical",
    "route",
    *LAUNCH_TASKS,
    "trained",
    "evaluate",
    "register",
    "publish_challenger",
)


def _versions(dep: Deployment) -> list:
    client = MlflowRegistry(dep.mlflow_uri).client
    return sorted(client.search_model_versions(f"name='{dep.model_name}'"), key=lambda v: int(v.version))


def test_first_run_validates_trains_registers_and_publishes_the_challenger(deployment: Deployment) -> None:
    batch = deployment.write_batch("2026-11-02", n_rows=12_000, seed=11)
    run = deployment.dags_test("retrain", {"batch_path": str(batch), "epochs": 1})

    assert run.state == "success", run.explain()
    # the local placement branched to the launch task holding its pool (local_compute, 1 slot)
    assert run.tasks["train.local"] == "success" and run.pools["train.local"] == ("local_compute", 1)
    assert {run.tasks[t] for t in LAUNCH_TASKS if t != "train.local"} == {"skipped"}, run.explain()
    assert {s for t, s in run.tasks.items() if t not in LAUNCH_TASKS} == {"success"}, run.explain()
    assert run.reschedules == {}, run.reschedules
    versions = _versions(deployment)
    assert [v.version for v in versions] == ["1"]
    v1 = versions[0]
    reg = MlflowRegistry(deployment.mlflow_uri)
    assert reg.get_alias(deployment.model_name, CHALLENGER).version == "1"
    assert v1.tags["airflow.run_key"] == f"retrain/{run.run_id}"
    assert v1.tags["gate.decision"] == "passed" and v1.tags["gate.champion_value"] == "none"
    # lineage on the MLflow run: data fingerprint, validation summary, placement, per-epoch metrics
    mrun = reg.client.get_run(v1.run_id)
    assert len(mrun.data.tags["data.fingerprint"]) >= 16
    assert mrun.data.tags["validation.success"] == "True"
    # the router's Target literal (routing/model.py), as the local placement above made it
    assert mrun.data.tags["placement.target"] == "local"
    assert mrun.data.tags["airflow.run_id"] == run.run_id
    assert reg.client.get_metric_history(v1.run_id, "train_loss"), "per-epoch metrics were not logged"
    # the gate passed: the release DAG's asset got an event naming the version
    events = deployment.asset_events(MODEL_CHALLENGER_READY)
    assert events[-1] == {"model_name": deployment.model_name, "version": "1"}
    # the GX report is kept: Data Docs HTML and the JSON result
    reports = deployment.data_root / "reports"
    assert list(reports.rglob("*.json")) and list(reports.rglob("index.html"))
    # the router's claim for this training was released when training ended, not left to its TTL
    from include.mlops.routing.reservations import ReservationBook

    assert ReservationBook(deployment.base / "router" / "book.sqlite").active() == []


def test_the_same_batch_code_and_params_again_report_the_version_and_register_nothing(
    deployment: Deployment,
) -> None:
    n_events = len(deployment.asset_events(MODEL_CHALLENGER_READY))
    batch = deployment.data_root / "landing" / "transactions_2026-11-02.parquet"  # the first run's batch
    run = deployment.dags_test("retrain", {"batch_path": str(batch), "epochs": 1})

    assert run.state == "success", run.explain()  # nothing to do is a result, not a failure
    assert [v.version for v in _versions(deployment)] == ["1"]
    assert len(deployment.asset_events(MODEL_CHALLENGER_READY)) == n_events  # no release of a copy
    assert "identical to v1: nothing registered" in run.log, run.explain()
    assert run.tasks["validate_data"] == "success" and run.tasks["skip_if_identical"] == "success"
    for task_id in DOWNSTREAM_OF_VALIDATION[1:]:
        assert run.tasks[task_id] == "skipped", (task_id, run.explain())


def test_a_drifted_batch_stops_at_validation_and_registers_nothing(deployment: Deployment) -> None:
    n_events = len(deployment.asset_events(MODEL_CHALLENGER_READY))
    batch = deployment.write_batch("2026-11-09", n_rows=12_000, seed=12, drift=0.8)
    run = deployment.dags_test("retrain", {"batch_path": str(batch), "epochs": 1})

    assert run.state == "failed", run.explain()
    assert run.tasks["validate_data"] == "failed", run.explain()
    for task_id in DOWNSTREAM_OF_VALIDATION:
        assert run.tasks[task_id] == "upstream_failed", (task_id, run.explain())
    # the log names the failed expectations, their columns and observed values, and the report
    assert "failed of" in run.log and "expectations" in run.log
    assert "amount" in run.log and "observed" in run.log.lower()
    assert "data docs:" in run.log
    assert [v.version for v in _versions(deployment)] == ["1"]
    assert len(deployment.asset_events(MODEL_CHALLENGER_READY)) == n_events


def test_a_better_model_moves_challenger_and_is_gated_against_the_champion(deployment: Deployment) -> None:
    reg = MlflowRegistry(deployment.mlflow_uri)
    reg.set_alias(deployment.model_name, CHAMPION, "1")  # what a release of v1 leaves behind
    batch = deployment.write_batch("2026-11-16", n_rows=12_000, seed=13)
    run = deployment.dags_test("retrain", {"batch_path": str(batch), "epochs": 6})

    assert run.state == "success", run.explain()
    v2 = _versions(deployment)[-1]
    assert v2.version == "2"
    assert reg.get_alias(deployment.model_name, CHALLENGER).version == "2"
    assert reg.get_alias(deployment.model_name, CHAMPION).version == "1"  # only a release moves it
    challenger, champion = float(v2.tags["gate.challenger_value"]), float(v2.tags["gate.champion_value"])
    # both scored on the same holdout rows of this batch; 6 epochs beat 1 epoch here
    assert challenger > champion, v2.tags
    assert v2.tags["gate.decision"] == "passed", v2.tags
    assert run.tasks["publish_challenger"] == "success"
    assert "champion v1 on the same holdout" in run.log


def test_a_challenger_short_of_the_required_improvement_is_rejected(deployment: Deployment) -> None:
    n_events = len(deployment.asset_events(MODEL_CHALLENGER_READY))
    batch = deployment.write_batch("2026-11-23", n_rows=12_000, seed=14)
    run = deployment.dags_test(
        "retrain", {"batch_path": str(batch), "epochs": 1, "gate_metric": "auc", "gate_min_improvement": 0.5}
    )

    assert run.state == "success", run.explain()  # a rejected challenger is a result, not a failure
    assert run.tasks["register"] == "success"
    assert run.tasks["publish_challenger"] == "skipped", run.explain()
    v3 = _versions(deployment)[-1]
    assert v3.version == "3" and v3.tags["gate.decision"] == "rejected", v3.tags
    assert "gate rejected v3" in run.log
    assert len(deployment.asset_events(MODEL_CHALLENGER_READY)) == n_events


def test_training_waits_for_capacity_without_holding_a_worker_then_runs(deployment: Deployment) -> None:
    """Another task holds every local CPU: `route` is rescheduled (no retry spent, no worker slot
    held while waiting) and places training once that claim is released.

    The claim is released when the run has been seen waiting, not after a fixed TTL: on a loaded
    machine validation alone outlasted a 20 s claim, and `route` then never had to wait."""
    import time

    from include.mlops.dag_test import read_run
    from include.mlops.routing.providers.local import LocalMachineProvider
    from include.mlops.routing.reservations import ReservationBook

    node = LocalMachineProvider().snapshot().nodes[0]
    book = ReservationBook(deployment.base / "router" / "book.sqlite", ttl_s=600)
    with book.transaction() as txn:
        txn.reserve("other-dag/run/train", Claim(node.name, cpu_millicores=node.cpu_allocatable_millicores))
    batch = deployment.write_batch("2026-11-30", n_rows=6_000, seed=15)
    running = deployment.start_dags_test(
        "retrain",
        {"batch_path": str(batch), "epochs": 1, "resources": {"gpu_count": 1, "cpu_fallback": True, "max_wait_s": 120}},
    )
    deadline = time.monotonic() + 300
    waited = False
    while not waited and time.monotonic() < deadline and running.proc.poll() is None:
        run_id = running.run_id
        waited = run_id is not None and read_run(deployment.airflow_db, "retrain", run_id)[2].get("route", 0) >= 1
        time.sleep(0.5)
    assert book.release("other-dag/run/train") == 1
    run = running.wait()

    assert run.state == "success", run.explain()
    assert run.reschedules.get("route", 0) >= 1, (run.reschedules, run.explain())
    assert "waiting for capacity" in run.log and "CPU" in run.log, run.explain()
    assert run.tasks["train.local"] == "success", run.explain()
    assert ReservationBook(deployment.base / "router" / "book.sqlite").active() == []


INVENTORY = """
source: e2e-cluster
pool_label: karpenter.sh/nodepool
nodes:
  - {name: gpu-a100-1, node_pool: a100-pool, gpu_type: NVIDIA-A100-SXM4-80GB, gpus: 8, gpus_used: 6, cpu: "96",
     memory: 1Ti}
"""


def test_a_gpu_placement_trains_in_a_deferred_kubernetes_pod_holding_its_gpu_pool_slot(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The router (static inventory: an A100 node with 2 free GPUs) places training on Kubernetes:
    `route` branches to train.gpu_1 (pool gpu_training, 1 slot), which creates the pod and defers;
    the trigger watches it over the API stand-in and the task resumes, reads the model, and the
    run registers it like any other."""
    import kubernetes_validate

    from tests.k8s_standin import NAMESPACE, kubernetes_standin, live_pods

    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    batch = deployment.write_batch("2026-12-07", n_rows=6_000, seed=16)
    with kubernetes_standin(tmp_path) as k8s:
        env = {
            "AIRFLOW_CONN_KUBERNETES_DEFAULT": k8s.conn_json,
            "AIRFLOW_VAR_ROUTER_CAPACITY_SOURCE": f"inventory:{inventory}",
            "AIRFLOW_VAR_MLOPS_TRAINING_IMAGE": "registry.local/mlops-train:e2e",
            "AIRFLOW_VAR_MLOPS_DATA_VOLUME_CLAIM": "mlops-data",
        }
        run = deployment.dags_test("retrain", {"batch_path": str(batch), "epochs": 1}, env=env)
        left = live_pods(k8s)

    assert run.state == "success", run.explain()
    assert run.tasks["train.gpu_1"] == "success" and run.pools["train.gpu_1"] == ("gpu_training", 1), run.explain()
    assert {run.tasks[t] for t in LAUNCH_TASKS if t != "train.gpu_1"} == {"skipped"}, run.explain()
    assert "deferrable: the triggerer watches the pod" in run.log and "running trigger in line" in run.log
    (manifest,) = k8s.created
    kubernetes_validate.validate(manifest, "1.30", strict=True)
    assert manifest["metadata"]["namespace"] == NAMESPACE
    assert manifest["spec"]["nodeSelector"] == {
        "karpenter.sh/nodepool": "a100-pool",
        "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB",
    }
    assert manifest["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert left == [], "the pod was not deleted after training"
    version = _versions(deployment)[-1]
    assert version.tags["airflow.run_key"] == f"retrain/{run.run_id}"
    mrun = MlflowRegistry(deployment.mlflow_uri).client.get_run(version.run_id)
    assert mrun.data.tags["placement.target"] == "kubernetes"
    from include.mlops.routing.reservations import ReservationBook

    assert ReservationBook(deployment.base / "router" / "book.sqlite").active() == []


def test_on_the_docker_source_training_runs_in_a_container_in_the_cpu_launch(deployment: Deployment) -> None:
    """Capacity source `docker`: no GPU here, so the CPU fallback places training on the local
    engine; `route` branches to train.cpu (default_pool x1), which runs a DockerOperator container."""
    import docker

    from tests.docker_trainer import dev_trainer_image, interpreter_mounts
    from tests.services import require_docker_engine

    require_docker_engine()  # skips without an engine; fails under CI=true
    batch = deployment.write_batch("2026-12-14", n_rows=6_000, seed=17)
    with dev_trainer_image() as image:
        env = {
            "AIRFLOW_VAR_ROUTER_CAPACITY_SOURCE": "docker",
            # the deployment points docker_default nowhere (its releases skip image builds); this run has an engine
            "AIRFLOW_CONN_DOCKER_DEFAULT": json.dumps({"conn_type": "docker", "host": "unix:///var/run/docker.sock"}),
            "AIRFLOW_VAR_MLOPS_TRAINING_IMAGE": image,
            "AIRFLOW_VAR_MLOPS_TRAINING_DOCKER_MOUNTS": json.dumps([f"{h}:{c}" for h, c in interpreter_mounts()]),
        }
        run = deployment.dags_test("retrain", {"batch_path": str(batch), "epochs": 1}, env=env)
        left = docker.from_env().containers.list(all=True, filters={"label": "app.kubernetes.io/name=mlops-training"})

    assert run.state == "success", run.explain()
    assert run.tasks["train.cpu"] == "success" and run.pools["train.cpu"] == ("default_pool", 1), run.explain()
    assert {run.tasks[t] for t in LAUNCH_TASKS if t != "train.cpu"} == {"skipped"}, run.explain()
    assert "training container mlops-train-" in run.log and image in run.log, run.explain()
    assert left == []
    mrun = MlflowRegistry(deployment.mlflow_uri).client.get_run(_versions(deployment)[-1].run_id)
    assert mrun.data.tags["placement.target"] == "docker"
