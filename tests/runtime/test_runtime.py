"""What only the real scheduler proves: the data-aware chain, deferral in the real triggerer, pools, max_active_runs.

One runtime for the whole module (`stack up`, PostgreSQL, four Airflow processes, MLflow), started
by the project's own command; every run is triggered through the REST API as the UI does it.
The tests build on each other in file order: the chain makes v1 champion, the approval test
releases a v2 against it, the form test releases again.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from include.mlops.postgres import Cluster
from tests.runtime.conftest import Runtime, stack

pytestmark = [pytest.mark.runtime, pytest.mark.e2e, pytest.mark.slow]

# what the release form posts for a quick canary on this machine (one analysed step, then approval)
FAST_RELEASE = {
    "steps_pct": [50, 100],
    "interval_s": 2,
    "min_requests": 5,
    "max_extensions": 3,
    "load_rps": 20,
    "ready_timeout_s": 60,
}


def _ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _listening(port: int) -> set[str]:
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            addr, hex_port = cols[1].rsplit(":", 1)
            if cols[3] == "0A" and int(hex_port, 16) == port:
                out.add(addr)
    return out


def test_up_starts_each_component_on_loopback_with_a_generated_password(runtime: Runtime) -> None:
    out = runtime.up_output
    assert "password (shown once): " + runtime.password in out, out
    pw_file = runtime.base / "local/runtime/ui-passwords.json"
    assert pw_file.stat().st_mode & 0o777 == 0o600
    assert (runtime.base / "local/runtime/secrets.json").stat().st_mode & 0o777 == 0o600
    status = stack(runtime.env, "status", timeout_s=60).stdout  # reads each component's own pid file
    for name in ("api-server", "scheduler", "dag-processor", "triggerer"):
        assert f"airflow {name}: up" in status, status
    assert "airflow standalone: down" in status and f"postgresql 127.0.0.1:{runtime.pg_port}: up" in status, status
    health = runtime.request("GET", "/api/v2/monitor/health", auth=False)
    assert {k: v["status"] for k, v in health.items()} == {
        "metadatabase": "healthy",
        "scheduler": "healthy",
        "triggerer": "healthy",
        "dag_processor": "healthy",
    }
    ui_port, mlflow_port = int(runtime.ui_url.rsplit(":", 1)[1]), int(runtime.mlflow_uri.rsplit(":", 1)[1])
    for port in (ui_port, runtime.pg_port, mlflow_port):
        assert _listening(port) == {"0100007F"}, (port, _listening(port))  # 127.0.0.1 only
    # the metadata DB is the cluster's PostgreSQL: the DAGs the dag-processor parsed are rows there
    cluster = Cluster(runtime.base / "local/postgres", runtime.pg_port)
    parsed = cluster.psql("SELECT dag_id FROM dag ORDER BY dag_id", database="airflow").split()
    assert parsed == ["land_batch", "release", "retrain", "rollback"], parsed
    with pytest.raises(AssertionError, match="-> 401"):  # conftest.ApiError
        runtime.request("POST", "/auth/token", {"username": "admin", "password": "wrong"}, auth=False)
    print(f"startup (stack up, fresh state folder): {runtime.startup_s:.1f} s")


@pytest.fixture(scope="module")
def chain(runtime: Runtime) -> dict[str, Any]:
    """Land a batch and let the scheduler do the rest: retrain by its Asset schedule, release by retrain's."""
    runtime.unpause("land_batch", "retrain", "release")
    # unpausing retrain fires its latest cron slot at once (catchup=False runs the most recent one);
    # let that run end before the landing, so the chain's runs are the only ones in flight (a cron
    # run that read the new batch would leave the asset-triggered run nothing new to train)
    deadline = time.monotonic() + 60
    while not runtime.runs("retrain") and time.monotonic() < deadline:
        time.sleep(1.0)
    for run in runtime.runs("retrain"):
        assert run["run_type"] == "scheduled", run
        runtime.wait_run("retrain", run["dag_run_id"], 300)
    known_retrain = {r["dag_run_id"] for r in runtime.runs("retrain")}
    t0 = time.monotonic()
    landing = runtime.trigger("land_batch", {"rows": 3000, "seed": 11})
    landed = runtime.wait_run("land_batch", landing["dag_run_id"], 300)
    assert landed["state"] == "success", runtime.where("land_batch", landing["dag_run_id"])
    retrain = runtime.wait_new_run("retrain", known_retrain, 120, run_type="asset_triggered")
    retrain = runtime.wait_run("retrain", retrain["dag_run_id"], 900)
    release = runtime.wait_new_run("release", set(), 300, run_type="asset_triggered")
    release = runtime.wait_run("release", release["dag_run_id"], 600)
    wall_s = time.monotonic() - t0
    return {"landed": landed, "retrain": retrain, "release": release, "wall_s": wall_s}


