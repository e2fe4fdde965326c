"""The Prometheus alert rules and scrape config pass `promtool check` and their `promtool test rules`
cases (Debian's prometheus package; make services installs it): each alert fires on its series and
stays quiet just inside its threshold."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT
from tests.services import service_missing

RULES = ROOT / "observability" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        service_missing("no promtool: make services installs Debian's prometheus package")
    return str(found)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=RULES, capture_output=True, text=True, timeout=60, check=False)


def test_alert_rules_are_valid_and_every_rule_is_counted(promtool: str) -> None:
    out = _run(promtool, "check", "rules", "alerts.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 8 rules found" in out.stdout


def test_each_alert_fires_on_its_series_and_not_just_inside_its_threshold(promtool: str) -> None:
    out = _run(promtool, "test", "rules", "alerts_test.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    tested = (RULES / "alerts_test.yml").read_text()
    defined = [line.split(":", 1)[1].strip() for line in (RULES / "alerts.yml").read_text().splitlines()
               if line.strip().startswith("- alert:")]  # fmt: skip
    assert len(defined) == 8 and all(f"alertname: {a}" in tested for a in defined), defined


def test_the_scrape_config_is_valid_and_loads_the_rules(promtool: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(RULES / name, tmp_path / name)
    (tmp_path / "airflow-token").write_text("a-jwt\n")
    out = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert out.returncode == 0 and "SUCCESS: 8 rules found" in out.stdout, out.stdout + out.stderr
