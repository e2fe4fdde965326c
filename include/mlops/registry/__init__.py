"""The model registry: MLflow runs, versions, aliases, and the champion/challenger gate."""
