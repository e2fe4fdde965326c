"""The release steps against a real MLflow server and real local serving (model servers behind Caddy).

Who owns the canary when two releases run at once, which folder serves which model, what a
promotion interrupted by an MLflow outage leaves behind, and what the release does when serving
itself is broken (Caddy down, a dead stable, a lost state file). Faults are real: the MLflow
server is stopped, processes are killed with SIGKILL, the router's port is taken.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from include.mlops import releasing
from include.mlops.deploy.factory import serving_target
from include.mlops.deploy.local import LocalProcessTarget
from include.mlops.deploy.process import pid_alive
from include.mlops.deploy.target import ModelRef
from include.mlops.errors import CanaryFailed, DeployError, InvalidReleaseParams
from include.mlops.registry.mlflow_registry import CHAMPION, PREVIOUS_CHAMPION_TAG, MlflowRegistry, TrainingRecord
from include.mlops.settings.project import ProjectSettings
from tests.conftest import VENV_BIN, free_port, wait_http
from tests.model_fixtures import build_logistic_model, processes_with, sample_records

pytestmark = pytest.mark.slow

RECORDS = sample_records(4, seed=5)
QUIET: list[str] = []


def log(line: str) -> None:
    QUIET.append(line)


class MlflowServer:
    """A real MLflow tracking server that a test may stop and start again on the same store and port."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log_file = (self.base / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(VENV_BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--backend-store-uri",
                f"sqlite:///{self.base / 'mlflow.db'}",
                "--artifacts-destination",
                (self.base / "artifacts").as_uri(),
                "--workers",
                "1",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_http(f"{self.uri}/health", 120)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-control"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fast_mlflow_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's client retries a dead server for minutes by default; a stopped server must fail fast."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


class World:
    def __init__(self, base: Path, mlflow: MlflowServer) -> None:
        self.base = base
        self.mlflow = mlflow
        self.model_name = f"ctl-{os.urandom(4).hex()}"
        self.settings = ProjectSettings(
            profile="local",
            mlflow_tracking_uri=mlflow.uri,
            mlflow_backend_store=mlflow.base / "mlflow.db",
            mlflow_artifact_root=mlflow.base / "artifacts",
            data_root=base / "data",
            serving_root=base / "serving",
            # Variable mlops_registered_model: the model these tests release, unless a test names others
            registered_model=self.model_name,
            docker_base_url=None,
            image_registry=None,
        )
        self.reg = MlflowRegistry(mlflow.uri)

    def register(self, key: str, name: str | None = None) -> str:
        name = name or self.model_name
        path = build_logistic_model(self.base / "onnx" / f"{name}-{key}.onnx", seed=0)
        run_id = self.reg.log_training(
            TrainingRecord(
                run_key=f"ctl/{name}/{key}",
                params={"source": key},
                history=[],
                holdout_metrics={"auc": 0.9},
                model_onnx_path=path,
                input_example_path=None,
                tags={},
                artifacts={},
            ),
            f"ctl-{name}",
        )
        return self.reg.register_version(name, run_id, f"ctl/{name}/{key}", tags={"gate.decision": "passed"}).version

    def plan(self, version: str, name: str | None = None, **params: object) -> dict:
        return releasing.plan_release(
            self.settings, {"model_name": name or self.model_name, "version": version, **params}, log
        )

    def first_release(self, version: str, name: str | None = None) -> None:
        plan = self.plan(version, name)
        assert plan["first_release"], plan
        releasing.deploy_canary(self.settings, plan, None, log=log)
        releasing.promote(self.settings, plan, log)

    def target(self, name: str | None = None) -> LocalProcessTarget:
        return LocalProcessTarget(self.settings.serving_root / (name or self.model_name), sys.executable)

    def champion(self, name: str | None = None) -> str | None:
        ref = self.reg.get_alias(name or self.model_name, CHAMPION)
        return ref.version if ref else None

    def served_by(self, name: str | None = None, n: int = 6) -> set[str]:
        url = self.target(name).status().router_url
        with httpx.Client(timeout=10) as c:
            return {c.post(f"{url}/predict", json={"records": RECORDS}).headers["x-model-version"] for _ in range(n)}


@pytest.fixture
def world(tmp_path: Path, mlflow: MlflowServer) -> Iterator[World]:
    w = World(tmp_path, mlflow)
    yield w
    if mlflow.proc is None:  # a test stopped it and failed before starting it again
        mlflow.start()
    for state in w.settings.serving_root.glob("*/state.json"):
        LocalProcessTarget(state.parent, sys.executable).stop_all()