def _task_seconds(runtime: Runtime, dag_id: str, run_id: str) -> float:
    return sum(float(ti.get("duration") or 0) for ti in runtime.tasks(dag_id, run_id).values())


def test_a_landed_batch_is_retrained_gated_and_promoted_with_no_trigger_after_the_landing(
    runtime: Runtime, chain: dict[str, Any]
) -> None:
    retrain, release = chain["retrain"], chain["release"]
    assert retrain["run_type"] == "asset_triggered", retrain
    assert retrain["state"] == "success", runtime.where("retrain", retrain["dag_run_id"])
    tasks = runtime.tasks("retrain", retrain["dag_run_id"])
    assert tasks["publish_challenger"]["state"] == "success"  # the gate passed and the event was emitted
    assert release["run_type"] == "asset_triggered", release
    assert release["state"] == "success", runtime.where("release", release["dag_run_id"])
    assert runtime.tasks("release", release["dag_run_id"])["promote"]["state"] == "success"
    state = runtime.serving_state()
    assert state["canary"] is None and state["canary_weight_pct"] == 0
    assert state["stable"]["version"] == "1" == runtime.champion()

    landed_to_promoted = (_ts(release["end_date"]) - _ts(chain["landed"]["end_date"])).total_seconds()
    busy = _task_seconds(runtime, "retrain", retrain["dag_run_id"]) + _task_seconds(
        runtime, "release", release["dag_run_id"]
    )
    print(
        f"\nlanding triggered -> promoted: {chain['wall_s']:.1f} s wall; "
        f"landed -> promoted {landed_to_promoted:.1f} s, of which task time {busy:.1f} s "
        f"and scheduling {landed_to_promoted - busy:.1f} s"
    )


def _second_version(runtime: Runtime) -> str:
    """Retrain by hand on the landed batch with a gate it cannot pass: a new version, no release event."""
    known = {r["dag_run_id"] for r in runtime.runs("release")}
    run = runtime.trigger("retrain", {"retrain_identical": True, "gate_min_improvement": 0.5})
    run = runtime.wait_run("retrain", run["dag_run_id"], 900)
    assert run["state"] == "success", runtime.where("retrain", run["dag_run_id"])
    assert runtime.tasks("retrain", run["dag_run_id"])["publish_challenger"]["state"] == "skipped"
    assert {r["dag_run_id"] for r in runtime.runs("release")} == known  # a rejected version starts no release
    from include.mlops.registry.mlflow_registry import MlflowRegistry

    return MlflowRegistry(runtime.mlflow_uri).get_version(runtime.model_name, "2").version


