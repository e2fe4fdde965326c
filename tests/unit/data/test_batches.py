"""read_batch's errors for each way a batch can be unusable; latest_batch; fingerprint."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import pytest

from include.mlops.data.batches import (
    EmptyBatchError,
    MissingBatchError,
    UnreadableBatchError,
    fingerprint,
    latest_batch,
    read_batch,
)
from include.mlops.data.generate import generate_batch
from include.mlops.errors import BatchReadError


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_batch(400, seed=4)


def test_parquet_round_trip_keeps_values_and_dtypes(tmp_path: Path, frame: pd.DataFrame) -> None:
    p = tmp_path / "transactions_2026-11-01.parquet"
    frame.to_parquet(p, index=False)
    pd.testing.assert_frame_equal(read_batch(p), frame)


def test_csv_round_trip_parses_timestamps_as_utc(tmp_path: Path, frame: pd.DataFrame) -> None:
    p = tmp_path / "transactions_2026-11-01.csv"
    frame.to_csv(p, index=False)
    back = read_batch(p)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert str(back["event_ts"].dtype.tz) == "UTC"
    assert str(back["amount"].dtype) == "float64"
    assert back["is_online"].dtype == bool


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    p = tmp_path / "nope.parquet"
    with pytest.raises(MissingBatchError, match=r"nope.parquet does not exist"):
        read_batch(p)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_zero_byte_file_is_an_empty_batch(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"b{suffix}"
    p.touch()
    with pytest.raises(EmptyBatchError, match="0 bytes"):
        read_batch(p)


def test_header_only_csv_is_an_empty_batch(tmp_path: Path, frame: pd.DataFrame) -> None:
    p = tmp_path / "b.csv"
    frame.head(0).to_csv(p, index=False)
    with pytest.raises(EmptyBatchError, match="0 rows"):
        read_batch(p)


def test_whitespace_only_csv_is_an_empty_batch(tmp_path: Path) -> None:
    p = tmp_path / "b.csv"
    p.write_text("\n\n  \n")
    with pytest.raises(EmptyBatchError, match="no header"):
        read_batch(p)


def test_parquet_with_zero_rows_is_an_empty_batch(tmp_path: Path, frame: pd.DataFrame) -> None:
    p = tmp_path / "b.parquet"
    frame.head(0).to_parquet(p, index=False)
    with pytest.raises(EmptyBatchError, match="0 rows"):
        read_batch(p)


def test_truncated_parquet_is_unreadable_and_chains_the_cause(tmp_path: Path, frame: pd.DataFrame) -> None:
    good = tmp_path / "good.parquet"
    frame.to_parquet(good, index=False)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UnreadableBatchError, match=r"bad.parquet is not a readable parquet file") as info:
        read_batch(bad)
    assert info.value.__cause__ is not None


def test_csv_with_ragged_rows_is_unreadable(tmp_path: Path) -> None:
    p = tmp_path / "b.csv"
    p.write_text("a,b\n1,2\n3,4,5,6\n")
    with pytest.raises(UnreadableBatchError, match=r"not a readable CSV file .*ParserError"):
        read_batch(p)


def test_binary_file_named_csv_is_unreadable(tmp_path: Path, frame: pd.DataFrame) -> None:
    p = tmp_path / "b.csv"
    frame.to_parquet(p, index=False)  # parquet bytes under a .csv name
    with pytest.raises(UnreadableBatchError, match="not a UTF-8 text CSV"):
        read_batch(p)


def test_unknown_extension_is_rejected_before_reading(tmp_path: Path) -> None:
    p = tmp_path / "b.json"
    p.write_text("{}")
    with pytest.raises(UnreadableBatchError, match=r"unknown file kind '\.json'"):
        read_batch(p)


def test_every_read_error_is_a_batch_read_error() -> None:
    for cls in (MissingBatchError, EmptyBatchError, UnreadableBatchError):
        assert issubclass(cls, BatchReadError)


def test_latest_batch_goes_by_the_date_in_the_name_not_mtime(tmp_path: Path) -> None:
    for name in ("transactions_2026-11-03.parquet", "transactions_2026-11-10.csv", "transactions_2026-11-07.parquet"):
        (tmp_path / name).write_text("x")
    (tmp_path / "notes_2026-12-01.parquet").write_text("x")
    (tmp_path / ".transactions_2026-12-02.parquet.tmp").write_text("x")
    old = tmp_path / "transactions_2026-11-10.csv"
    os.utime(old, (0, 0))
    assert latest_batch(tmp_path) == old


def test_latest_batch_prefers_parquet_on_the_same_date(tmp_path: Path) -> None:
    (tmp_path / "transactions_2026-11-10.csv").write_text("x")
    (tmp_path / "transactions_2026-11-10.parquet").write_text("x")
    assert latest_batch(tmp_path).suffix == ".parquet"


def test_latest_batch_without_batches_says_what_it_looked_for(tmp_path: Path) -> None:
    with pytest.raises(MissingBatchError, match=r"no batch in .*transactions_YYYY-MM-DD"):
        latest_batch(tmp_path)
    with pytest.raises(MissingBatchError, match="does not exist"):
        latest_batch(tmp_path / "missing")


def test_fingerprint_is_sha256_of_the_bytes_for_any_chunk_size(tmp_path: Path) -> None:
    p = tmp_path / "b.parquet"
    data = os.urandom(3 * 1024 + 17)
    p.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert fingerprint(p) == expected
    assert fingerprint(p, chunk_bytes=1000) == expected
    p.write_bytes(data + b"!")
    assert fingerprint(p) != expected


def test_fingerprint_of_a_missing_file_is_a_missing_batch(tmp_path: Path) -> None:
    with pytest.raises(MissingBatchError):
        fingerprint(tmp_path / "x.parquet")
