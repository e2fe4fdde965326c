"""Alert channels against real loopback receivers: an aiosmtpd SMTP server and an HTTP webhook.

A refusing or absent receiver is an AlertDeliveryError naming the host only, never the webhook's
secret path or the SMTP password.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from include.mlops.alerts.channels import SmtpChannel, WebhookChannel, release_alert
from include.mlops.errors import AlertDeliveryError
from tests.conftest import free_port

ALERT = release_alert(
    model="fraud-detector", version="7", outcome="rolled back", reason="canary error rate 100.0% > max 2.0%",
    record_url="http://127.0.0.1:8080/release-history/ui/runs/manual__1",
)  # fmt: skip


@pytest.fixture()
def smtp() -> Iterator[tuple[int, list[Any]]]:
    from aiosmtpd.controller import Controller

    got: list[Any] = []

    class Inbox:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            got.append(envelope)
            return "250 OK"

    controller = Controller(Inbox(), hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller.port, got
    controller.stop()


@pytest.fixture()
def webhook() -> Iterator[tuple[str, list[bytes], list[int]]]:
    bodies: list[bytes] = []
    status = [200]

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(status[0])
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/SECRET-PATH", bodies, status
    server.shutdown()


def test_an_alert_mail_has_one_subject_line_the_reason_and_the_record_link(smtp: tuple[int, list[Any]]) -> None:
    port, got = smtp
    SmtpChannel("127.0.0.1", port, "airflow@example.org", ("a@example.org", "b@example.org")).send(ALERT)
    assert len(got) == 1 and got[0].rcpt_tos == ["a@example.org", "b@example.org"]
    text = got[0].content.decode()
    assert "Subject: [mlops] fraud-detector v7: release rolled back" in text
    assert "why: canary error rate 100.0% > max 2.0%" in text and "record: http://127.0.0.1:8080/" in text


def test_a_webhook_gets_slack_compatible_json(webhook: tuple[str, list[bytes], list[int]]) -> None:
    import json

    url, bodies, _ = webhook
    WebhookChannel(url).send(ALERT)
    assert json.loads(bodies[0]) == {"text": ALERT.text()}
    assert ALERT.text().splitlines()[0] == "fraud-detector v7: release rolled back"


def test_a_refusing_webhook_is_an_error_naming_the_host_not_the_secret(
    webhook: tuple[str, list[bytes], list[int]],
) -> None:
    url, _, status = webhook
    status[0] = 403
    with pytest.raises(AlertDeliveryError, match=r"webhook at 127\.0\.0\.1:\d+ refused the alert: HTTP 403") as e:
        WebhookChannel(url).send(ALERT)
    assert "SECRET-PATH" not in str(e.value)


def test_an_smtp_server_that_is_not_there_is_an_error_without_the_password() -> None:
    port = free_port()  # nothing listens there
    channel = SmtpChannel("127.0.0.1", port, "a@x", ("b@x",), user="u", password="hunter2", timeout_s=2)
    with pytest.raises(AlertDeliveryError, match=f"SMTP server 127.0.0.1:{port} did not take the alert") as e:
        channel.send(ALERT)
    assert "hunter2" not in str(e.value)
