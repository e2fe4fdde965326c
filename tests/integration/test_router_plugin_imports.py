"""The router plugin keeps Airflow's API security module out of plugin import, and loads it once.

Task processes import plugins (for their macros): the plugin must not pull in the core API's
security module, which takes seconds to import. The auth dependency imports it on the first
request; Python keeps the module, so later requests reuse it (no second import).
Checked in a fresh interpreter, since this test session may have imported it already.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys, time
sys.path.insert(0, "plugins")
SECURITY = "airflow.api_fastapi.core_api.security"
t0 = time.monotonic()
import resource_router
plugin_s = time.monotonic() - t0
out = {"after_plugin_import": SECURITY in sys.modules, "plugin_import_s": plugin_s}
from fastapi.testclient import TestClient
with TestClient(resource_router.app) as c:
    t0 = time.monotonic()
    first = c.get("/reservations")
    out["first_request_s"] = time.monotonic() - t0
    out["after_first_request"] = SECURITY in sys.modules
    module = sys.modules[SECURITY]
    t0 = time.monotonic()
    second = c.get("/reservations")
    out["second_request_s"] = time.monotonic() - t0
    out["same_module_after_second"] = sys.modules[SECURITY] is module
    out["status"] = [first.status_code, second.status_code]
print(json.dumps(out))
"""


def test_plugin_import_leaves_the_security_module_to_the_first_request_which_loads_it_once() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"\nplugin import {out['plugin_import_s']:.2f} s; first request (imports security) "
        f"{out['first_request_s']:.2f} s; second request {out['second_request_s'] * 1000:.1f} ms"
    )
    assert out["after_plugin_import"] is False
    assert out["status"] == [401, 401]  # no token: refused by the dependency that imported it
    assert out["after_first_request"] is True and out["same_module_after_second"] is True
