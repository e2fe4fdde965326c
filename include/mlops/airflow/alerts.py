"""The release's alert notifier: when a release ends failed or rolled back, one alert (what, why,
a link to its release record) goes to every channel a Connection configures.

Connections (absent = channel off): ``mlops_alerts_smtp`` (host, port, login/password; extra
``{"from": ..., "to": "a@x, b@y", "starttls": false}``) and ``mlops_alerts_webhook`` (a
Slack-compatible incoming webhook: the whole URL in the password field, which Airflow masks; the
host field for a URL without a secret).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk.bases.notifier import BaseNotifier

if TYPE_CHECKING:
    from include.mlops.alerts.channels import SmtpChannel, WebhookChannel

log = logging.getLogger(__name__)

SMTP_CONN_ID = "mlops_alerts_smtp"
WEBHOOK_CONN_ID = "mlops_alerts_webhook"


def _connection(conn_id: str) -> Any | None:
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def alert_channels() -> list[SmtpChannel | WebhookChannel]:
    from include.mlops.alerts.channels import SmtpChannel, WebhookChannel

    channels: list[SmtpChannel | WebhookChannel] = []
    smtp = _connection(SMTP_CONN_ID)
    if smtp is not None:
        extra = smtp.extra_dejson
        recipients = tuple(a.strip() for a in str(extra.get("to", "")).split(",") if a.strip())
        channels.append(
            SmtpChannel(
                host=smtp.host,
                port=int(smtp.port or 25),
                sender=str(extra.get("from", "mlops@localhost")),
                recipients=recipients,
                user=smtp.login or None,
                password=smtp.password or None,
                starttls=bool(extra.get("starttls", False)),
            )
        )
    hook = _connection(WEBHOOK_CONN_ID)
    if hook is not None:
        channels.append(WebhookChannel(url=hook.password or hook.host))
    return channels


class ReleaseAlertNotifier(BaseNotifier):
    """on_failure_callback of the release's rollback task (it fails exactly when a release did not happen)."""

    template_fields = ()

    def notify(self, context: Any) -> None:
        from airflow.configuration import conf

        from include.mlops.airflow.config import project_settings
        from include.mlops.alerts.channels import release_alert
        from include.mlops.errors import MlopsError
        from include.mlops.registry.mlflow_registry import MlflowRegistry

        channels = alert_channels()
        if not channels:
            log.info("no alert channel configured (connections %s, %s)", SMTP_CONN_ID, WEBHOOK_CONN_ID)
            return
        dag_run = context["dag_run"]
        plan = context["ti"].xcom_pull(task_ids="check_params")
        base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
        record = f"{base}/release-history/ui/runs/{quote(dag_run.run_id, safe='')}"
        if not plan:
            model, version, outcome = str(dag_run.conf.get("model_name", "?")), "?", "refused"
            reason = "check_params refused the params: nothing was built or deployed"
        else:
            model, version, outcome = plan["model_name"], plan["version"], "rolled back"
            tags: dict[str, str] = {}
            try:
                tags = MlflowRegistry(project_settings().mlflow_tracking_uri).get_version(model, version).tags
            except MlopsError as e:
                log.warning("alert without MLflow's reason: %s", e)
            if tags.get("canary.verdict") == "failed" and tags.get("canary.reason"):
                reason = tags["canary.reason"]
            elif tags.get("release.status") == "rejected" and tags.get("release.reason"):
                reason = tags["release.reason"]
            else:  # e.g. an approver rejected it, or a task failed before any verdict
                reason = "no canary verdict failed it: an approver rejected it or a task failed (see the record)"
        alert = release_alert(model=model, version=version, outcome=outcome, reason=reason, record_url=record)
        for channel in channels:
            try:
                channel.send(alert)
            except MlopsError as e:  # one channel down must not silence the others
                log.error("alert not delivered: %s", e)
        log.info("alert sent to %d channel(s): %s", len(channels), alert.what)
