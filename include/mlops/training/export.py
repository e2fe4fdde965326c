"""The trained model as ONNX: the exported graph (logit model + sigmoid), and its check against torch.

The graph's input and output names are the contract with the evaluator and the model server.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

INPUT_NAME = "features"
OUTPUT_NAME = "probability"
ONNX_OPSET = 18
ONNX_CHECK_ATOL = 1e-4
_EVAL_BATCH_ROWS = 65_536


def with_probability_output(model: torch.nn.Module) -> torch.nn.Module:
    """The logit model plus a sigmoid, output [batch, 1]: the graph that gets exported."""
    import torch

    class ProbabilityModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.model(features)).unsqueeze(-1)

    return ProbabilityModel()


def predict_proba(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        parts = [
            torch.sigmoid(model(x[i : i + _EVAL_BATCH_ROWS]).float()).cpu() for i in range(0, len(x), _EVAL_BATCH_ROWS)
        ]
    scores: np.ndarray = torch.cat(parts).numpy()
    return scores


def export_onnx(model: torch.nn.Module, path: Path, example: torch.Tensor) -> None:
    import torch

    model = model.cpu().eval()
    exported = with_probability_output(model).eval()
    tmp = path.with_name(f".{path.name}.tmp")
    # The TorchScript exporter (dynamo=False) exports this plain MLP exactly in ~0.5 s;
    # dynamo=True also works offline with torch 2.13 + onnxscript but takes ~5 s more per run.
    # Its deprecation warning is expected with that choice, so it is not shown in task logs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            exported,
            (example.cpu(),),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    os.replace(tmp, path)


def check_onnx(path: Path, model: torch.nn.Module, x: np.ndarray) -> dict[str, Any]:
    """Compare ONNX Runtime with torch on real rows; raises if they disagree beyond atol."""
    import numpy as np
    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        return {"checked": False, "reason": "onnxruntime not installed in the training env"}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0].reshape(-1)
    want = predict_proba(model.cpu(), torch.from_numpy(x))
    diff = float(np.max(np.abs(got - want))) if len(x) else 0.0
    if not diff <= ONNX_CHECK_ATOL:
        raise RuntimeError(
            f"exported ONNX model disagrees with torch by {diff:.3g} (> {ONNX_CHECK_ATOL}) on {len(x)} rows"
        )
    return {"checked": True, "rows": len(x), "max_abs_diff": diff, "atol": ONNX_CHECK_ATOL}
