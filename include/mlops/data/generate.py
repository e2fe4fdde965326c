"""Synthetic card transactions: the batches the retrain DAG ingests and the drift reference.

Fraud is a noisy logistic function of the features (amount, distance, night hours, velocity,
online, risky merchants, unknown country, new accounts), so a model can learn it but not perfectly.
`drift` shifts the distributions; `corruption` breaks a batch in one named way for the tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from include.mlops.data.schema import (
    CATEGORICAL_FEATURES,
    COLUMNS,
    ID_COLUMN,
    LABEL_COLUMN,
    TIME_COLUMN,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = [
    "CORRUPTIONS",
    "FraudModel",
    "batch_filename",
    "ensure_reference",
    "fraud_logit",
    "generate_batch",
    "write_batch",
    "write_reference",
]

CORRUPTIONS: tuple[str, ...] = (
    "nulls",
    "duplicate_ids",
    "out_of_range",
    "wrong_types",
    "missing_column",
    "all_null_column",
    "bad_category",
)

# Shares of the non-ATM merchant categories (schema order, cash_withdrawal excluded).
_SHOP_SHARES = (0.25, 0.11, 0.18, 0.06, 0.08, 0.11, 0.04, 0.09, 0.08)
_COUNTRY_SHARES = (0.30, 0.15, 0.10, 0.10, 0.08, 0.07, 0.08, 0.07, 0.05)
# Where drift pushes the country mix: more foreign and unknown-country traffic.
_COUNTRY_DRIFT_TARGET = (0.10, 0.08, 0.06, 0.06, 0.05, 0.05, 0.10, 0.20, 0.30)
_RISKY_MERCHANTS = ("travel", "electronics", "gaming")


@dataclass(frozen=True)
class FraudModel:
    """Weights of the true (hidden) fraud logit; noise_sd keeps the best achievable AUC below 1."""

    intercept: float = -12.5
    log_amount: float = 1.1
    log1p_distance_km: float = 0.7
    night: float = 2.2
    tx_count_24h_per_10: float = 1.8
    online: float = 1.6
    risky_merchant: float = 1.8
    country_other: float = 2.4
    new_account: float = 1.6
    noise_sd: float = 0.9


def fraud_logit(df: pd.DataFrame, model: FraudModel = FraudModel()) -> np.ndarray:
    """The noiseless fraud logit of each row (the Bayes-optimal score, used to check learnability)."""
    import numpy as np

    hour = df["hour_of_day"].to_numpy()
    return np.asarray(
        model.intercept
        + model.log_amount * np.log(df["amount"].to_numpy(dtype=float) + 1.0)
        + model.log1p_distance_km * np.log1p(df["distance_from_home_km"].to_numpy(dtype=float))
        + model.night * ((hour <= 5) | (hour >= 23))
        + model.tx_count_24h_per_10 * df["tx_count_24h"].to_numpy(dtype=float) / 10.0
        + model.online * df["is_online"].to_numpy(dtype=bool)
        + model.risky_merchant * df["merchant_category"].isin(_RISKY_MERCHANTS).to_numpy()
        + model.country_other * (df["country"] == "OTHER").to_numpy()
        + model.new_account * (df["account_age_days"].to_numpy() < 90),
        dtype=float,
    )


def _check_args(n_rows: int, drift: float, corruption: str | None, batch_date: str) -> dt.date:
    if n_rows < 1:
        raise ValueError(f"n_rows={n_rows}: a batch needs at least one row")
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"drift={drift}: must be between 0 and 1")
    if corruption is not None and corruption not in CORRUPTIONS:
        raise ValueError(f"corruption={corruption!r}: known kinds are {', '.join(CORRUPTIONS)}")
    try:
        return dt.date.fromisoformat(batch_date)
    except ValueError as exc:
        raise ValueError(f"batch_date={batch_date!r}: expected YYYY-MM-DD") from exc


def generate_batch(
    n_rows: int,
    seed: int,
    drift: float = 0.0,
    *,
    corruption: str | None = None,
    batch_date: str = "2026-11-01",
) -> pd.DataFrame:
    """One day of transactions with the columns and dtypes of schema.COLUMNS.

    Ids are `tx-<YYYYMMDD>-s<seed>-<row>`: unique within a batch and across batches of other
    dates or seeds. The same (n_rows, seed, drift, corruption, batch_date) gives the same frame.
    """
    import numpy as np
    import pandas as pd

    day = _check_args(n_rows, drift, corruption, batch_date)
    rng = np.random.default_rng([seed, day.toordinal()])
    n = n_rows

    online_share = 0.35 + 0.4 * drift
    is_online = rng.random(n) < online_share
    channel = np.where(
        is_online,
        np.where(rng.random(n) < 0.55, "web", "app"),
        np.where(rng.random(n) < 0.9, "pos", "atm"),
    )
    card_present = ~is_online
    # Cash withdrawals happen at ATMs and only there.
    shops = [m for m in CATEGORICAL_FEATURES["merchant_category"] if m != "cash_withdrawal"]
    merchant = rng.choice(shops, size=n, p=_SHOP_SHARES)
    merchant = np.where(channel == "atm", "cash_withdrawal", merchant)
    country_p = (1 - drift) * np.asarray(_COUNTRY_SHARES) + drift * np.asarray(_COUNTRY_DRIFT_TARGET)
    country = rng.choice(CATEGORICAL_FEATURES["country"], size=n, p=country_p / country_p.sum())

    # Spending is log-normal; drift inflates it (a price shock, a new customer segment).
    amount = np.round(rng.lognormal(mean=3.6 + 0.9 * drift, sigma=1.0, size=n), 2)
    amount = np.clip(amount, 0.01, 50_000.0)
    home = rng.lognormal(mean=1.8, sigma=1.0, size=n)
    travelling = rng.random(n) < 0.05 + 0.15 * drift
    distance = np.where(travelling, rng.lognormal(mean=6.0, sigma=1.0, size=n), home)
    distance = np.round(np.clip(distance, 0.0, 20_000.0), 3)
    # Daytime-heavy hour profile; drift moves traffic towards the night.
    hour_w = np.array(
        [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 4, 5, 5.5, 6, 6.5, 6, 5.5, 5.5, 6, 6.5, 6.5, 6, 5, 4, 3, 2]
    )
    hour_w = hour_w + drift * 6.0 * (np.arange(24) <= 5)
    hour = rng.choice(24, size=n, p=hour_w / hour_w.sum()).astype(np.int64)
    age = np.clip(np.round(rng.normal(42 - 8 * drift, 13, size=n)), 18, 100).astype(np.int64)
    account_age = np.clip(rng.exponential(1500 * (1 - 0.5 * drift), size=n), 0, 20_000).astype(np.int64)
    tx_count = np.clip(rng.poisson(3.0 * (1 + drift), size=n), 0, 500).astype(np.int64)

    secs = hour * 3600 + rng.integers(0, 3600, size=n)
    start = pd.Timestamp(day, tz="UTC")
    event_ts = start + pd.to_timedelta(secs, unit="s")

    df = pd.DataFrame(
        {
            ID_COLUMN: [f"tx-{day:%Y%m%d}-s{seed}-{i:07d}" for i in range(n)],
            TIME_COLUMN: event_ts,
            "amount": amount,
            "customer_age": age,
            "account_age_days": account_age,
            "tx_count_24h": tx_count,
            "distance_from_home_km": distance,
            "hour_of_day": hour,
            "card_present": card_present,
            "is_online": is_online,
            "merchant_category": merchant,
            "channel": channel,
            "country": country,
        }
    )
    model = FraudModel()
    logit = fraud_logit(df, model) + rng.normal(0.0, model.noise_sd, size=n)
    df[LABEL_COLUMN] = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    for col in CATEGORICAL_FEATURES:
        df[col] = df[col].astype("str")
    df[ID_COLUMN] = df[ID_COLUMN].astype("str")
    df = df[list(COLUMNS)]
    if corruption is not None:
        df = _corrupt(df, corruption, rng)
    return df


def _corrupt(df: pd.DataFrame, kind: str, rng: np.random.Generator) -> pd.DataFrame:
    """Break the batch in one way the suite must catch; touches ~1% of rows where row-level."""
    import numpy as np
    import pandas as pd

    df = df.copy()
    n = len(df)
    rows = rng.choice(n, size=max(1, n // 100), replace=False)
    if kind == "nulls":
        df["amount"] = df["amount"].astype("float64")
        df.loc[df.index[rows], "amount"] = np.nan
        df.loc[df.index[rows], "merchant_category"] = None
    elif kind == "duplicate_ids":
        dup_from = rng.choice(n, size=len(rows), replace=True)
        df.loc[df.index[rows], ID_COLUMN] = df[ID_COLUMN].to_numpy()[dup_from]
        if df[ID_COLUMN].is_unique:  # a 1-row batch: duplicate it instead
            df = df.iloc[np.r_[np.arange(n), 0]].reset_index(drop=True)
    elif kind == "out_of_range":
        df.loc[df.index[rows], "amount"] = -5.0
        df.loc[df.index[rows], "hour_of_day"] = 27
    elif kind == "wrong_types":
        # A producer that started sending numbers as text.
        df["amount"] = df["amount"].map(lambda v: f"{v:.2f}").astype("str")
        df["customer_age"] = df["customer_age"].astype("float64")
    elif kind == "missing_column":
        df = df.drop(columns=["distance_from_home_km"])
    elif kind == "all_null_column":
        df["country"] = pd.Series(np.nan, index=df.index, dtype="str")
    elif kind == "bad_category":
        df.loc[df.index[rows], "merchant_category"] = "crypto_exchange"
    return df


def batch_filename(batch_date: str) -> str:
    """The landing-zone file name of a day's batch (latest_batch sorts by this date)."""
    return f"transactions_{batch_date}.parquet"


