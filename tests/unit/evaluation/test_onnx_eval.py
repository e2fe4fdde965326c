"""evaluate_onnx on a hand-built ONNX logistic model: same holdout rows, same numbers as numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper, numpy_helper

from include.mlops.data.features import encode_features, holdout_mask
from include.mlops.data.generate import generate_batch
from include.mlops.data.schema import LABEL_COLUMN, N_FEATURES
from include.mlops.errors import BatchReadError
from include.mlops.evaluation.metrics import binary_metrics
from include.mlops.evaluation.onnx_eval import ModelLoadError, evaluate_models, evaluate_onnx, predict_onnx


def _logistic_onnx(path: Path, w: np.ndarray, b: float, input_name: str = "features") -> Path:
    """probability[batch, 1] = sigmoid(features @ w + b), the shape the trainer exports."""
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", [input_name, "w"], ["z"]),
            helper.make_node("Add", ["z", "b"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["probability"]),
        ],
        "logistic",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", N_FEATURES])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            numpy_helper.from_array(w.reshape(N_FEATURES, 1).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([b], dtype=np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def batch() -> pd.DataFrame:
    return generate_batch(3000, seed=11)


def _weights(seed: int, batch: pd.DataFrame) -> np.ndarray:
    # Scaled by each feature's spread so logits stay moderate: a saturated float32 sigmoid
    # would tie many scores at exactly 0 or 1 and make the float64 reference rank differently.
    scale = encode_features(batch).std(axis=0) + 1.0
    return np.random.default_rng(seed).normal(0, 0.5, N_FEATURES) / scale


def test_evaluate_onnx_scores_exactly_the_holdout_rows(tmp_path: Path, batch: pd.DataFrame) -> None:
    w = _weights(0, batch)
    model = _logistic_onnx(tmp_path / "m.onnx", w, -1.0)
    got = evaluate_onnx(model, batch, 0.25)

    mask = holdout_mask(batch, 0.25)
    x = encode_features(batch[mask]).astype(np.float64)
    p = 1 / (1 + np.exp(-(x @ w - 1.0)))
    want = binary_metrics(batch.loc[mask, LABEL_COLUMN].to_numpy(), p)
    assert got.n_holdout == int(mask.sum()) == want["n"]
    assert 0 < got.n_holdout < len(batch)
    assert got.auc == pytest.approx(want["auc"], abs=1e-6)
    assert got.log_loss == pytest.approx(want["log_loss"], rel=1e-4)
    assert got.accuracy == pytest.approx(want["accuracy"])


def test_evaluate_models_compares_on_the_same_rows(tmp_path: Path, batch: pd.DataFrame) -> None:
    a = _logistic_onnx(tmp_path / "a.onnx", _weights(1, batch), 0.0)
    b = _logistic_onnx(tmp_path / "b.onnx", _weights(2, batch), 0.5)
    both = evaluate_models({"challenger": a, "champion": b}, batch, 0.2)
    assert both["challenger"] == evaluate_onnx(a, batch, 0.2)
    assert both["champion"] == evaluate_onnx(b, batch, 0.2)
    assert both["challenger"].n_holdout == both["champion"].n_holdout


def test_predict_onnx_handles_a_free_batch_dimension(tmp_path: Path) -> None:
    model = _logistic_onnx(tmp_path / "m.onnx", np.zeros(N_FEATURES), 0.0)
    for n in (1, 7):
        p = predict_onnx(model, np.ones((n, N_FEATURES), dtype=np.float32))
        assert p.shape == (n,) and np.allclose(p, 0.5)


def test_missing_or_wrong_model_raises_model_load_error(tmp_path: Path, batch: pd.DataFrame) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        evaluate_onnx(tmp_path / "nope.onnx", batch, 0.2)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load"):
        evaluate_onnx(tmp_path / "junk.onnx", batch, 0.2)
    wrong = _logistic_onnx(tmp_path / "w.onnx", np.zeros(N_FEATURES), 0.0, input_name="x")
    with pytest.raises(ModelLoadError, match=r"takes inputs \['x'\]; expected \['features'\]"):
        evaluate_onnx(wrong, batch, 0.2)


def test_batch_without_label_or_holdout_rows_raises(tmp_path: Path, batch: pd.DataFrame) -> None:
    model = _logistic_onnx(tmp_path / "m.onnx", np.zeros(N_FEATURES), 0.0)
    with pytest.raises(BatchReadError, match="no label column 'is_fraud'"):
        evaluate_onnx(model, batch.drop(columns=[LABEL_COLUMN]), 0.2)
    with pytest.raises(BatchReadError, match="selects no rows"):
        evaluate_onnx(model, batch.head(3), 0.0001)
    with pytest.raises(ValueError, match=r"holdout_fraction=1\.5"):
        evaluate_onnx(model, batch, 1.5)