# ---- item 6: two releases at once -------------------------------------------------------------


def test_a_second_release_is_refused_naming_the_first_and_its_rollback_leaves_the_first_canary_running(
    world: World,
) -> None:
    v1 = world.register("v1")
    world.first_release(v1)
    va, vb = world.register("a"), world.register("b")
    plan_a = world.plan(va)
    plan_b = world.plan(vb)  # both planned before either deployed: the race the owner record closes
    releasing.deploy_canary(world.settings, plan_a, None, log=log)
    canary_a = world.target().status().canary
    assert canary_a is not None and canary_a.version == va

    with pytest.raises(DeployError) as refused:
        releasing.deploy_canary(world.settings, plan_b, None, log=log)
    assert not isinstance(refused.value, CanaryFailed), refused.value
    message = str(refused.value)
    assert plan_a["owner"]["run_id"] in message and f"v{va}" in message, message
    assert "release.status" not in world.reg.get_version(world.model_name, vb).tags  # B is not to blame

    # a third release planned now is refused at check_params, naming A
    with pytest.raises(DeployError, match=plan_a["owner"]["run_id"]):
        world.plan(vb)

    releasing.rollback_release(world.settings, plan_b, log)  # B's rollback task runs after its failure
    state = world.target().status()
    assert state.canary is not None and state.canary.version == va, "B's rollback removed A's canary"
    assert pid_alive(canary_a.pid, canary_a.pid_start_ticks)

    # A carries on and is promoted; then the manual rollback (operator's override) works as before
    releasing.promote(world.settings, plan_a, log)
    assert world.champion() == va and world.served_by() == {va}


def test_the_manual_rollback_removes_any_release_canary_and_records_whose_it_was(world: World) -> None:
    v1 = world.register("v1")
    world.first_release(v1)
    va = world.register("a")
    plan_a = world.plan(va)
    releasing.deploy_canary(world.settings, plan_a, None, log=log)

    releasing.rollback_to_version(
        world.settings, world.model_name, v1, log=log, run={"dag_id": "rollback", "run_id": "op-1"}
    )
    state = world.target().status()
    assert state.canary is None and state.stable.version == v1
    last = json.loads(world.target().state_path.read_text())["last_rollback"]
    assert last["canary_owner"] == plan_a["owner"], last
    assert "operator override" in last["reason"] and "op-1" in last["reason"], last


# ---- item 9: a release serves the model it names ----------------------------------------------


def test_each_model_name_is_served_from_its_own_target(world: World) -> None:
    alpha, beta = f"{world.model_name}-alpha", f"{world.model_name}-beta"
    va, vb = world.register("v1", alpha), world.register("v1", beta)
    assert va == vb == "1"  # same version number, different models: must not be mistaken for each other
    world.first_release(va, alpha)
    world.first_release(vb, beta)

    for name in (alpha, beta):
        stable = world.target(name).status().stable
        assert stable is not None and stable.name == name, (name, stable)
        assert world.champion(name) == "1"
    assert world.target(alpha).status().router_url != world.target(beta).status().router_url
    # Variable mlops_registered_model's folder is not touched by releases of other models
    assert not (world.settings.serving_root / world.settings.registered_model / "state.json").exists()


def test_a_model_name_that_cannot_name_a_serving_folder_is_refused(world: World) -> None:
    with pytest.raises(InvalidReleaseParams, match=r"model_name='\.\./escape'"):
        serving_target(world.settings, "../escape")


# ---- item 10: promotion interrupted between the serving switch and the alias ------------------


def test_a_promotion_cut_by_an_mlflow_outage_converges_on_retry_and_at_the_next_release(
    world: World, fast_mlflow_errors: None
) -> None:
    # two models, one outage: model A's promote task is retried, model B's retries ran out
    name_a, name_b = f"{world.model_name}-a", f"{world.model_name}-b"
    plans = {}
    for name in (name_a, name_b):
        world.first_release(world.register("v1", name), name)
        plans[name] = world.plan(world.register("v2", name), name)
        releasing.deploy_canary(world.settings, plans[name], None, log=log)

    world.mlflow.stop()
    try:
        for name in (name_a, name_b):
            with pytest.raises(Exception) as failed:  # whatever MLflow's client raises for a dead server
                releasing.promote(world.settings, plans[name], log)
            said = repr(failed.value).lower()
            assert "connect" in said or "did not answer" in said, said
            # the serving switch happened: v2 serves 100 % while the registry could not be told
            state = world.target(name).status()
            assert state.stable.version == "2" and state.canary is None
    finally:
        world.mlflow.start()
    assert world.champion(name_a) == world.champion(name_b) == "1"  # MLflow still names the old one

    releasing.promote(world.settings, plans[name_a], log)  # A: the task's retry
    assert world.champion(name_a) == "2" and world.served_by(name_a) == {"2"}
    assert world.target(name_a).record(releasing.PENDING_ALIAS) is None

    nxt = world.plan("2", name_b)  # B: the next release's check_params reconciles, per the record
    assert world.champion(name_b) == "2"
    assert world.reg.get_version(name_b, "2").tags[PREVIOUS_CHAMPION_TAG] == "1"
    assert nxt["noop"] and nxt["champion_version"] == "2"
    assert any("reconciled" in line and name_b in line for line in QUIET)
    assert world.target(name_b).record(releasing.PENDING_ALIAS) is None


