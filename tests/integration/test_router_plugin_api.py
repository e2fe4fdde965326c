"""The router's HTTP API served by real uvicorn on a free 127.0.0.1 port, called with httpx."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from include.mlops.routing.api import create_app
from include.mlops.routing.model import TaskRequest
from include.mlops.routing.providers.static import StaticInventoryProvider
from include.mlops.routing.reservations import ReservationBook
from include.mlops.routing.router import ResourceRouter

INVENTORY = """
source: lab
pool_label: karpenter.sh/nodepool
nodes:
  - {name: a100, node_pool: a100-pool, gpu_type: NVIDIA-A100-SXM4-80GB, gpus: 8, gpus_used: 7, cpu: "96", memory: 1Ti}
  - {name: l4, node_pool: l4-pool, gpu_type: NVIDIA-L4, gpus: 1, cpu: "16", memory: 64Gi}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[tuple[str, ResourceRouter]]:
    import uvicorn

    inv = tmp_path / "inventory.yaml"
    inv.write_text(INVENTORY)
    router = ResourceRouter(StaticInventoryProvider(inv), ReservationBook(tmp_path / "book.sqlite"))
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(lambda: router), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", router
    server.should_exit = True
    thread.join(10)


def test_api_reports_capacity_dry_runs_without_reserving_and_lists_decisions(api):
    url, router = api
    with httpx.Client(base_url=url, timeout=10) as c:
        pools = {p["node_pool"]: p for p in c.get("/capacity").json()["pools"]}
        assert pools["a100-pool"]["whole_gpus_free"] == 1 and pools["l4-pool"]["gpu_types"] == ["NVIDIA-L4"]

        body = {"task_key": "probe", "gpu_count": 1, "gpu_types": ["A100", "L4"], "memory_mib": 4096}
        first = c.post("/dry-run", json=body).json()
        assert first["decision"] == "place" and first["node_pool"] == "a100-pool"
        assert {v["node_pool"]: v["outcome"] for v in first["explanation"]["considered"]} == {
            "a100-pool": "chosen",
            "l4-pool": "lost",
        }
        assert c.get("/reservations").json() == []  # a dry run holds nothing

        router.decide(TaskRequest(task_key="real", gpu_count=1, gpu_types=("A100",)))
        held = c.get("/reservations").json()
        assert [r["task_key"] for r in held] == ["real"]
        second = c.post("/dry-run", json=body).json()
        assert second["node_pool"] == "l4-pool"  # the reserved A100 is taken: falls through to L4

        decisions = c.get("/decisions", params={"limit": 10}).json()
        assert [d["task_key"] for d in decisions] == ["probe", "real", "probe"]

        bad = c.post("/dry-run", json={"gpu_count": 1, "gpu_milli": 500})
        assert bad.status_code == 422 and "not both" in bad.json()["detail"]
        page = c.get("/ui")
        assert page.status_code == 200 and 'fetch("capacity")' in page.text
