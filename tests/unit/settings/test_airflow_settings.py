"""The airflow_settings.yaml loader: valid files apply, re-apply changes nothing, bad files apply nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from include.mlops.airflow.apply_settings import apply_airflow_settings
from include.mlops.errors import SettingsError
from include.mlops.settings.airflow_settings import load_airflow_settings

ROOT = Path(__file__).resolve().parents[3]
PROJECT_FILE = ROOT / "airflow_settings.yaml"


def test_project_file_declares_the_local_profile() -> None:
    s = load_airflow_settings(PROJECT_FILE)
    assert s.variable("mlops_profile") == "local"
    ml = s.connection("mlflow_default")
    assert ml.host == "127.0.0.1" and isinstance(ml.port, int)
    assert s.connection("kubernetes_default").conn_type == "kubernetes"
    gpu = next(p for p in s.pools if p.name == "gpu_training")
    assert gpu.include_deferred is True and gpu.slots >= 1


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("airflow:\n  connections:\n    - conn_type: http\n", "line 3"),
        ("airflow:\n  pools:\n    - pool_name: p\n      pool_slot: many\n", "pool_slot must be an integer"),
        ("airflow:\n  pools:\n    - pool_name: p\n      pool_slot: -1\n", "pool_slot must be >= 0"),
        ("airflow:\n  variables:\n    - variable_name: a\n      colour: blue\n", "unknown key(s) ['colour']"),
        ("airflow:\n  connections: [\n", "not valid YAML"),
        ("connections: []\n", "top-level key 'airflow'"),
        ("airflow:\n  varz: []\n", "unknown section(s) ['varz']"),
        (
            "airflow:\n  variables:\n    - variable_name: a\n      variable_value: 1\n"
            "    - variable_name: a\n      variable_value: 2\n",
            "duplicate variable",
        ),
    ],
)
def test_malformed_file_is_rejected_with_location(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "airflow_settings.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError) as err:
        load_airflow_settings(path)
    msg = str(err.value)
    if needle == "line 3":
        assert f"{path}:3" in msg and "conn_id" in msg
    else:
        assert needle in msg
    assert str(path) in msg


def test_apply_is_idempotent_and_updates_changed_values(airflow_db: Path, tmp_path: Path) -> None:
    from airflow.models.connection import Connection
    from airflow.models.pool import Pool
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    first = apply_airflow_settings(load_airflow_settings(PROJECT_FILE))
    second = apply_airflow_settings(load_airflow_settings(PROJECT_FILE))
    assert not second.changed and len(second.unchanged) == len(first.created + first.updated + first.unchanged)

    changed = tmp_path / "airflow_settings.yaml"
    changed.write_text(PROJECT_FILE.read_text().replace("pool_slot: 8", "pool_slot: 16"))
    third = apply_airflow_settings(load_airflow_settings(changed))
    assert third.updated == ("pool:gpu_training",) and not third.created
    with create_session() as session:
        assert session.query(Pool).filter(Pool.pool == "gpu_training").one().slots == 16
        assert session.query(Variable).filter(Variable.key == "mlops_profile").one().val == "local"
        conn = session.query(Connection).filter(Connection.conn_id == "mlflow_default").one()
        assert conn.host == "127.0.0.1"
    apply_airflow_settings(load_airflow_settings(PROJECT_FILE))


def test_cli_applies_nothing_from_a_malformed_file(airflow_db: Path, tmp_path: Path) -> None:
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    bad = tmp_path / "airflow_settings.yaml"
    shutil.copy(PROJECT_FILE, bad)
    # a valid new variable first, then a broken pool: the variable must not be written either
    bad.write_text(
        bad.read_text().replace(
            "  variables:\n", "  variables:\n    - variable_name: never_applied\n      variable_value: x\n"
        )
        + "    - pool_name: broken\n      pool_slot: lots\n".replace("    - pool", "  pools2:\n    - pool")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "include.mlops.airflow.apply_settings", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "nothing was applied" in proc.stderr and "pools2" in proc.stderr
    with create_session() as session:
        assert session.query(Variable).filter(Variable.key == "never_applied").one_or_none() is None
