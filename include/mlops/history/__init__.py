"""Release history: one record per release, assembled on request from Airflow's run facts and
MLflow's version facts (the two places the pipeline records them); nothing is copied or cached.

No Airflow import here: the Airflow side (plugins/release_history.py) reads runs from the metadata
DB and passes them in as ``ReleaseRunFacts``.
"""
