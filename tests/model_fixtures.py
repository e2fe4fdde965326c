"""Small ONNX models built with onnx.helper for the serving, deploy and canary tests.

A good logistic regression, a "faulty" one whose graph fails at run time on
real input, a "slow" one that does real extra compute, one that cannot load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from include.mlops.data.schema import N_FEATURES

OPSET = 17


def _weights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # small weights so raw (unscaled) amounts do not saturate the sigmoid everywhere
    w = (rng.normal(0.0, 1.0, size=(N_FEATURES, 1)) * 1e-3).astype(np.float32)
    b = np.array([-1.0], dtype=np.float32)
    return w, b


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _io() -> tuple[onnx.ValueInfoProto, onnx.ValueInfoProto]:
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", N_FEATURES])
    y = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])
    return x, y


def build_logistic_model(path: Path, seed: int = 0) -> Path:
    """probability = sigmoid(features @ w + b); fixed weights from the seed."""
    w, b = _weights(seed)
    x, y = _io()
    nodes = [
        helper.make_node("MatMul", ["features", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    return _save(helper.make_graph(nodes, "logistic", [x], [y], inits), path)


def build_faulty_model(path: Path) -> Path:
    """Declares the right input, loads fine, but reshapes to N_FEATURES+1 columns: every run fails."""
    x, y = _io()
    w = np.zeros((N_FEATURES + 1, 1), dtype=np.float32)
    shape = np.array([-1, N_FEATURES + 1], dtype=np.int64)
    nodes = [
        helper.make_node("Reshape", ["features", "shape"], ["wrong"]),
        helper.make_node("MatMul", ["wrong", "w"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(shape, "shape")]
    return _save(helper.make_graph(nodes, "faulty", [x], [y], inits), path)


def build_slow_model(path: Path, seed: int = 0, size: int = 320, layers: int = 4) -> Path:
    """Same predictions as build_logistic_model(seed), plus a chain of size x size MatMuls.

    The chain starts from a matrix derived from the input, so ONNX Runtime cannot
    constant-fold it away; its result is multiplied by zero (finite thanks to Tanh).
    """
    w, b = _weights(seed)
    rng = np.random.default_rng(seed + 1)
    base = (rng.normal(0.0, 1.0, size=(size, size))).astype(np.float32)
    mats = [(rng.normal(0.0, 1.0, size=(size, size)) / np.sqrt(size)).astype(np.float32) for _ in range(layers)]
    x, y = _io()
    nodes = [
        helper.make_node("MatMul", ["features", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["logit0"]),
        helper.make_node("ReduceMean", ["features"], ["mean_in"], keepdims=0),
        helper.make_node("Mul", ["mean_in", "tiny"], ["seed_val"]),
        helper.make_node("Add", ["base", "seed_val"], ["h0"]),
    ]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"m{i}"], [f"p{i}"]))
        nodes.append(helper.make_node("Tanh", [f"p{i}"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"h{layers}"], ["burn"], keepdims=0),
        helper.make_node("Mul", ["burn", "zero"], ["nothing"]),
        helper.make_node("Add", ["logit0", "nothing"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(base, "base"),
        numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "tiny"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
        *(numpy_helper.from_array(m, f"m{i}") for i, m in enumerate(mats)),
    ]
    return _save(helper.make_graph(nodes, "slow", [x], [y], inits), path)


def build_unloadable_model(path: Path) -> Path:
    """Bytes that are not an ONNX model: the server never becomes ready."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an onnx model\x00\x01")
    return path


def sample_records(n: int, seed: int = 0) -> list[dict]:
    """Raw transaction records (the /predict body shape) drawn within the schema's ranges."""
    from include.mlops.data.schema import BOOLEAN_FEATURES, CATEGORICAL_FEATURES, NUMERIC_FEATURES

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rec: dict = {"transaction_id": f"tx-{seed}-{i}"}
        for col, (dtype, (lo, hi)) in NUMERIC_FEATURES.items():
            hi_eff = min(hi, lo + 5_000) if dtype == "float64" else hi
            v = rng.uniform(lo, hi_eff)
            rec[col] = float(round(v, 2)) if dtype == "float64" else int(v)
        for col in BOOLEAN_FEATURES:
            rec[col] = bool(rng.integers(0, 2))
        for col, vocab in CATEGORICAL_FEATURES.items():
            rec[col] = str(vocab[int(rng.integers(0, len(vocab)))])
        out.append(rec)
    return out


def build_nan_model(path: Path) -> Path:
    """Loads and runs fine, but every probability is NaN (0 * x / 0): a model that must never be promoted."""
    x, y = _io()
    nodes = [
        helper.make_node("ReduceSum", ["features", "axes"], ["s"], keepdims=1),
        helper.make_node("Mul", ["s", "zero"], ["z"]),
        helper.make_node("Div", ["z", "zero"], ["probability"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
    ]
    return _save(helper.make_graph(nodes, "nan", [x], [y], inits), path)


def processes_with(fragment: str) -> list[int]:
    """Live processes whose command line contains `fragment` (e.g. a model file a server was given)."""
    from include.mlops.deploy.process import pid_alive

    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if fragment in cmd and pid_alive(int(proc.name), None):
            pids.append(int(proc.name))
    return pids