# ---- item 18: serving faults are not the version's fault, and are not hidden -------------------


def test_a_router_failure_while_starting_a_canary_does_not_reject_the_version(world: World) -> None:
    v1 = world.register("v1")
    world.first_release(v1)
    v2 = world.register("v2")
    plan = world.plan(v2)
    router = world.target().status()
    http_port = int(router.router_url.rsplit(":", 1)[1])
    # the router's socket holder: Caddy dies with it, and the port is free for the squatter
    holder_pid = json.loads(world.target().state_path.read_text())["router"]["pid"]
    os.kill(holder_pid, signal.SIGKILL)
    with socket.socket() as squatter:  # the router's port is taken: Caddy cannot come back
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 5
        while True:
            try:
                squatter.bind(("127.0.0.1", http_port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        squatter.listen()
        with pytest.raises(DeployError) as failed:
            releasing.deploy_canary(world.settings, plan, None, log=log)
    assert not isinstance(failed.value, CanaryFailed), failed.value
    assert "caddy" in str(failed.value).lower(), failed.value
    assert "release.status" not in world.reg.get_version(world.model_name, v2).tags
    assert processes_with(f"models/{world.model_name}/{v2}/") == [], (
        "a canary server was left running after the failed start"
    )


def test_a_server_started_before_a_failed_router_start_is_stopped(tmp_path: Path) -> None:
    model = build_logistic_model(tmp_path / "m" / "orphan-check-v1.onnx", seed=0)
    replacement = build_logistic_model(tmp_path / "m" / "orphan-check-v2.onnx", seed=0)
    target = LocalProcessTarget(tmp_path / "state", sys.executable, drain_timeout_s=5.0)
    try:
        target.ensure_stable(ModelRef("fraud", "1", model))
        st = json.loads(target.state_path.read_text())
        os.kill(st["router"]["pid"], signal.SIGKILL)
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            deadline = time.monotonic() + 5
            while True:
                try:
                    squatter.bind(("127.0.0.1", st["router"]["http_port"]))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            squatter.listen()
            with pytest.raises(DeployError):
                target.ensure_stable(ModelRef("fraud", "2", replacement))
        assert processes_with("orphan-check-v2.onnx") == []
        # the old stable is still the one the state names, so stop_all (or a later release) reaches it
        assert json.loads(target.state_path.read_text())["stable"]["version"] == "1"
    finally:
        target.stop_all()
    assert processes_with("orphan-check-v1.onnx") == []


def test_a_dead_stable_is_not_counted_as_serving_and_is_restarted(world: World) -> None:
    v1 = world.register("v1")
    world.first_release(v1)
    stable = world.target().status().stable
    os.kill(stable.pid, signal.SIGKILL)

    plan = world.plan(v1)  # the version the dead stable had: not "nothing to release"
    assert not plan["noop"], plan
    releasing.deploy_canary(world.settings, plan, None, log=log)
    releasing.promote(world.settings, plan, log)
    now = world.target().status().stable
    assert now.pid != stable.pid and pid_alive(now.pid, now.pid_start_ticks)
    assert world.served_by() == {v1}


def test_a_lost_serving_state_is_refused_unless_reset_is_asked(world: World) -> None:
    v1 = world.register("v1")
    world.first_release(v1)
    v2 = world.register("v2")
    target = world.target()
    target.stop_all()
    target.state_path.unlink()

    with pytest.raises(InvalidReleaseParams) as refused:
        world.plan(v2)
    assert str(target.state_path) in str(refused.value) and "reset_serving_state" in str(refused.value)
    assert f"champion v{v1}" in str(refused.value)

    plan = world.plan(v2, reset_serving_state=True)
    assert plan["first_release"]