def test_a_rollback_runs_at_once_while_a_release_waits_for_approval_and_that_release_then_fails_cleanly(
    runtime: Runtime, chain: dict[str, Any]
) -> None:
    version = _second_version(runtime)
    conf = {
        "model_name": runtime.model_name,
        "version": version,
        "require_approval": True,
        "allow_gate_rejected": True,
        **FAST_RELEASE,
        # this test is about the wait, not the analysis: a loaded 2-core box must not fail the canary
        "max_p99_latency_ratio": 10,
        "max_prediction_drift": 1.0,
    }
    release = runtime.trigger("release", conf)
    rid = release["dag_run_id"]
    # Airflow 3.3 parks a human-in-the-loop task in AWAITING_INPUT (no trigger, no triggerer): the
    # api-server's response handler or the scheduler's timeout sweep resumes it
    approve = runtime.wait_task("release", rid, "approve", {"awaiting_input"}, 600)
    assert approve["pool"] == "default_pool", approve
    canary = runtime.serving_state()["canary"]
    assert canary is not None and canary["version"] == version

    t0 = time.monotonic()
    rollback = runtime.trigger("rollback", {"model_name": runtime.model_name, "version": "1"})
    rollback = runtime.wait_run("rollback", rollback["dag_run_id"], 180)
    rollback_s = time.monotonic() - t0
    print(f"\nrollback while a release awaits approval: {rollback_s:.1f} s from trigger to success")
    assert rollback["state"] == "success", runtime.where("rollback", rollback["dag_run_id"])
    assert rollback_s < 60, f"the rollback took {rollback_s:.0f} s: it waited for something"
    assert runtime.tasks("release", rid)["approve"]["state"] == "awaiting_input"  # the release still waits
    state = runtime.serving_state()
    assert state["canary"] is None and state["stable"]["version"] == "1"

    # the approver answers after the operator's rollback: the release must not put v2 back
    q = urllib.parse.quote(rid, safe="")
    runtime.request(
        "PATCH",
        f"/api/v2/dags/release/dagRuns/{q}/taskInstances/approve/-1/hitlDetails",
        {"chosen_options": ["Approve"], "params_input": {}},
    )
    done = runtime.wait_run("release", rid, 300)
    tasks = runtime.tasks("release", rid)
    where = runtime.where("release", rid)
    print(f"release after the operator's rollback and a late approval: {done['state']}: {where}")
    assert done["state"] == "failed", where
    assert tasks["promote"]["state"] != "success", where
    # Usually approve succeeds and promote refuses (its canary is gone). Under load Airflow 3.3 can fail
    # an approval that lands seconds after the task parked (the parking run's executor event arrives
    # after the resume queued it: "finished with state success, but ... queued"); either way the
    # release ends failed and its rollback task runs.
    assert tasks["rollback"]["state"] == "failed", where  # ran, found no canary of its own, failed the run
    state = runtime.serving_state()
    assert state["canary"] is None and state["canary_weight_pct"] == 0
    assert state["stable"]["version"] == "1" == runtime.champion()


def test_a_second_release_from_the_form_within_a_second_waits_queued_then_runs(
    runtime: Runtime, chain: dict[str, Any]
) -> None:
    conf = {"model_name": runtime.model_name, "version": "1", "dry_run": True, **FAST_RELEASE}
    first = runtime.trigger("release", conf)
    t0 = time.monotonic()
    second = runtime.trigger("release", conf)
    assert time.monotonic() - t0 < 1.0
    assert first["dag_run_id"] != second["dag_run_id"]
    # max_active_runs=1: the second is accepted and queued while the first runs
    seen = set()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        a = runtime.run("release", first["dag_run_id"])
        b = runtime.run("release", second["dag_run_id"])
        seen.add((a["state"], b["state"]))
        if a["state"] in {"success", "failed"}:
            break
        time.sleep(0.5)
    assert ("running", "queued") in seen, seen
    assert ("running", "running") not in seen, seen
    a = runtime.wait_run("release", first["dag_run_id"], 300)
    b = runtime.wait_run("release", second["dag_run_id"], 300)
    assert a["state"] == b["state"] == "success", (runtime.where("release", a["dag_run_id"]), b)
    assert _ts(b["start_date"]) >= _ts(a["end_date"]), (a, b)
    print(
        f"\nsecond release queued {(_ts(b['start_date']) - _ts(b['queued_at'])).total_seconds():.1f} s, "
        "started after the first ended"
    )


