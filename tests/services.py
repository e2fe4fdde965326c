"""Services a test needs that the CI installs (Docker engine, local registry): skip here, fail in CI.

A developer's laptop may have no Docker engine; there a test that needs one skips, naming why.
Under ``CI=true`` (.ci/run exports it, as most CI systems do) the CI has installed the service
itself, so its absence is a broken CI: the test fails instead of letting the run stay green with
the engine paths never exercised. Tests that need nothing of the kind never call this.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

CI_VALUES = {"1", "true", "yes"}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


def service_missing(reason: str) -> NoReturn:
    """Skip naming `reason`, or under CI=true fail naming it (the CI installs this service)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: the CI starts this service, so its absence fails the test)", pytrace=False)
    pytest.skip(reason)


def require_docker_engine() -> str:
    """Which engine answers (version and URL); if none does, service_missing (docker/start_engine.sh starts it)."""
    from include.mlops.serving_image import engine_available

    ok, reason = engine_available()
    if not ok:
        service_missing(f"{reason}; CI runs docker/start_engine.sh first")
    return reason
