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
