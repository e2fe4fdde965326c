"""HTTP API and a small UI page for the router, mounted by the Airflow plugin under /resource-router.

Capacity per pool, live reservations, recent decisions, and a dry run that places without reserving.
Built by ``create_app(router_factory, dependencies=...)``: the plugin adds Airflow's auth
(``include.mlops.airflow.auth.require_router_access``); tests of the routes alone run it under plain uvicorn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from include.mlops.errors import MlopsError, PlacementError
from include.mlops.guarded_app import guarded_app
from include.mlops.routing.model import TaskRequest

if TYPE_CHECKING:
    from fastapi import FastAPI

    from include.mlops.routing.router import ResourceRouter

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Resource router</title>
<style>body{font:14px system-ui;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;
padding:3px 8px}textarea{width:40em;height:8em}pre{background:#f4f4f4;padding:1em;max-width:90em;overflow:auto}</style>
</head><body><h2>Capacity per pool</h2><div id="cap">loading…</div>
<h2>Reservations</h2><div id="res"></div><h2>Recent decisions</h2><div id="dec"></div>
<h2>Dry run</h2><textarea id="req">{"gpu_count": 1, "gpu_types": ["A100", "L4"], "cpu_millicores": 8000,
"memory_mib": 32768}</textarea><br><button onclick="dry()">Place (no reservation)</button><pre id="out"></pre>
<script>
// times (fields *_at_s, epoch seconds) as a person reads them, in the Airflow UI's timezone
function uiTz(){ let tz = null; try { tz = JSON.parse(localStorage.getItem("timezone") || "null"); } catch(e) {}
 tz = tz || Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
 try { new Intl.DateTimeFormat("en-GB", {timeZone: tz}); return tz; } catch(e) { return "UTC"; } }
const FMT = new Intl.DateTimeFormat("en-GB", {timeZone: uiTz(), dateStyle: "medium", timeStyle: "medium"});
function cell(c, v){ if(c.endsWith("_at_s") && typeof v === "number") return FMT.format(new Date(v * 1000));
 return typeof v === "object" ? JSON.stringify(v) : (v ?? ""); }
function table(rows, cols){ if(!rows.length) return "<i>none</i>";
 return "<table><tr>"+cols.map(c=>"<th>"+c+"</th>").join("")+"</tr>"+rows.map(r=>"<tr>"+cols.map(c=>
 "<td>"+cell(c, r[c])+"</td>").join("")+"</tr>").join("")+"</table>";}
async function load(){
 const cap = await (await fetch("capacity")).json();
 document.getElementById("cap").innerHTML = table(cap.pools, ["node_pool","target","gpu_types","nodes",
   "schedulable_nodes","whole_gpus_free","gpu_free_milli","mig_free","cpu_free_millicores","memory_free_mib"]);
 const res = await (await fetch("reservations")).json();
 document.getElementById("res").innerHTML = table(res, ["task_key","node_name","expires_at_s"]);
 const dec = await (await fetch("decisions?limit=20")).json();
 document.getElementById("dec").innerHTML = table(dec.map(d=>({...d, where: d.node_pool||"", why:
   (d.explanation||{}).summary||d.reason})), ["decided_at_s","task_key","decision","dry_run","where","why"]);}
async function dry(){ const r = await fetch("dry-run",{method:"POST",headers:{"Content-Type":"application/json"},
 body:document.getElementById("req").value}); document.getElementById("out").textContent =
 JSON.stringify(await r.json(), null, 2); load();}
load();
</script></body></html>"""


def create_app(
    router_factory: Callable[[], ResourceRouter], *, dependencies: Sequence[Callable[..., Any]] = ()
) -> FastAPI:
    """The router's FastAPI app; ``router_factory`` is called per request (cheap; reads settings).

    ``dependencies`` guard every route, the UI page included (app level, so a route added later
    cannot ship unguarded).
    """
    from fastapi import Body, HTTPException
    from fastapi.responses import HTMLResponse

    app = guarded_app("Resource router", "Where heavy tasks can run now, and why.", dependencies)

    def router() -> ResourceRouter:
        try:
            return router_factory()
        except MlopsError as exc:
            raise HTTPException(503, detail=str(exc)) from exc

    @app.get("/capacity")
    def capacity() -> dict[str, Any]:
        r = router()
        try:
            snap = r.provider.snapshot()
        except MlopsError as exc:
            raise HTTPException(503, detail=str(exc)) from exc
        return {"source": snap.source, "taken_at_s": snap.taken_at_s, "pools": snap.pool_summary()}

    @app.get("/reservations")
    def reservations() -> list[dict[str, Any]]:
        return [r.to_dict() for r in router().book.active()]

    @app.get("/decisions")
    def decisions(limit: int = 50) -> list[dict[str, Any]]:
        return router().book.recent_decisions(max(1, min(limit, 500)))

    @app.post("/dry-run")
    def dry_run(body: dict[str, Any] = Body(...), waited_s: float = 0.0) -> dict[str, Any]:  # noqa: B008
        if not (math.isfinite(waited_s) and waited_s >= 0):
            raise HTTPException(422, detail=f"waited_s={waited_s!r}: must be a finite number of seconds >= 0")
        try:
            request = TaskRequest.from_dict(body)
            return router().decide(request, waited_s=waited_s, dry_run=True).to_dict()
        except PlacementError as exc:
            raise HTTPException(422, detail=str(exc)) from exc

    @app.get("/ui", response_class=HTMLResponse)
    def ui() -> str:
        return _PAGE

    return app