def test_a_scheduler_killed_mid_release_is_restarted_by_up_and_serving_ends_in_one_consistent_state(
    runtime: Runtime, chain: dict[str, Any]
) -> None:
    from include.mlops.deploy.local import LocalProcessTarget

    conf = {
        "model_name": runtime.model_name,
        "version": "2",
        "allow_gate_rejected": True,
        **FAST_RELEASE,
        "steps_pct": [25, 50, 100],
        "interval_s": 3,
        "max_p99_latency_ratio": 10,
        "max_prediction_drift": 1.0,
    }
    rid = runtime.trigger("release", conf)["dag_run_id"]
    runtime.wait_task("release", rid, "analyse", {"running"}, 600)  # the canary is up, between steps
    pid_file = runtime.base / "local/runtime/scheduler.pid"
    killed = json.loads(pid_file.read_text())["pid"]
    os.kill(killed, signal.SIGKILL)
    t0 = time.monotonic()
    up = stack(runtime.env, "up", timeout_s=400)  # the project's command starts what is not running
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
    restarted_s = time.monotonic() - t0
    assert "password (shown once)" not in up.stdout  # printed by the first `up` only
    assert json.loads(pid_file.read_text())["pid"] != killed
    done = runtime.wait_run("release", rid, 600)
    where = runtime.where("release", rid)
    print(f"\nscheduler kill -9 mid-analysis: up restarted it in {restarted_s:.1f} s; release {done['state']}: {where}")
    assert done["state"] in {"success", "failed"}, where
    state = runtime.serving_state()
    assert state["canary"] is None and state["canary_weight_pct"] == 0, state
    assert state["stable"]["version"] == runtime.champion(), (state["stable"], runtime.champion())
    if done["state"] == "success":
        assert state["stable"]["version"] == "2", where
    health = LocalProcessTarget(runtime.serving_root / runtime.model_name, python_executable=sys.executable).health()
    assert (health.stable, health.router, health.canary) == (True, True, None), health  # no orphan canary


GPU_INVENTORY = """
source: rt-cluster
pool_label: karpenter.sh/nodepool
nodes:
  - {name: gpu-a100-1, node_pool: a100-pool, gpu_type: NVIDIA-A100-SXM4-80GB, gpus: 8, gpus_used: 7, cpu: "96",
     memory: 1Ti}
"""


def _log(runtime: Runtime, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id)}/taskInstances/{task_id}/logs/{try_number}"
    doc = runtime.request("GET", f"{path}?full_content=true")
    content = doc.get("content", "")
    return content if isinstance(content, str) else json.dumps(content)