def _write_parquet_atomic(df: pd.DataFrame, path: Path) -> Path:
    # Readers (the DAG's asset watcher, latest_batch) must never see a half-written file.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_batch(
    landing_dir: str | Path,
    batch_date: str,
    n_rows: int = 50_000,
    *,
    seed: int = 7,
    drift: float = 0.0,
    corruption: str | None = None,
) -> Path:
    """Generate a batch and write it atomically to `<landing_dir>/transactions_<date>.parquet`."""
    df = generate_batch(n_rows, seed, drift=drift, corruption=corruption, batch_date=batch_date)
    return _write_parquet_atomic(df, Path(landing_dir) / batch_filename(batch_date))


def write_reference(path: str | Path, seed: int = 0, n_rows: int = 50_000) -> Path:
    """Write the drift reference batch the suite's reference_checks compare against."""
    df = generate_batch(n_rows, seed, batch_date="2026-10-01")
    return _write_parquet_atomic(df, Path(path))


def ensure_reference(path: str | Path, seed: int = 0, n_rows: int = 50_000) -> Path:
    """The reference batch at `path`, written first if it is not there (deterministic, so idempotent)."""
    p = Path(path)
    return p if p.is_file() else write_reference(p, seed=seed, n_rows=n_rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landing", required=True, type=Path, help="landing directory")
    parser.add_argument("--date", required=True, help="batch date, YYYY-MM-DD")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--drift", type=float, default=0.0, help="0 (none) .. 1 (strong)")
    parser.add_argument("--corrupt", choices=CORRUPTIONS, default=None)
    args = parser.parse_args(argv)
    try:
        path = write_batch(
            args.landing, args.date, args.rows, seed=args.seed, drift=args.drift, corruption=args.corrupt
        )
    except ValueError as exc:
        parser.error(str(exc))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
