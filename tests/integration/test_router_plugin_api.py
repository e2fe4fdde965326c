"""The router's HTTP API over real HTTP on free 127.0.0.1 ports, called with httpx.

The routes' behaviour under plain uvicorn; then the plugin inside a real ``airflow api-server``
behind Airflow's auth (SimpleAuthManager, configured users, a password file, real JWTs).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from include.mlops.routing.api import create_app
from include.mlops.routing.model import TaskRequest
from include.mlops.routing.providers.static import StaticInventoryProvider
from include.mlops.routing.reservations import ReservationBook
from include.mlops.routing.router import ResourceRouter
from tests.api_server import START_LIMIT_S, ApiServer, airflow_api_server
from tests.conftest import ROOT
from tests.ports import listening_socket

INVENTORY = """
source: lab
pool_label: karpenter.sh/nodepool
nodes:
  - {name: a100, node_pool: a100-pool, gpu_type: NVIDIA-A100-SXM4-80GB, gpus: 8, gpus_used: 7, cpu: "96", memory: 1Ti}
  - {name: l4, node_pool: l4-pool, gpu_type: NVIDIA-L4, gpus: 1, cpu: "16", memory: 64Gi}
"""


@pytest.fixture()
def api(tmp_path: Path) -> Iterator[tuple[str, ResourceRouter]]:
    import uvicorn

    inv = tmp_path / "inventory.yaml"
    inv.write_text(INVENTORY)
    router = ResourceRouter(StaticInventoryProvider(inv), ReservationBook(tmp_path / "book.sqlite"))
    # the socket is bound here and handed to uvicorn: no port number passed on for another run to take
    sock = listening_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(lambda: router), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", router
    server.should_exit = True
    thread.join(10)
    sock.close()


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


# --- the plugin inside the real Airflow api-server ------------------------------------------------


@dataclass(frozen=True)
class RouterApiServer:
    server: ApiServer
    book: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def passwords(self) -> dict[str, str]:
        return self.server.passwords


def _token(c: httpx.Client, user: str, password: str) -> httpx.Response:
    return c.post("/auth/token", json={"username": user, "password": password})


# A route taking every method behind the router's own auth dependency: what a route added to the
# router's app later would get (the app's own routes are GET/POST only, so FastAPI answers 405 for
# other methods before any dependency runs).
PROBE_PLUGIN = """
from fastapi import Depends, FastAPI
from airflow.plugins_manager import AirflowPlugin
from include.mlops.airflow.auth import require_router_access

app = FastAPI(dependencies=[Depends(require_router_access)])


