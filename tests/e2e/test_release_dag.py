"""The release and rollback DAGs end to end on the local profile, with real processes under traffic.

Model versions are registered in a real MLflow server from ONNX files with known behaviour (a
good model, one whose every inference fails, one 5x slower, one ONNX Runtime cannot load), then
released with `airflow dags test release`. While each release runs, this test process sends its
own traffic through the router: no request may fail because of a switch, only those a faulty
canary itself answered.
"""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import onnx
import pytest
from onnx import TensorProto, helper

from include.mlops.canary.load import LoadGenerator, RequestResult
from include.mlops.deploy.local import LocalProcessTarget, pid_alive
from include.mlops.registry.mlflow_registry import CHAMPION, PREVIOUS_CHAMPION_TAG, MlflowRegistry, TrainingRecord
from tests.e2e.conftest import DagRunResult, Deployment
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
        version = self.reg.register_version(self.dep.model_name, run_id, f"e2e/{key}", {"gate.decision": "passed"})
        return version.version

    def release(self, version: str, **params: object) -> DagRunResult:
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
        ("faulty", build_faulty_model, "error"),
        ("slow", build_slow_model, "latency"),
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
    assert run.tasks["promote"] in {"upstream_failed", "skipped"}, run.explain()
    assert run.tasks["rollback"] == "failed"  # it rolled back, then failed the run on purpose
    assert f"serving stays on v{stable_before.version}" in run.log
    assert expect_in_log in run.log.lower()
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
    with pytest.raises(AssertionError, match="expected one new release run, found \\[\\]"):
        rel.dep.dags_test("release", {"model_name": rel.dep.model_name, "version": "1", "interval_s": -5})


def test_manual_rollback_restores_the_previous_champion(rel: Releases) -> None:
    current = rel.champion()
    previous = rel.reg.get_version(rel.dep.model_name, current).tags[PREVIOUS_CHAMPION_TAG]
    run = rel.dep.dags_test("rollback", {"model_name": rel.dep.model_name})
    assert run.state == "success", run.explain()
    assert rel.champion() == previous
    assert rel.served_by() == {previous}
    assert rel.target.status().stable.version == previous
