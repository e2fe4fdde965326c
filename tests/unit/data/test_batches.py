"""read_batch's errors for each way a batch can be unusable; latest_batch; fingerprint; pinned reads; landing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import pytest

from include.mlops.data.batches import (
    BatchChangedError,
    EmptyBatchError,
    InvalidBatchDate,
    MissingBatchError,
    UnreadableBatchError,
    check_fingerprint,
    fingerprint,
    land_frame,
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


def test_a_pinned_read_returns_the_validated_frame(tmp_path: Path, frame: pd.DataFrame) -> None:
    p = tmp_path / "transactions_2026-11-01.parquet"
    frame.to_parquet(p, index=False)
    pd.testing.assert_frame_equal(read_batch(p, expected_fingerprint=fingerprint(p)), frame)
    check_fingerprint(p, fingerprint(p))


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_batch_rewritten_after_validation_is_refused_naming_file_and_both_fingerprints(
    tmp_path: Path, frame: pd.DataFrame, suffix: str
) -> None:
    p = tmp_path / f"transactions_2026-11-01{suffix}"
    write = (
        (lambda df: df.to_parquet(p, index=False)) if suffix == ".parquet" else (lambda df: df.to_csv(p, index=False))
    )
    write(frame)
    validated = fingerprint(p)
    write(frame.iloc[:-1])  # one row fewer, same name
    now = fingerprint(p)
    for call in (lambda: read_batch(p, expected_fingerprint=validated), lambda: check_fingerprint(p, validated)):
        with pytest.raises(BatchChangedError) as err:
            call()
        assert str(p) in str(err.value) and validated in str(err.value) and now in str(err.value)
        assert isinstance(err.value, BatchReadError)


def test_a_pin_without_a_fingerprint_is_refused(tmp_path: Path, frame: pd.DataFrame) -> None:
    p = tmp_path / "transactions_2026-11-01.parquet"
    frame.to_parquet(p, index=False)
    with pytest.raises(BatchChangedError, match="no validated fingerprint"):
        check_fingerprint(p, "")


def test_landing_twice_on_one_day_keeps_both_batches_and_the_first_untouched(tmp_path: Path) -> None:
    first = land_frame(generate_batch(300, seed=1, batch_date="2026-11-05"), tmp_path, "2026-11-05")
    before = first.read_bytes()
    second = land_frame(generate_batch(300, seed=2, batch_date="2026-11-05"), tmp_path, "2026-11-05")
    third = land_frame(generate_batch(300, seed=3, batch_date="2026-11-05"), tmp_path, "2026-11-05")

    assert first.name == "transactions_2026-11-05.parquet"
    assert (second.name, third.name) == ("transactions_2026-11-05_2.parquet", "transactions_2026-11-05_3.parquet")
    assert first.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name, second.name, third.name]  # no temp left
    assert latest_batch(tmp_path) == third  # the day's newest batch is the one the next retrain takes
    assert read_batch(second)["transaction_id"].iloc[0] != read_batch(first)["transaction_id"].iloc[0]


def test_latest_batch_orders_a_days_numbered_batches_after_its_first(tmp_path: Path) -> None:
    for name in (
        "transactions_2026-11-05_10.parquet",
        "transactions_2026-11-05_2.parquet",
        "transactions_2026-11-05.parquet",
    ):
        (tmp_path / name).write_text("x")
    (tmp_path / "transactions_2026-11-04_99.parquet").write_text("x")
    assert latest_batch(tmp_path).name == "transactions_2026-11-05_10.parquet"


def test_landing_refuses_a_date_its_name_could_not_be_found_by(tmp_path: Path) -> None:
    with pytest.raises(InvalidBatchDate, match=r"batch_date='5/11/2026': must be a date written YYYY-MM-DD"):
        land_frame(generate_batch(10, seed=1), tmp_path, "5/11/2026")
