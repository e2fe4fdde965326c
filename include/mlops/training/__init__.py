"""Training: the config and result shapes, the PyTorch entrypoint, and the runner that starts it.

Only `config` and `runner` are safe to import from Airflow's environment; `train` needs torch.
"""
