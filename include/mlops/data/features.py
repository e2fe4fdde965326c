"""Raw transaction records -> float32 feature matrix; the deterministic holdout split.

The same encoding runs in training, evaluation and the model server, so a
model never sees features built two different ways. Scaling is not done here:
the trained network carries its own normalisation (exported inside the ONNX graph).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from include.mlops.data.schema import (
    BOOLEAN_FEATURES,
    CATEGORICAL_FEATURES,
    ID_COLUMN,
    N_FEATURES,
    NUMERIC_FEATURES,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


def encode_features(df: pd.DataFrame) -> np.ndarray:
    """Encode a frame (or the records of a /predict call) into an (n, N_FEATURES) float32 matrix.

    Unknown categories encode as all-zero one-hot rows (the model sees "none of the known").
    Raises KeyError naming the first missing column.
    """
    import numpy as np

    n = len(df)
    out = np.zeros((n, N_FEATURES), dtype=np.float32)
    j = 0
    for col in NUMERIC_FEATURES:
        out[:, j] = df[col].to_numpy(dtype=np.float32)
        j += 1
    for col in BOOLEAN_FEATURES:
        out[:, j] = df[col].to_numpy().astype(np.float32)
        j += 1
    for col, vocab in CATEGORICAL_FEATURES.items():
        values = df[col].to_numpy()
        for val in vocab:
            out[:, j] = values == val
            j += 1
    return out


_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})


def parse_bool(value: Any) -> bool:
    """A JSON boolean feature: true/false, 0/1, or one of the strings true/false/1/0/yes/no.

    Python's bool("false") is True; a record that says "false" must not encode as True.
    Raises ValueError for anything else (e.g. "maybe", 2, null).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise ValueError(f"{value!r} is not a boolean (use true/false, 0/1, or the strings true/false/yes/no)")


REQUIRED_FIELDS: tuple[str, ...] = (*NUMERIC_FEATURES, *BOOLEAN_FEATURES, *CATEGORICAL_FEATURES)


def encode_records(records: list[Any]) -> np.ndarray:
    """Encode JSON records (as posted to a model server) without building a DataFrame.

    The model server's encoder: it checks what a client can get wrong and raises ValueError
    naming the record's index and field. For valid records it gives exactly what encode_features
    gives for the same rows as a frame (a property test holds the two together).
    """
    import numpy as np

    out = np.zeros((len(records), N_FEATURES), dtype=np.float32)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"records[{i}] is {type(rec).__name__}, expected an object of raw columns")
        j = 0
        col = ""
        try:
            for col in NUMERIC_FEATURES:
                out[i, j] = float(rec[col])
                j += 1
            for col in BOOLEAN_FEATURES:
                out[i, j] = float(parse_bool(rec[col]))
                j += 1
            for col, vocab in CATEGORICAL_FEATURES.items():
                v = rec[col]
                for val in vocab:
                    out[i, j] = v == val
                    j += 1
        except KeyError as exc:
            raise ValueError(
                f"records[{i}] is missing field {exc.args[0]!r} (required: {list(REQUIRED_FIELDS)})"
            ) from None
        except (TypeError, ValueError):
            expected = 'a boolean (true/false, 0/1, "true"/"false")' if col in BOOLEAN_FEATURES else "a number"
            raise ValueError(f"records[{i}] field {col!r} is {rec.get(col)!r}, expected {expected}") from None
    return out


def in_holdout(transaction_id: str, fraction: float) -> bool:
    """Deterministic holdout membership by id hash: the same rows in every run and process."""
    h = int.from_bytes(hashlib.blake2b(transaction_id.encode(), digest_size=8).digest(), "big")
    return (h % 10_000) < fraction * 10_000


def holdout_mask(df: pd.DataFrame, fraction: float) -> np.ndarray:
    import numpy as np

    return np.fromiter((in_holdout(str(t), fraction) for t in df[ID_COLUMN]), dtype=bool, count=len(df))
