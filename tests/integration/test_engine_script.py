"""docker/start_engine.sh with the registry's port: reuse the registry that answers there, and name
at once what holds the port when it is not a registry (instead of timing out a minute later)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.ports import listening_socket
from tests.services import service_missing

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _start_engine(tmp_path: Path, registry_port: str) -> subprocess.CompletedProcess[str]:
    if os.getuid() != 0:
        service_missing("docker/start_engine.sh must run as root (it starts dockerd)")
    env = {**os.environ, "MLOPS_REGISTRY_PORT": registry_port, "MLOPS_ENGINE_STATE": str(tmp_path / "engine")}
    return subprocess.run(
        ["bash", "docker/start_engine.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_registry_port_held_by_another_program_is_refused_naming_it(docker_engine: str, tmp_path: Path) -> None:
    with listening_socket() as squatter:
        port = squatter.getsockname()[1]
        t0 = time.monotonic()
        done = _start_engine(tmp_path, str(port))
        took = time.monotonic() - t0
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"127.0.0.1:{port} is taken by something that is not an image registry" in done.stderr
    assert f"pid={os.getpid()}" in done.stderr and "MLOPS_REGISTRY_PORT" in done.stderr, done.stderr
    assert took < 30, took  # the probe's 5 s curl limit, not the 60 s wait for a registry to answer


def test_the_running_registry_is_reused(docker_engine: str, tmp_path: Path) -> None:
    port = os.environ.get("MLOPS_REGISTRY_PORT", "5001")
    done = _start_engine(tmp_path, port)
    assert done.returncode == 0, done.stderr
    assert f"registry: already running on 127.0.0.1:{port}" in done.stdout, done.stdout


def test_a_second_run_leaves_the_loopback_swarm_as_it_is(docker_engine: str, tmp_path: Path) -> None:
    import json

    def swarm() -> dict[str, object]:
        out = subprocess.run(["docker", "info", "--format", "{{json .Swarm}}"], capture_output=True, text=True)
        return dict(json.loads(out.stdout))

    first = _start_engine(tmp_path, os.environ.get("MLOPS_REGISTRY_PORT", "5001"))
    before = swarm()
    second = _start_engine(tmp_path, os.environ.get("MLOPS_REGISTRY_PORT", "5001"))
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "swarm: already active" in second.stdout, second.stdout
    after = swarm()
    assert after["LocalNodeState"] == "active" and after["NodeID"] == before["NodeID"]
    # serving publishes no port: no routing-mesh network, and the control plane answers on loopback only
    nets = subprocess.run(["docker", "network", "ls", "--format", "{{.Name}}"], capture_output=True, text=True)
    assert "ingress" not in nets.stdout.split()
    listening = subprocess.run(["ss", "-Hltn", "sport = :2377"], capture_output=True, text=True).stdout
    assert listening.strip() and all("127.0.0.1:2377" in line for line in listening.strip().splitlines()), listening
