"""The Airflow Assets that connect the DAGs: a landed data batch, a challenger ready to release.

Names only (no Airflow import): the DAG files build `Asset(...)` objects from these.
"""

TRANSACTIONS_LANDING = "transactions_landing"
MODEL_CHALLENGER_READY = "model_challenger_ready"
