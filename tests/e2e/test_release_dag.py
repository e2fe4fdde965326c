"""The release and rollback DAGs end to end on the local profile, with real processes under traffic.

Model versions are registered in a real MLflow server from ONNX files with known behaviour (a
good model, one whose every inference fails, one 5x slower, one ONNX Runtime cannot load), then
released with `airflow dags test release`. While each release runs, this test process sends its
own traffic through the router: no request may fail because of a switch, only those a faulty
canary itself answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import onnx
import pytest
from onnx import TensorProto, helper

from include.mlops.canary.load import LoadGenerator, RequestResult
from include.mlops.dag_test import DagTest, DagTestRun
from include.mlops.deploy.local import LocalProcessTarget
from include.mlops.deploy.process import pid_alive
from include.mlops.registry.mlflow_registry import CHAMPION, PREVIOUS_CHAMPION_TAG, MlflowRegistry, TrainingRecord
from tests.api_server import ApiServer, airflow_api_server
from tests.e2e.conftest import Deployment
from tests.model_fixtures import build_faulty_model, build_logistic_model, build_slow_model, sample_records

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RECORDS = sample_records(40, seed=3)
# short steps for tests; thresholds as the DAG's defaults except latency (two servers share 2 cores)
FAST = {"steps_pct": [50, 100], "interval_s": 3, "min_requests": 10, "load_rps": 20, "max_p99_latency_ratio": 2.5}


def _never_ready_model(path: Path) -> Path:
    """A well-formed ONNX file whose operator no runtime implements: the server never gets ready."""
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, None])
    y = helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None, 1])
    node = helper.make_node("NeverImplemented", ["features"], ["probability"], domain="com.example.never")
    model = helper.make_model(
        helper.make_graph([node], "never", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example.never", 1)],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


class Releases:
    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.reg = MlflowRegistry(dep.mlflow_uri)
        self.models = dep.base / "models"

    def register(self, onnx_path: Path, key: str) -> str:
        run_id = self.reg.log_training(
            TrainingRecord(
                run_key=f"e2e/{key}",
                params={"source": key},
                history=[],
                holdout_metrics={"auc": 0.9},
                model_onnx_path=onnx_path,
                input_example_path=None,
                tags={},
                artifacts={},
            ),
            f"e2e-{self.dep.model_name}",
        )
        version = self.reg.register_version(self.dep.model_name, run_id, f"e2e/{key}", tags={"gate.decision": "passed"})
        return version.version

    def release(self, version: str, **params: object) -> DagTestRun:
        return self.dep.dags_test("release", {"model_name": self.dep.model_name, "version": version, **FAST, **params})

    @property
    def target(self) -> LocalProcessTarget:
        return LocalProcessTarget(self.dep.serving_root / self.dep.model_name, "unused")

    def served_by(self, n: int = 20) -> set[str]:
        url = self.target.status().router_url
        with httpx.Client(timeout=10) as c:
            return {
                c.post(f"{url}/predict", json={"records": RECORDS[:2]}).headers["x-model-version"] for _ in range(n)
            }

    def champion(self) -> str | None:
        ref = self.reg.get_alias(self.dep.model_name, CHAMPION)
        return ref.version if ref else None


@pytest.fixture(scope="module")
def rel(deployment: Deployment) -> Releases:
    deployment.write_batch("2026-11-02", n_rows=3_000, seed=21)  # holdout rows the release replays
    return Releases(deployment)


def _failed_not_by(results: list[RequestResult], version: str | None = None) -> list[RequestResult]:
    """Requests that failed for a reason other than the named (faulty) version answering them."""
    return [r for r in results if r.status != 200 and not (version and r.served_version == version)]


def test_first_release_serves_the_model_and_makes_it_champion(rel: Releases) -> None:
    v = rel.register(build_logistic_model(rel.models / "good1.onnx", seed=0), "good1")
    run = rel.release(v)
    assert run.state == "success", run.explain()
    assert rel.champion() == v
    assert rel.served_by() == {v}


def test_a_good_canary_is_promoted_and_the_old_stable_drained(rel: Releases) -> None:
    old = rel.target.status().stable
    v = rel.register(build_logistic_model(rel.models / "good2.onnx", seed=0), "good2")
    stop = threading.Event()
    with LoadGenerator(rel.target.status().router_url, RECORDS, rps=8, stop_event=stop) as load:
        run = rel.release(v)
    results = load.results()
    assert run.state == "success", run.explain()
    assert run.tasks["analyse"] == "success" and run.tasks["promote"] == "success"
    assert run.tasks["rollback"] == "skipped", run.explain()
    assert "step 50 %: pass" in run.log
    assert rel.champion() == v
    champ = rel.reg.get_version(rel.dep.model_name, v)
    assert champ.tags[PREVIOUS_CHAMPION_TAG] == old.version
    assert champ.tags["canary.verdict"] == "passed"
    assert rel.served_by() == {v}
    assert not pid_alive(old.pid, old.pid_start_ticks), "the old stable still runs after promotion"
    assert len(results) > 40 and _failed_not_by(results) == [], _failed_not_by(results)
    assert {r.served_version for r in results} >= {old.version, v}


@pytest.mark.parametrize(
    ("kind", "build", "expect_in_log"),
    [
        # the analysis' own reason, not a word every step line carries ("error_rate", "latency_tail")
        ("faulty", build_faulty_model, "canary error rate 100.0% > max"),
        ("slow", build_slow_model, "canary slow on"),
        ("never-ready", _never_ready_model, "did not become ready"),
    ],
)
def test_a_bad_canary_is_rolled_back_and_nothing_changes(rel: Releases, kind, build, expect_in_log) -> None:
    stable_before = rel.target.status().stable
    champion_before = rel.champion()
    v = rel.register(build(rel.models / f"{kind}.onnx"), kind)
    stop = threading.Event()
    with LoadGenerator(rel.target.status().router_url, RECORDS, rps=8, stop_event=stop) as load:
        run = rel.release(v, ready_timeout_s=20)
    results = load.results()

    assert run.state == "failed", run.explain()
    # promote (none_failed_min_one_success) after a failed step upstream: Airflow marks it upstream_failed
    assert run.tasks["promote"] == "upstream_failed", run.explain()
    assert run.tasks["rollback"] == "failed"  # it rolled back, then failed the run on purpose
    assert f"serving stays on v{stable_before.version}" in run.log
    assert expect_in_log in run.log, run.explain()
    state = rel.target.status()
    assert state.canary is None and state.stable.version == stable_before.version
    assert state.stable.pid == stable_before.pid, "the stable was restarted or shrunk during the canary"
    assert rel.champion() == champion_before
    tags = rel.reg.get_version(rel.dep.model_name, v).tags
    assert tags["release.status"] == "rejected" and tags["release.reason"]
    assert rel.served_by() == {stable_before.version}
    assert len(results) > 20 and _failed_not_by(results, v) == [], _failed_not_by(results, v)


def test_releasing_the_stable_version_again_changes_nothing(rel: Releases) -> None:
    before = rel.target.status()
    run = rel.release(before.stable.version)
    assert run.state == "success", run.explain()
    assert "nothing to release" in run.log
    after = rel.target.status()
    assert after.stable.pid == before.stable.pid and after.canary is None


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"steps_pct": [50, 25, 100]}, "steps_pct"),
        ({"version": "999"}, "version"),
        ({"model_name": "no-such-model"}, "no-such-model"),
    ],
)
def test_invalid_params_fail_at_check_params_and_deploy_nothing(rel: Releases, params, named) -> None:
    before = rel.target.status()
    run = rel.dep.dags_test("release", {"model_name": rel.dep.model_name, **FAST, **params})
    assert run.state == "failed", run.explain()
    assert run.tasks["check_params"] == "failed", run.explain()
    for task_id in ("build_image", "deploy_canary", "analyse", "promote"):
        assert run.tasks[task_id] == "upstream_failed", (task_id, run.explain())
    assert run.tasks["rollback"] == "failed", run.explain()  # ends the run failed, rolls nothing back
    assert "nothing was built or deployed" in run.log
    assert named in run.log
    after = rel.target.status()
    assert after.stable.pid == before.stable.pid and after.canary is None


def test_a_form_value_outside_its_schema_is_refused_before_any_run(rel: Releases) -> None:
    before = rel.target.status()
    with pytest.raises(RuntimeError, match="expected one new release run, found \\[\\]") as refused:
        rel.dep.dags_test("release", {"model_name": rel.dep.model_name, "version": "1", "interval_s": -5})
    assert "Invalid input for param interval_s: -5 is less than or equal to the minimum of 0" in str(refused.value)
    after = rel.target.status()
    assert after.stable.pid == before.stable.pid and after.canary is None


@pytest.fixture(scope="module")
def approver_api(rel: Releases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """The real api-server the Airflow UI talks to; `approver` may answer HITL requests, `viewer` may not."""
    with airflow_api_server(tmp_path_factory.mktemp("api"), {"approver": "op", "viewer": "viewer"}) as server:
        yield server


def _wait_for_approval_request(api: ApiServer, running: DagTest, limit_s: float = 240) -> dict:
    headers = api.headers("approver")
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert running.proc.poll() is None, running.log_path.read_text()[-4000:]
        run_id = running.run_id
        if run_id:
            r = httpx.get(f"{api.url}/api/v2/dags/release/dagRuns/{run_id}/hitlDetails", headers=headers, timeout=20)
            assert r.status_code == 200, r.text
            pending = [d for d in r.json()["hitl_details"] if not d.get("response_received")]
            if pending:
                return {"run_id": run_id, **pending[0]}
        time.sleep(1)
    raise AssertionError(f"no approval request within {limit_s} s:\n{running.log_path.read_text()[-4000:]}")


def _answer(api: ApiServer, run_id: str, user: str, option: str) -> httpx.Response:
    return httpx.patch(
        f"{api.url}/api/v2/dags/release/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails",
        json={"chosen_options": [option]},
        headers=api.headers(user),
        timeout=20,
    )


def test_a_release_waits_for_approval_shows_the_analysis_and_promotes_when_approved(
    rel: Releases, approver_api: ApiServer
) -> None:
    stable_before = rel.target.status().stable
    v = rel.register(build_logistic_model(rel.models / "approved.onnx", seed=0), "approved")
    running = rel.dep.start_dags_test(
        "release", {"model_name": rel.dep.model_name, "version": v, **FAST, "require_approval": True}
    )
    request = _wait_for_approval_request(approver_api, running)
    # the approver sees what they approve: the version, and each step's numbers and verdict
    assert f"v{v} to 100 %" in request["subject"]
    assert "step 50 %: pass" in request["body"] and "p99" in request["body"], request["body"]
    state = rel.target.status()
    assert state.canary.version == v and state.canary_weight_pct == 50  # waiting at the last analysed step
    assert rel.champion() == stable_before.version
    assert _answer(approver_api, request["run_id"], "viewer", "Approve").status_code == 403
    answered = _answer(approver_api, request["run_id"], "approver", "Approve")
    assert answered.status_code == 200, answered.text
    run = running.wait()

    assert run.state == "success", run.explain()
    assert run.tasks["approve"] == "success" and run.tasks["promote"] == "success"
    assert rel.champion() == v and rel.served_by() == {v}


def test_a_rejected_approval_rolls_the_canary_back(rel: Releases, approver_api: ApiServer) -> None:
    stable_before = rel.target.status().stable
    champion_before = rel.champion()
    v = rel.register(build_logistic_model(rel.models / "rejected.onnx", seed=0), "rejected")
    running = rel.dep.start_dags_test(
        "release", {"model_name": rel.dep.model_name, "version": v, **FAST, "require_approval": True}
    )
    request = _wait_for_approval_request(approver_api, running)
    answered = _answer(approver_api, request["run_id"], "approver", "Reject")
    assert answered.status_code == 200, answered.text
    run = running.wait()

    assert run.state == "failed", run.explain()
    assert run.tasks["approve"] == "failed" and run.tasks["rollback"] == "failed", run.explain()
    assert f"serving stays on v{stable_before.version}" in run.log
    state = rel.target.status()
    assert state.canary is None and state.stable.pid == stable_before.pid
    assert rel.champion() == champion_before and rel.served_by() == {stable_before.version}


def test_manual_rollback_restores_the_previous_champion(rel: Releases) -> None:
    current = rel.champion()
    previous = rel.reg.get_version(rel.dep.model_name, current).tags[PREVIOUS_CHAMPION_TAG]
    run = rel.dep.dags_test("rollback", {"model_name": rel.dep.model_name})
    assert run.state == "success", run.explain()
    assert rel.champion() == previous
    assert rel.served_by() == {previous}
    assert rel.target.status().stable.version == previous
