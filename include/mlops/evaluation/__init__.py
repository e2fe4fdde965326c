"""Evaluation: binary-classification metrics and holdout scoring of exported ONNX models.

numpy/scipy/onnxruntime only, so it runs in Airflow's environment and in training alike.
"""
