"""What Airflow's side imports from training/evaluation pulls in no torch, pandas or onnxruntime."""

from __future__ import annotations

import json
import subprocess
import sys

from include.mlops.training.runner import repo_root


def test_airflow_side_modules_import_without_heavy_libraries() -> None:
    code = (
        "import json, sys\n"
        "import include.mlops.training.config, include.mlops.training.runner\n"
        "import include.mlops.training.launch, include.mlops.airflow.training_operator\n"
        "import include.mlops.evaluation.metrics, include.mlops.evaluation.onnx_eval\n"
        "heavy = ('torch', 'pandas', 'numpy', 'onnxruntime', 'onnx', 'mlflow')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_root(), capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == []
