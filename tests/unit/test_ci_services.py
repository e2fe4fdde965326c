"""CI fails rather than skips when a service it installs is missing (tests/services.py, make services)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.services import require_docker_engine, service_missing

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_service_skips_on_a_workstation_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no engine here"):
        service_missing("no engine here")
    for value in ("true", "TRUE", "1", "yes"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.fail.Exception, match=r"no engine here \(CI=true: the CI starts this service"):
            service_missing("no engine here")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        service_missing("no engine here")


def test_no_docker_engine_at_docker_host_fails_under_ci_naming_the_socket(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no-engine\.sock.*start_engine\.sh"):
        require_docker_engine()


def _make_services(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    """`make services` as a non-root user: `id` on PATH answers 1000 (the recipe's root check)."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir(exist_ok=True)
    (fake_bin / "id").write_text("#!/bin/sh\necho 1000\n")
    (fake_bin / "id").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PATH"] = f"{fake_bin}{os.pathsep}{env['PATH']}"
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        ["make", "-s", "services"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_make_services_fails_under_ci_when_it_cannot_start_the_engine(tmp_path: Path) -> None:
    failed = _make_services(tmp_path, "true")
    assert failed.returncode != 0, failed.stdout
    assert "CI=true but not root or no apt-get: cannot start the Docker engine" in failed.stderr, failed.stderr
    tolerated = _make_services(tmp_path, None)
    assert tolerated.returncode == 0, tolerated.stderr
    assert "tests that need it will skip with the reason" in tolerated.stdout
