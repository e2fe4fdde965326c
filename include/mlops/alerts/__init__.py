"""Alerts for the events that matter (a failed or rolled-back release): one line saying what
happened, why, and a link to the release record; sent by SMTP and to a Slack-compatible webhook.

No Airflow here: the notifier in include/mlops/airflow/alerts.py reads the channels' Connections.
"""