@app.api_route("/anything", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
def anything() -> dict:
    return {"reached": True}


class RouterAuthProbe(AirflowPlugin):
    name = "router_auth_probe"
    fastapi_apps = [{"app": app, "url_prefix": "/router-auth-probe", "name": "Router auth probe"}]
"""


@pytest.fixture(scope="module")
def api_server(airflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RouterApiServer]:
    """``airflow api-server`` (core API + plugins) on a free port: viewer ``alice``, role-less ``nobody``.

    Its plugins folder holds the router plugin as shipped and the auth probe above."""
    base = tmp_path_factory.mktemp("api-server")
    (base / "inventory.yaml").write_text(INVENTORY)
    plugins = base / "plugins"
    plugins.mkdir()
    (plugins / "resource_router.py").write_text((ROOT / "plugins" / "resource_router.py").read_text())
    (plugins / "router_auth_probe.py").write_text(PROBE_PLUGIN)
    env = {
        "AIRFLOW_VAR_ROUTER_CAPACITY_SOURCE": f"inventory:{base / 'inventory.yaml'}",
        "AIRFLOW_VAR_ROUTER_BOOK_PATH": str(base / "book.sqlite"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),
    }
    with airflow_api_server(base, {"alice": "viewer", "nobody": ""}, env) as server:
        yield RouterApiServer(server, base / "book.sqlite")


@pytest.mark.slow
def test_plugin_api_in_the_airflow_api_server_requires_an_airflow_token(api_server: ApiServer):
    probe = {"task_key": "probe", "gpu_count": 1, "gpu_types": ["A100", "L4"], "memory_mib": 4096}
    with httpx.Client(base_url=api_server.url, timeout=20) as c:
        # anonymous and forged callers get nothing, not even the page or a dry run
        assert c.get("/resource-router/capacity").status_code == 401
        assert c.get("/resource-router/ui").status_code == 401
        assert c.post("/resource-router/dry-run", json=probe).status_code == 401
        assert c.get("/resource-router/openapi.json").status_code == 401  # the schema too
        assert c.get("/resource-router/docs").status_code == 401
        forged = {"Authorization": "Bearer not-a-jwt"}
        assert c.get("/resource-router/capacity", headers=forged).status_code == 403

        assert _token(c, "alice", "wrong-password").status_code == 401
        login = _token(c, "alice", api_server.passwords["alice"])
        assert login.status_code == 201, login.text
        alice = {"Authorization": f"Bearer {login.json()['access_token']}"}

        cap = c.get("/resource-router/capacity", headers=alice)
        assert cap.status_code == 200, cap.text
        pools = {p["node_pool"]: p for p in cap.json()["pools"]}
        assert pools["a100-pool"]["whole_gpus_free"] == 1 and pools["l4-pool"]["gpu_types"] == ["NVIDIA-L4"]

        placed = c.post("/resource-router/dry-run", json=probe, headers=alice)
        assert placed.status_code == 200, placed.text
        assert placed.json()["decision"] == "place" and placed.json()["node_pool"] == "a100-pool"
        assert c.get("/resource-router/reservations", headers=alice).json() == []  # nothing reserved
        decisions = c.get("/resource-router/decisions", headers=alice).json()
        assert [(d["task_key"], d["dry_run"]) for d in decisions] == [("probe", True)]  # the 401 one left no trace

        schema = c.get("/resource-router/openapi.json", headers=alice)
        assert schema.status_code == 200 and "/dry-run" in schema.json()["paths"], schema.text
        docs = c.get("/resource-router/docs", headers=alice)
        assert docs.status_code == 200 and "openapi.json" in docs.text

        page = c.get("/resource-router/ui", headers=alice)
        assert page.status_code == 200 and 'fetch("capacity")' in page.text
        # the page's own fetches carry the Airflow UI's session cookie, not a header
        c.cookies.set("_token", login.json()["access_token"])
        assert c.get("/resource-router/reservations").status_code == 200
        c.cookies.clear()

        # authenticated is not authorized: a user without a role is refused the view
        nobody = _token(c, "nobody", api_server.passwords["nobody"])
        assert nobody.status_code == 201, nobody.text
        refused = c.get(
            "/resource-router/capacity", headers={"Authorization": f"Bearer {nobody.json()['access_token']}"}
        )
        assert refused.status_code == 403 and "nobody" in refused.json()["detail"]
    assert api_server.server.started_in_s < START_LIMIT_S


@pytest.mark.slow
def test_router_api_refuses_other_methods_and_non_finite_or_split_fields_and_dry_runs_without_the_lock(
    api_server: RouterApiServer,
) -> None:
    alice = api_server.server.headers("alice")
    probe = {"task_key": "probe", "gpu_count": 1, "gpu_types": ["A100", "L4"], "memory_mib": 4096}
    with httpx.Client(base_url=api_server.url, timeout=10, headers=alice) as c:
        # a method other than GET or POST is refused, never authorised as a GET
        assert c.get("/router-auth-probe/anything").json() == {"reached": True}
        for method in ("PUT", "DELETE", "PATCH"):
            refused = c.request(method, "/router-auth-probe/anything")
            assert refused.status_code == 405, (method, refused.text)
            assert method in refused.json()["detail"] and refused.headers["allow"] == "GET, POST"
        assert c.put("/resource-router/dry-run", json=probe).status_code == 405

        # JSON NaN/Infinity would never expire; a lone string would be split into characters
        for raw in ('{"gpu_count": 1, "max_wait_s": NaN}', '{"gpu_count": 1, "max_wait_s": Infinity}'):
            bad = c.post("/resource-router/dry-run", content=raw, headers={"Content-Type": "application/json"})
            assert bad.status_code == 422 and "max_wait_s" in bad.json()["detail"], bad.text
        bad = c.post("/resource-router/dry-run", json={"gpu_count": 1, "gpu_types": "A100"})
        assert bad.status_code == 422, bad.text
        assert "gpu_types='A100'" in bad.json()["detail"] and "list of strings" in bad.json()["detail"]
        bad = c.post("/resource-router/dry-run", params={"waited_s": "nan"}, json=probe)
        assert bad.status_code == 422 and "waited_s" in str(bad.json()["detail"]), bad.text

        # a dry run neither takes nor waits for the book's write lock: it answers while a writer holds it
        assert c.get("/resource-router/reservations").status_code == 200  # the book exists
        writer = sqlite3.connect(api_server.book, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")
            t0 = time.monotonic()
            placed = c.post("/resource-router/dry-run", json={**probe, "task_key": "while-locked"})
            locked_s = time.monotonic() - t0
            assert placed.status_code == 200 and placed.json()["node_pool"] == "a100-pool", placed.text
            assert locked_s < 3, f"dry run took {locked_s:.1f} s while a writer held the book"
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        keys = [d["task_key"] for d in c.get("/resource-router/decisions").json()]
        assert "while-locked" not in keys  # its log entry was dropped, not queued behind the writer
        assert c.post("/resource-router/dry-run", json={**probe, "task_key": "after"}).status_code == 200
        assert c.get("/resource-router/decisions").json()[0]["task_key"] == "after"
        assert c.get("/resource-router/reservations").json() == []


@pytest.mark.slow
def test_with_the_fab_auth_manager_only_granted_roles_see_the_router(tmp_path: Path) -> None:
    """FAB decides custom views from role permissions: a stock Viewer is refused until an admin
    grants the router (include.mlops.airflow.fab_roles); a read-only grant allows no dry run."""
    from tests.api_server import fab_api_server

    (tmp_path / "inventory.yaml").write_text(INVENTORY)
    env = {
        "AIRFLOW_VAR_ROUTER_CAPACITY_SOURCE": f"inventory:{tmp_path / 'inventory.yaml'}",
        "AIRFLOW_VAR_ROUTER_BOOK_PATH": str(tmp_path / "book.sqlite"),
    }
    users = {"vera": "Viewer", "otto": "RouterOps", "rita": "RouterReaders"}
    probe = {"task_key": "probe", "gpu_count": 1, "gpu_types": ["A100", "L4"], "memory_mib": 4096}
    grants = {"RouterOps": False, "RouterReaders": True}
    with (
        fab_api_server(tmp_path / "fab", users, grants, env) as server,
        httpx.Client(base_url=server.url, timeout=20) as c,
    ):
        assert c.get("/resource-router/capacity").status_code == 401
        vera = server.headers("vera")
        refused = c.get("/resource-router/capacity", headers=vera)
        assert refused.status_code == 403 and "vera" in refused.json()["detail"], refused.text

        otto = server.headers("otto")
        assert c.get("/resource-router/capacity", headers=otto).status_code == 200
        placed = c.post("/resource-router/dry-run", json=probe, headers=otto)
        assert placed.status_code == 200 and placed.json()["node_pool"] == "a100-pool", placed.text

        rita = server.headers("rita")
        assert c.get("/resource-router/decisions", headers=rita).status_code == 200
        assert c.post("/resource-router/dry-run", json=probe, headers=rita).status_code == 403
