"""Every DAG file imports cleanly, without deprecated Airflow 2 APIs, and is documented."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted(p for p in (ROOT / "dags").glob("*.py") if not p.name.startswith("_"))
HEAVY = ("torch", "mlflow", "great_expectations", "pandas", "sklearn", "kubernetes", "onnxruntime", "docker")


@pytest.fixture(scope="module")
def dagbag():  # type: ignore[no-untyped-def]
    from airflow.dag_processing.dagbag import DagBag

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = DagBag(dag_folder=str(ROOT / "dags"))
    bag.caught_warnings = [w for w in caught if "dags" in str(w.filename)]
    return bag


def test_dag_files_exist() -> None:
    assert {p.stem for p in DAG_FILES} >= {"retrain", "land_batch"}


def test_every_file_imports_without_errors(dagbag) -> None:  # type: ignore[no-untyped-def]
    assert dagbag.import_errors == {}
    assert len(dagbag.dags) >= len(DAG_FILES)


def test_no_deprecation_warnings_from_dag_files(dagbag) -> None:  # type: ignore[no-untyped-def]
    messages = [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in dagbag.caught_warnings]
    assert messages == []


def test_no_airflow2_imports_in_dag_files() -> None:
    legacy = (
        "airflow.operators.",
        "airflow.decorators",
        "airflow.models.dag",
        "airflow.datasets",
        "airflow.models.param",
    )
    for path in DAG_FILES:
        text = path.read_text()
        for mod in legacy:
            assert f"from {mod}" not in text and f"import {mod}" not in text, f"{path.name} uses {mod}"


def test_every_dag_is_documented_owned_tagged_and_retried(dagbag) -> None:  # type: ignore[no-untyped-def]
    for dag_id, dag in dagbag.dags.items():
        assert dag.description, f"{dag_id}: no description"
        assert dag.doc_md and len(dag.doc_md) > 80, f"{dag_id}: no doc_md"
        assert dag.tags, f"{dag_id}: no tags"
        for t in dag.tasks:
            assert t.owner and t.owner != "airflow", f"{dag_id}.{t.task_id}: no owner"
        assert dag.default_args.get("retries", 0) >= 1, f"{dag_id}: default retries < 1"


def test_no_cycles(dagbag) -> None:  # type: ignore[no-untyped-def]
    for dag in dagbag.dags.values():
        dag.check_cycle()


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_importing_a_dag_file_loads_no_heavy_library(path: Path) -> None:
    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('dagfile', {str(path)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"{path.name} imports {loaded} at parse time"


# ---- release control plane: pools, bounds, timeouts ---------------------------------------------


def _pools_counting_deferred() -> set[str]:
    """Pools in which a deferred task (a release waiting for approval) keeps its slot."""
    from include.mlops.settings.airflow_settings import load_airflow_settings

    declared = load_airflow_settings(ROOT / "airflow_settings.yaml").pools
    # Airflow creates default_pool with include_deferred=False; airflow_settings.yaml may override it
    counting = {p.name for p in declared if p.include_deferred}
    return counting


def test_a_manual_rollback_needs_no_pool_slot_a_release_holds(dagbag) -> None:  # type: ignore[no-untyped-def]
    release, rollback = dagbag.dags["release"], dagbag.dags["rollback"]
    rollback_pools = {t.pool for t in rollback.tasks}
    # a release waiting for approval (deferred, up to hours) holds nothing the rollback needs
    approve = release.get_task("approve")
    held_while_waiting = {approve.pool} & _pools_counting_deferred()
    assert held_while_waiting == set(), f"approve holds {held_while_waiting} while it waits"
    # nor does a release at work: the rollback waits only for the serving target's lock
    shared = (rollback_pools & {t.pool for t in release.tasks}) - {"default_pool"}
    assert shared == set(), f"the rollback DAG queues behind releases in pools {shared}"
    assert "default_pool" not in _pools_counting_deferred() or "default_pool" not in rollback_pools


def test_release_and_rollback_runs_and_every_task_are_time_bounded(dagbag) -> None:  # type: ignore[no-untyped-def]
    import datetime as dt

    from include.mlops.release_params import MAX_ANALYSIS_S

    for dag_id in ("release", "rollback"):
        dag = dagbag.dags[dag_id]
        assert dag.dagrun_timeout is not None, f"{dag_id}: no dagrun_timeout"
        for t in dag.tasks:
            assert t.execution_timeout is not None, f"{dag_id}.{t.task_id}: no execution_timeout"
            assert t.execution_timeout <= dag.dagrun_timeout, f"{dag_id}.{t.task_id}: outlives its run"
    release = dagbag.dags["release"]
    # the analysis bound covers the longest analysis any valid form allows, and not much more
    analyse = release.get_task("analyse").execution_timeout
    assert dt.timedelta(seconds=MAX_ANALYSIS_S) < analyse <= dt.timedelta(seconds=MAX_ANALYSIS_S + 3600)
    assert release.dagrun_timeout <= dt.timedelta(hours=12)


@pytest.mark.parametrize(
    ("param", "value"),
    [("interval_s", 1e9), ("interval_s", 20000), ("ready_timeout_s", 3600), ("load_rps", 1e6),
     ("min_requests", 10**7), ("max_extensions", 100), ("max_p99_latency_ratio", 1e4)],
)  # fmt: skip
def test_the_release_form_refuses_a_value_above_its_maximum(dagbag, param: str, value: float) -> None:  # type: ignore[no-untyped-def]
    from airflow.sdk.definitions.param import ParamValidationError

    form = dagbag.dags["release"].params
    with pytest.raises(ParamValidationError, match="maximum"):
        form.get_param(param).resolve(value)


def test_check_params_reads_the_triggering_asset_events_and_the_run(dagbag) -> None:  # type: ignore[no-untyped-def]
    import inspect

    check = dagbag.dags["release"].get_task("check_params")
    accepted = inspect.signature(check.python_callable).parameters
    # Airflow passes these context values only to a callable that names them
    assert {"triggering_asset_events", "dag_run"} <= set(accepted), sorted(accepted)
