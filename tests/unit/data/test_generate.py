"""The synthetic transaction generator: shape, dtypes, ids, determinism, learnable label, drift, corruption."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.stats import rankdata

from include.mlops.data.features import encode_features, holdout_mask
from include.mlops.data.generate import CORRUPTIONS, fraud_logit, generate_batch, write_batch, write_reference
from include.mlops.data.schema import (
    BOOLEAN_FEATURES,
    CATEGORICAL_FEATURES,
    COLUMNS,
    ID_COLUMN,
    LABEL_COLUMN,
    NUMERIC_FEATURES,
    TIME_COLUMN,
)

ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def batch() -> pd.DataFrame:
    return generate_batch(20_000, seed=11, batch_date="2026-11-03")


def auc(y: np.ndarray, score: np.ndarray) -> float:
    r = rankdata(score)
    n1 = int(y.sum())
    n0 = len(y) - n1
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def test_batch_has_schema_columns_in_order_with_declared_dtypes(batch: pd.DataFrame) -> None:
    assert tuple(batch.columns) == COLUMNS
    assert len(batch) == 20_000
    for col, (dtype, _) in NUMERIC_FEATURES.items():
        assert str(batch[col].dtype) == dtype, col
    for col in (*BOOLEAN_FEATURES, LABEL_COLUMN):
        assert batch[col].dtype == bool, col
    for col in (ID_COLUMN, *CATEGORICAL_FEATURES):
        assert str(batch[col].dtype) == "str", col
    assert isinstance(batch[TIME_COLUMN].dtype, pd.DatetimeTZDtype)
    assert str(batch[TIME_COLUMN].dtype.tz) == "UTC"
    assert not batch.isna().any().any()


def test_values_respect_schema_ranges_and_vocabularies(batch: pd.DataFrame) -> None:
    for col, (_, (lo, hi)) in NUMERIC_FEATURES.items():
        assert batch[col].between(lo, hi).all(), col
    for col, vocab in CATEGORICAL_FEATURES.items():
        assert set(batch[col].unique()) <= set(vocab), col
    # Timestamps fall on the batch date and agree with hour_of_day.
    assert (batch[TIME_COLUMN].dt.strftime("%Y-%m-%d") == "2026-11-03").all()
    assert (batch[TIME_COLUMN].dt.hour == batch["hour_of_day"]).all()


def test_ids_are_unique_within_and_across_dates_and_seeds(batch: pd.DataFrame) -> None:
    assert batch[ID_COLUMN].is_unique
    other_day = generate_batch(2_000, seed=11, batch_date="2026-11-04")
    other_seed = generate_batch(2_000, seed=12, batch_date="2026-11-03")
    ids = set(batch[ID_COLUMN])
    assert ids.isdisjoint(other_day[ID_COLUMN])
    assert ids.isdisjoint(other_seed[ID_COLUMN])


def test_same_seed_gives_identical_batches_and_another_seed_differs() -> None:
    a = generate_batch(3_000, seed=5)
    b = generate_batch(3_000, seed=5)
    c = generate_batch(3_000, seed=6)
    pd.testing.assert_frame_equal(a, b)
    assert not np.array_equal(a["amount"].to_numpy(), c["amount"].to_numpy())


def test_fraud_rate_is_a_few_percent(batch: pd.DataFrame) -> None:
    assert 0.02 <= batch[LABEL_COLUMN].mean() <= 0.05


def test_label_is_learnable_but_not_perfectly(batch: pd.DataFrame) -> None:
    y = batch[LABEL_COLUMN].to_numpy()
    # The best possible score (the noiseless true logit) stays well below AUC 1.
    assert 0.85 <= auc(y, fraud_logit(batch)) <= 0.97

    # A plain logistic regression on the encoded features (log-scaled money/distance) learns most of it.
    x = encode_features(batch).astype(np.float64)
    x[:, 0] = np.log1p(x[:, 0])
    x[:, 4] = np.log1p(x[:, 4])
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    x = np.hstack([x, np.ones((len(x), 1))])
    test = holdout_mask(batch, 0.3)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = x[~test] @ w
        p = 1 / (1 + np.exp(-z))
        yt = y[~test]
        nll = np.sum(np.logaddexp(0, z) - yt * z) + 0.5 * w @ w
        return float(nll), x[~test].T @ (p - yt) + w

    w = minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B").x
    assert auc(y[test], x[test] @ w) >= 0.83


def test_drift_moves_amount_online_share_and_country_mix() -> None:
    base = generate_batch(20_000, seed=3)
    drifted = generate_batch(20_000, seed=3, drift=0.5)
    assert drifted["amount"].mean() > 1.3 * base["amount"].mean()
    assert drifted["is_online"].mean() > base["is_online"].mean() + 0.1
    assert (drifted["country"] == "OTHER").mean() > (base["country"] == "OTHER").mean() + 0.05


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_each_corruption_breaks_the_batch_its_named_way(kind: str) -> None:
    df = generate_batch(2_000, seed=1, corruption=kind)
    if kind == "nulls":
        assert df["amount"].isna().sum() == 20
        assert df["merchant_category"].isna().sum() == 20
    elif kind == "duplicate_ids":
        assert df[ID_COLUMN].duplicated().any()
    elif kind == "out_of_range":
        assert (df["amount"] < 0).sum() == 20
        assert (df["hour_of_day"] > 23).sum() == 20
    elif kind == "wrong_types":
        assert str(df["amount"].dtype) == "str"
        assert str(df["customer_age"].dtype) == "float64"
    elif kind == "missing_column":
        assert "distance_from_home_km" not in df.columns
        assert len(df.columns) == len(COLUMNS) - 1
    elif kind == "all_null_column":
        assert df["country"].isna().all()
    elif kind == "bad_category":
        assert (df["merchant_category"] == "crypto_exchange").sum() == 20


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"n_rows": 0}, "n_rows=0"),
        ({"drift": 1.5}, "drift=1.5"),
        ({"corruption": "zebra"}, "corruption='zebra'"),
        ({"batch_date": "01/11/2026"}, "batch_date='01/11/2026'"),
    ],
)
def test_invalid_arguments_are_rejected_with_the_value(kwargs: dict, needle: str) -> None:
    args = {"n_rows": 10, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=__import__("re").escape(needle)):
        generate_batch(**args)


def test_write_batch_names_the_file_by_date_and_leaves_no_temp_files(tmp_path) -> None:
    path = write_batch(tmp_path / "landing", "2026-11-05", n_rows=500, seed=2)
    assert path == tmp_path / "landing" / "transactions_2026-11-05.parquet"
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    back = pd.read_parquet(path)
    pd.testing.assert_frame_equal(back, generate_batch(500, 2, batch_date="2026-11-05"))


def test_write_reference_writes_a_clean_batch(tmp_path) -> None:
    path = write_reference(tmp_path / "ref.parquet", seed=0, n_rows=1_000)
    df = pd.read_parquet(path)
    assert len(df) == 1_000
    assert tuple(df.columns) == COLUMNS


def test_cli_writes_the_batch_and_prints_its_path(tmp_path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "include.mlops.data.generate",
            "--landing",
            str(tmp_path),
            "--date",
            "2026-11-06",
            "--rows",
            "300",
            "--corrupt",
            "bad_category",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=True,
    )
    path = tmp_path / "transactions_2026-11-06.parquet"
    assert out.stdout.strip() == str(path)
    assert (pd.read_parquet(path)["merchant_category"] == "crypto_exchange").sum() == 3


def test_cli_rejects_a_bad_date_without_a_traceback(tmp_path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "include.mlops.data.generate", "--landing", str(tmp_path), "--date", "tomorrow"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert "batch_date='tomorrow'" in out.stderr
    assert "Traceback" not in out.stderr
