"""The release history (plugins/release_history.py) through a real api-server, with real release runs.

Three releases run with `airflow dags test` against a real MLflow server: a first release, a canary
promoted after a human approved it through the api-server, and a faulty canary rolled back. The
history API is then read through the same api-server (real JWTs, SimpleAuthManager users), and a
headless Debian chromium (Playwright, no downloaded browser) logs in and looks at the pages.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from include.mlops.dag_test import DagTest, DagTestRun
from include.mlops.registry.mlflow_registry import MlflowRegistry, TrainingRecord
from tests.api_server import ApiServer, airflow_api_server
from tests.conftest import ROOT
from tests.e2e.conftest import Deployment
from tests.model_fixtures import build_faulty_model, build_logistic_model
from tests.services import service_missing

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FAST = {"steps_pct": [50, 100], "interval_s": 3, "min_requests": 10, "load_rps": 20, "max_p99_latency_ratio": 2.5}
SCREENSHOTS = ROOT / ".local" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
# the lineage tags retrain's register step writes on a version (include/mlops/retraining.py)
LINEAGE = {
    "airflow.dag_id": "retrain",
    "airflow.run_id": "scheduled__2026-11-02T00:00:00+00:00",
    "data.path": "/data/landing/batch_2026-11-02.parquet",
    "data.fingerprint": "3f1c9a0b7d2e4c6f8a1b3c5d7e9f0a2b",
    "data.rows": "3000",
    "validation.success": "True",
    "validation.expectations": "27",
    "placement.target": "local",
    "placement.summary": "local: 2 CPU free, chosen (no GPU asked)",
    "training.device": "cpu",
    "gate.decision": "passed",
    "gate.reason": "auc 0.91 >= champion 0.90 + 0",
}


WEBHOOK_SECRET = "T000-B000-not-for-logs"


class AlertReceivers:
    """A real SMTP server (aiosmtpd) and a Slack-style webhook receiver on loopback, recording what arrives."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from aiosmtpd.controller import Controller

        from tests.conftest import free_port
        from tests.ports import BIND_ATTEMPTS

        self.mails: list[str] = []
        self.posts: list[dict[str, Any]] = []
        receivers = self

        class Inbox:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                receivers.mails.append(envelope.content.decode("utf-8", "replace"))
                return "250 OK"

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receivers.posts.append({"path": self.path, **json.loads(body)})
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        for attempt in range(BIND_ATTEMPTS):  # another run may take the port between pick and bind
            self.smtp = Controller(Inbox(), hostname="127.0.0.1", port=free_port())
            try:
                self.smtp.start()
                break
            except (OSError, RuntimeError):
                if attempt == BIND_ATTEMPTS - 1:
                    raise
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)  # port 0: bound at once, no race
        threading.Thread(target=self.http.serve_forever, daemon=True).start()
        hook_url = f"http://127.0.0.1:{self.http.server_address[1]}/services/{WEBHOOK_SECRET}"
        self.env = {
            "AIRFLOW_CONN_MLOPS_ALERTS_SMTP": json.dumps(
                {"conn_type": "smtp", "host": "127.0.0.1", "port": self.smtp.port,
                 "extra": {"from": "airflow@example.org", "to": "mlops@example.org"}}
            ),
            "AIRFLOW_CONN_MLOPS_ALERTS_WEBHOOK": json.dumps({"conn_type": "http", "password": hook_url}),
        }  # fmt: skip

    def stop(self) -> None:
        self.smtp.stop()
        self.http.shutdown()


@dataclass(frozen=True)
class History:
    api: ApiServer
    dep: Deployment
    first: DagTestRun
    approved: DagTestRun
    rolled_back: DagTestRun
    versions: dict[str, str]  # key -> version
    alerts: AlertReceivers

    def get(self, path: str, user: str | None = "viewer", **params: Any) -> httpx.Response:
        headers = self.api.headers(user) if user else {}
        return httpx.get(f"{self.api.url}/release-history{path}", params=params, headers=headers, timeout=60)


def _register(dep: Deployment, reg: MlflowRegistry, onnx_path: Path, key: str) -> str:
    run_id = reg.log_training(
        TrainingRecord(
            run_key=f"history/{key}",
            params={"source": key},
            history=[],
            holdout_metrics={"auc": 0.9},
            model_onnx_path=onnx_path,
            input_example_path=None,
            tags=LINEAGE,
            artifacts={},
        ),
        f"history-{dep.model_name}",
    )
    return reg.register_version(dep.model_name, run_id, f"history/{key}", tags=LINEAGE).version


