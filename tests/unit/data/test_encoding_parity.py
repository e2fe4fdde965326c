"""One encoder for training and serving: any valid record encodes the same through the frame path
(training, evaluation: encode_features on a DataFrame read from parquet) and the records path (the
model server: encode_records on the posted JSON). A skew here is a model judged on other inputs
than it was trained on, so the property is checked over generated records, not a fixed sample."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from include.mlops.data.features import encode_features, encode_records
from include.mlops.data.schema import BOOLEAN_FEATURES, CATEGORICAL_FEATURES, NUMERIC_FEATURES


def _numeric(dtype: str, lo: float, hi: float) -> st.SearchStrategy[float | int]:
    if dtype == "int64":
        return st.integers(int(lo), int(hi))
    return st.floats(lo, hi, allow_nan=False, width=64)


# valid records: values in the schema's ranges and types; categories include unknown ones, which
# both paths must encode as "none of the known" (an all-zero one-hot block)
RECORD = st.fixed_dictionaries(
    {
        **{c: _numeric(dtype, *rng) for c, (dtype, rng) in NUMERIC_FEATURES.items()},
        **{c: st.booleans() for c in BOOLEAN_FEATURES},
        **{c: st.sampled_from((*vocab, "unknown-value")) for c, vocab in CATEGORICAL_FEATURES.items()},
    }
)


@settings(max_examples=200, deadline=None)
@given(st.lists(RECORD, min_size=1, max_size=20))
def test_the_frame_and_the_records_paths_encode_any_valid_record_identically(records: list[dict]) -> None:
    frame = pd.DataFrame.from_records(records)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)  # the training path reads a parquet batch
    from_batch = encode_features(pd.read_parquet(io.BytesIO(buf.getvalue())))
    served = encode_records(records)
    np.testing.assert_array_equal(from_batch, served)
    # each category's one-hot block holds exactly one 1 for a known value and none for an unknown one
    j = len(NUMERIC_FEATURES) + len(BOOLEAN_FEATURES)
    for col, vocab in CATEGORICAL_FEATURES.items():
        known = np.array([r[col] in vocab for r in records], dtype=np.float32)
        np.testing.assert_array_equal(served[:, j : j + len(vocab)].sum(axis=1), known)
        j += len(vocab)