def test_a_retrain_waits_for_the_only_gpu_then_trains_in_a_pod_deferred_to_the_real_triggerer(
    runtime: Runtime, tmp_path: Path
) -> None:
    """Static inventory with one free A100; another worker's placement holds it in the router book.
    `route` sits in up_for_reschedule with the router's reason (no worker slot held), places on the
    cluster once the claim is released; train.gpu_1 holds one gpu_training slot, creates the pod
    (Kubernetes API stand-in over real HTTP) and defers: the real triggerer process watches the pod,
    the task resumes, and the run registers the model. The scheduler's pool counts match the placement."""
    from include.mlops.routing.model import TaskRequest
    from include.mlops.routing.placement import place_task
    from include.mlops.routing.providers.static import load_inventory
    from include.mlops.routing.reservations import ReservationBook
    from tests.k8s_standin import kubernetes_standin, live_pods

    runtime.unpause("retrain")  # (already, after the chain; this test also runs alone)
    inventory = runtime.data_root / "gpu-inventory.yaml"
    inventory.parent.mkdir(parents=True, exist_ok=True)
    inventory.write_text(GPU_INVENTORY)
    import yaml

    held = place_task(TaskRequest(gpu_count=1), load_inventory(yaml.safe_load(GPU_INVENTORY)))
    book = ReservationBook(runtime.base / "router/book.sqlite", ttl_s=900)
    with book.transaction() as txn:
        txn.reserve("other-dag/run/train", held.claim)
    # a batch outside the landing folder: the cron test after this one must still find only the chain's
    # yesterday's complete day, as land_batch lands it (a batch from the future fails validation)
    day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    batch = runtime.data_root / "gpu-test" / f"transactions_{day}.parquet"
    batch.parent.mkdir(parents=True, exist_ok=True)
    from include.mlops.data.generate import generate_batch

    generate_batch(3000, seed=21, batch_date=day).to_parquet(batch, index=False)
    before = {v: runtime.request("GET", f"/api/v2/variables/{v}")["value"]
              for v in ("router_capacity_source", "mlops_training_image", "mlops_data_volume_claim")}  # fmt: skip
    with kubernetes_standin(tmp_path) as k8s:
        conn = json.loads(k8s.conn_json)
        if _has_conn(runtime):  # airflow_settings.yaml's placeholder: this test points it at the stand-in
            runtime.request("DELETE", "/api/v2/connections/kubernetes_default")
        runtime.request(
            "POST", "/api/v2/connections",
            {"connection_id": "kubernetes_default", "conn_type": "kubernetes", "extra": json.dumps(conn["extra"])},
        )  # fmt: skip
        for key, value in {"router_capacity_source": f"inventory:{inventory}",
                           "mlops_training_image": "registry.local/mlops-train:runtime",
                           "mlops_data_volume_claim": "mlops-data"}.items():  # fmt: skip
            runtime.request("PATCH", f"/api/v2/variables/{key}", {"key": key, "value": value})
        try:
            run = runtime.trigger(
                "retrain",
                # +0.5 AUC: after the chain's champion the gate rejects, and no release starts from here
                {"batch_path": str(batch), "epochs": 1, "gate_min_improvement": 0.5,
                 "resources": {"gpu_count": 1, "cpu_fallback": False, "max_wait_s": 600}},
            )  # fmt: skip
            run_id = run["dag_run_id"]
            waiting = runtime.wait_task("retrain", run_id, "route", {"up_for_reschedule"}, 600)
            route_log = _log(runtime, "retrain", run_id, "route", waiting["try_number"])
            assert book.release("other-dag/run/train") == 1
            deferred = runtime.wait_task("retrain", run_id, "train.gpu_1", {"deferred", "success", "failed"}, 600)
            pool_while_deferred = runtime.request("GET", "/api/v2/pools/gpu_training")
            pods_while_deferred = len(k8s.created)
            run = runtime.wait_run("retrain", run_id, 900)
            left = live_pods(k8s)
        finally:
            for key, value in before.items():
                runtime.request("PATCH", f"/api/v2/variables/{key}", {"key": key, "value": value})
            book.release("other-dag/run/train")

    tasks = runtime.tasks("retrain", run_id)
    print(
        f"\nGPU contention under the real scheduler: route waited {route_log.count('waiting for capacity')} time(s); "
        f"pool gpu_training while deferred: {pool_while_deferred}"
    )
    assert "waiting for capacity" in route_log and "gpu" in route_log.lower(), route_log[-2000:]
    assert deferred["state"] == "deferred", runtime.where("retrain", run_id)
    assert pods_while_deferred == 1
    assert (pool_while_deferred["deferred_slots"], pool_while_deferred["running_slots"]) == (1, 0), pool_while_deferred
    assert run["state"] == "success", runtime.where("retrain", run_id)
    assert tasks["train.gpu_1"]["state"] == "success" and tasks["train.gpu_1"]["pool"] == "gpu_training"
    assert tasks["train.gpu_1"]["pool_slots"] == held.pool_slots == 1
    assert {tasks[t]["state"] for t in tasks if t.startswith("train.") and t != "train.gpu_1"} == {"skipped"}
    assert tasks["register"]["state"] == "success"
    (manifest,) = k8s.created
    assert manifest["spec"]["nodeSelector"]["karpenter.sh/nodepool"] == "a100-pool"
    assert left == [], "the pod was not deleted after training"
    assert ReservationBook(runtime.base / "router/book.sqlite").active() == []