def _approve_when_asked(api: ApiServer, running: DagTest, limit_s: float = 240) -> None:
    headers = api.headers("approver")
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        assert running.proc.poll() is None, running.log_path.read_text()[-4000:]
        if running.run_id:
            base = f"{api.url}/api/v2/dags/release/dagRuns/{running.run_id}"
            r = httpx.get(f"{base}/hitlDetails", headers=headers, timeout=20)
            assert r.status_code == 200, r.text
            if any(not d.get("response_received") for d in r.json()["hitl_details"]):
                answered = httpx.patch(
                    f"{base}/taskInstances/approve/-1/hitlDetails",
                    json={"chosen_options": ["Approve"]},
                    headers=headers,
                    timeout=20,
                )
                assert answered.status_code == 200, answered.text
                return
        time.sleep(1)
    raise AssertionError(f"no approval request within {limit_s} s:\n{running.log_path.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def history(deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    t0 = time.monotonic()
    dep = deployment
    dep.write_batch("2026-11-02", n_rows=3_000, seed=21)  # holdout rows the release replays
    reg = MlflowRegistry(dep.mlflow_uri)
    models = dep.base / "models"
    versions = {
        "first": _register(dep, reg, build_logistic_model(models / "first.onnx", seed=0), "first"),
        "approved": _register(dep, reg, build_logistic_model(models / "approved.onnx", seed=0), "approved"),
        "faulty": _register(dep, reg, build_faulty_model(models / "faulty.onnx"), "faulty"),
    }
    users = {"viewer": "viewer", "approver": "op", "nobody": ""}
    # the api-server reads MLflow's connection the way a deployment sets it (the deployment's env)
    release = {"model_name": dep.model_name, **FAST}
    alerts = AlertReceivers()
    # the first release runs while the api-server starts (each takes seconds of start-up alone)
    running_first = dep.start_dags_test("release", {**release, "version": versions["first"]}, env=alerts.env)
    with airflow_api_server(tmp_path_factory.mktemp("history-api"), users, env=dep.env) as api:
        first = running_first.wait()
        assert first.state == "success", first.explain()
        approve = {**release, "version": versions["approved"], "require_approval": True}
        running = dep.start_dags_test("release", approve, env=alerts.env)
        _approve_when_asked(api, running)
        approved = running.wait()
        assert approved.state == "success", approved.explain()
        # the alert links to the record at the UI's base URL (a deployment sets it for every component)
        alert_env = {**alerts.env, "AIRFLOW__API__BASE_URL": api.url}
        rolled_back = dep.dags_test("release", {**release, "version": versions["faulty"]}, env=alert_env)
        assert rolled_back.state == "failed", rolled_back.explain()
        print(f"three releases and the api-server in {time.monotonic() - t0:.0f} s")
        try:
            yield History(api, dep, first, approved, rolled_back, versions, alerts)
        finally:
            alerts.stop()


def test_history_api_tells_each_release_story_newest_first(history: History) -> None:
    headers = history.api.headers("viewer")
    t0 = time.monotonic()
    r = httpx.get(f"{history.api.url}/release-history/releases", headers=headers, timeout=60)
    print(f"a page of 3 records answered in {time.monotonic() - t0:.2f} s")
    assert r.status_code == 200, r.text
    body = r.json()
    records = body["releases"]
    assert [x["run_id"] for x in records] == [history.rolled_back.run_id, history.approved.run_id, history.first.run_id]
    assert body["total"] == 3 and body["pages"] == 1 and body["models"] == [history.dep.model_name]
    bad, good, first = records

    assert (bad["version"], bad["outcome"], bad["verdict"]) == (history.versions["faulty"], "rolled-back", "failed")
    assert "canary error rate 100.0% > max" in bad["reason"], bad["reason"]
    assert bad["canary_steps"] and bad["canary_steps"][0]["error_rate_canary"] == 1.0
    assert bad["links"]["logs"].endswith("/tasks/analyse")

    assert (good["version"], good["outcome"], good["approved_by"]) == (
        history.versions["approved"],
        "promoted",
        "approver",
    )
    assert good["approval_wait_s"] is not None and good["approval_wait_s"] >= 0
    step = good["canary_steps"][0]
    assert step["weight_pct"] == 50 and step["verdict"] == "pass" and step["n_canary"] >= FAST["min_requests"]
    assert step["latency_p99_canary_ms"] > 0 and good["canary_duration_s"] > 0
    # what the version was made from, as retrain recorded it on the version in MLflow
    assert good["data_fingerprint"] == LINEAGE["data.fingerprint"] and good["data_rows"] == "3000"
    assert good["validation"] == "passed (27 expectations)" and good["placement"] == "local"
    assert good["training_airflow_run"] == f"retrain/{LINEAGE['airflow.run_id']}"
    assert good["gate"].startswith("passed: auc")
    assert good["triggered_by"].startswith("cli") or good["triggered_by"].startswith("test"), good["triggered_by"]
    assert good["duration_s"] > good["task_durations_s"]["analyse"] > 0
    assert good["started_at"].endswith("+00:00") and good["ended_at"] > good["started_at"]
    links = good["links"]
    assert (
        links["airflow_run"]
        == f"{history.api.url}/dags/release/runs/{good['run_id'].replace(':', '%3A').replace('+', '%2B')}"
    )
    assert links["mlflow_version"].endswith(f"/#/models/{history.dep.model_name}/versions/{good['version']}")
    assert links["mlflow_run"] and good["training_run_id"] in links["mlflow_run"]

    assert (first["outcome"], first["verdict"], first["first_release"]) == ("promoted", "first release", True)
    assert first["canary_steps"] == [] and first["approved_by"] is None


def test_history_api_filters_by_model_and_outcome_and_pages(history: History) -> None:
    rolled = history.get("/releases", outcome="rolled-back").json()
    assert [x["run_id"] for x in rolled["releases"]] == [history.rolled_back.run_id] and rolled["total"] == 1
    promoted = history.get("/releases", outcome="promoted", model=history.dep.model_name).json()
    assert [x["run_id"] for x in promoted["releases"]] == [history.approved.run_id, history.first.run_id]
    assert history.get("/releases", model="no-such-model").json()["total"] == 0
    second = history.get("/releases", per_page=1, page=2).json()
    assert [x["run_id"] for x in second["releases"]] == [history.approved.run_id] and second["pages"] == 3

    bad = history.get("/releases", outcome="exploded")
    assert bad.status_code == 422 and "param outcome='exploded': must be one of promoted" in bad.json()["detail"]
    too_many = history.get("/releases", per_page=1000)
    assert too_many.status_code == 422 and "param per_page=1000" in too_many.json()["detail"]

    one = history.get(f"/releases/{history.rolled_back.run_id}")
    assert one.status_code == 200 and one.json()["outcome"] == "rolled-back"
    assert history.get("/releases/no-such-run").status_code == 404


def test_history_serves_the_canary_plot_of_a_release(history: History) -> None:
    plot = history.get(f"/releases/{history.approved.run_id}/canary.png")
    assert plot.status_code == 200 and plot.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert history.get(f"/releases/{history.first.run_id}/canary.png").status_code == 404  # no canary


def test_history_refuses_anonymous_and_roleless_users_and_writes(history: History) -> None:
    assert history.get("/releases", user=None).status_code == 401
    assert history.get("/ui", user=None).status_code == 401
    assert history.get("/openapi.json", user=None).status_code == 401
    refused = history.get("/releases", user="nobody")
    assert refused.status_code == 403 and "nobody" in refused.json()["detail"]
    forged = {"Authorization": "Bearer not-a-token"}  # Airflow answers a token it cannot verify with 403
    assert httpx.get(f"{history.api.url}/release-history/releases", headers=forged, timeout=20).status_code == 403
    write = httpx.post(f"{history.api.url}/release-history/releases", headers=history.api.headers("viewer"), timeout=20)
    assert write.status_code == 405


def _browser() -> Any:
    """Debian's chromium driven by Playwright (never a downloaded browser); skip here, fail in CI without it."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        service_missing("the playwright package is not installed (requirements-dev.txt)")
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        service_missing(f"no {CHROMIUM}: make services installs Debian's chromium package")
    return sync_playwright()


def test_a_browser_logs_in_and_reads_the_history_the_run_tab_and_the_router_page(history: History) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    url = history.api.url
    with _browser() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000}, timezone_id="Europe/Paris")
            page.set_default_timeout(30_000)
            page.goto(f"{url}/", wait_until="load")
            page.locator("input[name=username]").fill("viewer")
            page.locator("input[name=password]").fill(history.api.passwords["viewer"])
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda u: "/auth/login" not in u, wait_until="load")

            # the nav entry opens the page inside the Airflow UI (an iframe under /plugin/release-history)
            page.goto(f"{url}/plugin/release-history", wait_until="load")
            frame = page.frame_locator("iframe[title='Release history']")
            rows = frame.locator("#history tr[data-run-id]")
            rows.first.wait_for()
            assert rows.count() == 3
            bad = frame.locator(f"tr[data-run-id='{history.rolled_back.run_id}']")
            good = frame.locator(f"tr[data-run-id='{history.approved.run_id}']")
            assert bad.get_attribute("data-outcome") == "rolled-back"
            assert good.get_attribute("data-outcome") == "promoted"
            assert "canary error rate 100.0% > max" in bad.inner_text()
            assert "approved by approver" in good.inner_text()
            # times are read as a person reads them, in the UI's timezone (the browser's, here Paris)
            shown = good.locator("time").inner_text()
            assert "2026" in shown and ("CET" in shown or "GMT+1" in shown), shown
            assert "ago" in good.inner_text() and "1796" not in good.inner_text()
            frame.locator("img.plot").first.wait_for()
            page.screenshot(path=str(SCREENSHOTS / "release-history.png"), full_page=True)

            # the row's link opens the Airflow run in the whole window, not inside the iframe
            good.get_by_role("link", name="Airflow run").click()
            page.wait_for_url("**/dags/release/runs/**", wait_until="load")
            tab = page.get_by_role("tab", name="Release record")
            if tab.count() == 0:
                tab = page.get_by_role("link", name="Release record")
            tab.first.click()
            record = page.frame_locator("iframe[title='Release record']")
            record.locator(f"tr[data-run-id='{history.approved.run_id}']").wait_for()
            assert "approved by approver" in record.locator("#history").inner_text()
            page.screenshot(path=str(SCREENSHOTS / "release-run-tab.png"), full_page=True)

            page.goto(f"{url}/plugin/release-history", wait_until="load")
            frame.locator("#outcome").select_option("rolled-back")
            frame.locator("#history tr[data-outcome='rolled-back']").first.wait_for()
            assert frame.locator("#history tr[data-run-id]").count() == 1
            page.screenshot(path=str(SCREENSHOTS / "release-history-rolled-back.png"), full_page=True)

            page.goto(f"{url}/plugin/resource-router", wait_until="load")
            router = page.frame_locator("iframe[title='Resource router']")
            router.locator("#cap table, #cap i").first.wait_for()
            assert re.search(r"\b1[0-9]{9}\b", router.locator("body").inner_text()) is None  # no epoch seconds
            page.screenshot(path=str(SCREENSHOTS / "resource-router.png"), full_page=True)
        finally:
            browser.close()


def test_pipeline_metrics_count_the_releases_and_name_the_serving_version(history: History) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    r = history.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    model = history.dep.model_name
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    assert got[("mlops_releases", (("model", model), ("outcome", "promoted")))] == 2
    assert got[("mlops_releases", (("model", model), ("outcome", "rolled-back")))] == 1
    assert got[("mlops_serving_version", (("model", model),))] == float(history.versions["approved"])
    assert got[("mlops_canary_weight_percent", (("model", model),))] == 0  # the faulty canary is gone
    assert history.get("/metrics", user=None).status_code == 401


def test_a_rolled_back_release_sends_exactly_one_alert_naming_version_and_reason(history: History) -> None:
    version, run_id = history.versions["faulty"], history.rolled_back.run_id
    what = f"{history.dep.model_name} v{version}: release rolled back"
    record = f"{history.api.url}/release-history/ui/runs/{run_id.replace(':', '%3A').replace('+', '%2B')}"
    assert len(history.alerts.mails) == 1, history.alerts.mails  # the promoted releases sent none
    import email
    import email.policy

    mail = email.message_from_string(history.alerts.mails[0], policy=email.policy.default)
    assert mail["Subject"] == f"[mlops] {what}" and mail["To"] == "mlops@example.org"
    body = mail.get_content()  # type: ignore[attr-defined]
    lines = body.splitlines()
    assert lines[0] == what and lines[1].startswith("why: ") and "canary error rate 100.0% > max" in lines[1]
    assert lines[2] == f"record: {record}"
    assert len(history.alerts.posts) == 1
    post = history.alerts.posts[0]
    assert post["text"] == "\n".join(lines[:3])  # the same three lines as the mail
    # the webhook's secret (its URL path) reaches the receiver, and no log
    assert post["path"].endswith(WEBHOOK_SECRET) and WEBHOOK_SECRET not in history.rolled_back.log
