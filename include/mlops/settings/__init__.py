"""Project settings: the Astro `airflow_settings.yaml` loader and the profile the DAGs run on."""
