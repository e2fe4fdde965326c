"""The MLOps library the DAGs call: data quality, training, registry, build, deploy, canary, routing.

Importable and testable without Airflow; heavy dependencies are imported inside functions.
"""