def _has_conn(runtime: Runtime) -> bool:
    try:
        runtime.request("GET", "/api/v2/connections/kubernetes_default")
        return True
    except AssertionError:
        return False


def test_a_per_minute_cron_from_the_env_variable_starts_retrain_without_a_trigger(
    runtime: Runtime, chain: dict[str, Any]
) -> None:
    """The schedule comes from AIRFLOW_VAR_MLOPS_RETRAIN_CRON when the dag-processor parses the file:
    stop it, and start it again with the project's command and the Variable set to every minute."""
    pid_file = runtime.base / "local/runtime/dag-processor.pid"
    old = json.loads(pid_file.read_text())["pid"]
    os.killpg(old, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while (st := _stat(old)) is not None and st[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.5)
    known = {r["dag_run_id"] for r in runtime.runs("retrain")}
    t0 = time.monotonic()
    up = stack({**runtime.env, "AIRFLOW_VAR_MLOPS_RETRAIN_CRON": "* * * * *"}, "up", timeout_s=400)
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
    try:
        run = runtime.wait_new_run("retrain", known, 180, run_type="scheduled")
        fired_s = time.monotonic() - t0
        run = runtime.wait_run("retrain", run["dag_run_id"], 600)
    finally:
        runtime.request("PATCH", "/api/v2/dags/retrain", {"is_paused": True})  # no more per-minute runs
    print(f"\nper-minute cron: a scheduled retrain {fired_s:.0f} s after up restarted the dag-processor")
    assert run["state"] == "success", runtime.where("retrain", run["dag_run_id"])
    assert _ts(run["run_after"]).second == 0, run  # a minute boundary of the cron, not a trigger's time
    # the batch was trained already: the cron run reports the version it matches and trains nothing
    tasks = runtime.tasks("retrain", run["dag_run_id"])
    assert tasks["train.local"]["state"] == "skipped", runtime.where("retrain", run["dag_run_id"])


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _started_processes(runtime: Runtime) -> set[tuple[int, str]]:
    """(pid, start time) of everything the runtime runs: each component's process group (setproctitle
    rewrites an Airflow process's environ, so the environment marker alone would miss them), the
    postmaster and its children, MLflow's group, the serving processes, and whatever carries the
    state folder in its environment."""
    local = runtime.base / "local"
    groups = {json.loads(f.read_text())["pid"] for f in (local / "runtime").glob("*.pid")}
    leftovers = local / "runtime/leftover-groups.json"  # of a component that died (the killed scheduler)
    groups |= {int(g) for g in (json.loads(leftovers.read_text()) if leftovers.exists() else {})}
    groups.add(json.loads((local / "mlflow/server.pid").read_text())["pid"])
    postmaster = int((local / "postgres/data/postmaster.pid").read_text().split()[0])
    marker = f"MLOPS_LOCAL_DIR={local}".encode()
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or (st := _stat(int(proc.name))) is None or st[0] == "Z":
            continue
        try:
            ours = marker in (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            ours = False
        if ours or int(st[2]) in groups or int(proc.name) == postmaster or int(st[1]) == postmaster:
            found.add((int(proc.name), st[19]))
    return found


def test_down_stops_every_process_it_started(runtime: Runtime) -> None:
    before = _started_processes(runtime)
    assert len(before) >= 8, before  # four components, their children, postgres, mlflow
    down = stack(runtime.env, "down", timeout_s=300)
    assert down.returncode == 0, down.stderr
    for name in ("scheduler", "dag-processor", "triggerer", "api-server"):
        assert f"stopped airflow {name}" in down.stdout, down.stdout
    assert "stopped postgresql" in down.stdout and "stopped mlflow server" in down.stdout
    # a zombie is gone (this sandbox's pid 1 may never reap what was reparented to it)
    still = [pid for pid, ticks in before if (st := _stat(pid)) and st[19] == ticks and st[0] != "Z"]
    assert still == [], [Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in still]
    assert not os.path.exists(runtime.base / "local/postgres/data/postmaster.pid")
