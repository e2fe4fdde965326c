"""The Airflow seam: the only package of the library that imports Airflow.

Operators, the plugin's auth, reading Connections and Variables, applying airflow_settings.yaml
to the metadata DB, and turning library outcomes (``MlopsError`` subclasses, ``CapacityWait``)
into Airflow's reschedule, skip, defer or fail. Everything else under ``include/mlops`` runs
and is tested without Airflow installed (tests/unit/test_layers.py imports it in .venv-train).
"""
