"""The alert message and the channels that deliver it (SMTP, Slack-compatible webhook).

Errors name the channel by host only: a webhook URL carries its secret in the path, a mail server
its password; neither may reach a log or an exception message.
"""

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import urlsplit

from include.mlops.errors import AlertDeliveryError


@dataclass(frozen=True)
class Alert:
    what: str  # one line: what happened
    why: str
    link: str  # the release record

    def text(self) -> str:
        return f"{self.what}\nwhy: {self.why}\nrecord: {self.link}"


def release_alert(*, model: str, version: str, outcome: str, reason: str, record_url: str) -> Alert:
    return Alert(what=f"{model} v{version}: release {outcome}", why=reason, link=record_url)


@dataclass(frozen=True)
class SmtpChannel:
    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    user: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout_s: float = 10.0

    def send(self, alert: Alert) -> None:
        msg = EmailMessage()
        msg["Subject"] = f"[mlops] {alert.what}"
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg.set_content(alert.text() + "\n")
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.user and self.password:
                    smtp.login(self.user, self.password)
                smtp.send_message(msg)
        except (OSError, smtplib.SMTPException) as e:
            raise AlertDeliveryError(
                f"SMTP server {self.host}:{self.port} did not take the alert: {type(e).__name__}"
            ) from None


@dataclass(frozen=True)
class WebhookChannel:
    url: str
    timeout_s: float = 10.0

    def send(self, alert: Alert) -> None:
        import httpx

        host = urlsplit(self.url).netloc.rsplit("@", 1)[-1]  # never the path: it holds the secret
        try:
            r = httpx.post(self.url, json={"text": alert.text()}, timeout=self.timeout_s)
        except httpx.HTTPError as e:
            raise AlertDeliveryError(f"webhook at {host} did not answer: {type(e).__name__}") from None
        if r.status_code >= 300:
            raise AlertDeliveryError(f"webhook at {host} refused the alert: HTTP {r.status_code}")
