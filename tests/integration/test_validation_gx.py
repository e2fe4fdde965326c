"""validate_batch with real Great Expectations: a clean batch passes; every way of breaking one fails
with a message naming the expectation, column and observed value; the report files exist either way."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from include.mlops.data.generate import generate_batch, write_batch, write_reference
from include.mlops.data_quality.validate import (
    InvalidBatchError,
    ReferenceBatchError,
    ValidationReport,
    validate_batch,
)
from include.mlops.errors import BatchReadError, DataValidationError

pytestmark = pytest.mark.slow

SUITE = Path(__file__).resolve().parents[2] / "include" / "data" / "suites" / "transactions.yaml"
ROWS = 5_000


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reference(tmp_path_factory.mktemp("ref") / "reference.parquet", seed=0, n_rows=20_000)


def run(batch: Path, reference: Path, tmp_path: Path) -> ValidationReport:
    return validate_batch(batch, SUITE, reference, report_dir=tmp_path / "report")


def assert_reports_written(report: ValidationReport) -> dict:
    result = Path(report.result_json_path)
    docs = Path(report.data_docs_index_path)
    assert result.is_file(), result
    assert docs.is_file(), docs
    assert list(docs.parent.glob("validations/**/*.html")), "no validation page in the Data Docs site"
    payload = json.loads(result.read_text())
    assert payload["summary"]["success"] is report.success
    return payload


def failure_message(report: ValidationReport) -> str:
    with pytest.raises(DataValidationError) as info:
        report.raise_for_failures()
    msg = str(info.value)
    assert report.result_json_path in msg
    return msg


def test_clean_batch_passes_and_leaves_a_report(reference: Path, tmp_path: Path) -> None:
    batch = write_batch(tmp_path / "landing", "2026-11-02", n_rows=ROWS, seed=21)
    report = run(batch, reference, tmp_path)
    assert report.success, [f.line() for f in report.failures]
    assert report.row_count == ROWS
    assert report.n_expectations >= 50
    assert report.skipped_expectations == ()
    assert len(report.fingerprint) == 64
    report.raise_for_failures()  # no-op
    summary = report.summary()
    assert json.loads(json.dumps(summary)) == summary
    payload = assert_reports_written(report)
    assert payload["gx_result"]["success"] is True


def test_clean_csv_batch_passes(reference: Path, tmp_path: Path) -> None:
    batch = tmp_path / "transactions_2026-11-02.csv"
    generate_batch(ROWS, seed=22).to_csv(batch, index=False)
    report = run(batch, reference, tmp_path)
    assert report.success, [f.line() for f in report.failures]


@pytest.mark.parametrize(
    ("corruption", "expectation", "column", "observed"),
    [
        ("nulls", "expect_column_values_to_not_be_null", "amount", '"unexpected_count": 50'),
        ("duplicate_ids", "expect_column_values_to_be_unique", "transaction_id", "tx-20261101-s9-"),
        ("out_of_range", "expect_column_values_to_be_between", "hour_of_day", '"examples": ["27"]'),
        ("all_null_column", "expect_column_values_to_not_be_null", "country", '"unexpected_percent": 100.0'),
        ("bad_category", "expect_column_values_to_be_in_set", "merchant_category", "crypto_exchange"),
        ("wrong_types", "column_dtype_matches_schema", "amount", "observed str (schema declares float64)"),
        ("missing_column", "expect_table_columns_to_match_set", None, '"missing": ["distance_from_home_km"]'),
    ],
)
def test_corrupted_batch_fails_naming_expectation_column_and_observed_value(
    reference: Path, tmp_path: Path, corruption: str, expectation: str, column: str | None, observed: str
) -> None:
    batch = write_batch(tmp_path, "2026-11-01", n_rows=ROWS, seed=9, corruption=corruption)
    report = run(batch, reference, tmp_path)
    assert not report.success
    hits = [f for f in report.failures if f.expectation_type == expectation and f.column == column]
    assert hits, [f.line() for f in report.failures]
    msg = failure_message(report)
    line = next(m for m in msg.splitlines() if expectation in m and (column is None or repr(column) in m))
    assert observed in line, line
    assert_reports_written(report)


def test_wrong_types_skip_value_checks_instead_of_crashing_in_pandas(reference: Path, tmp_path: Path) -> None:
    batch = write_batch(tmp_path, "2026-11-01", n_rows=ROWS, seed=9, corruption="wrong_types")
    report = run(batch, reference, tmp_path)
    lines = [f.line() for f in report.failures]
    assert any("'customer_age'" in x and "observed float64 (schema declares int64)" in x for x in lines), lines
    assert "expect_column_values_to_be_between(amount)" in report.skipped_expectations
    assert not any("GX could not evaluate" in x for x in lines), lines


def test_extra_and_missing_columns_are_reported_together(reference: Path, tmp_path: Path) -> None:
    df = generate_batch(ROWS, seed=3).drop(columns=["channel", "country"]).assign(promo_code="X")
    batch = tmp_path / "transactions_2026-11-01.parquet"
    df.to_parquet(batch, index=False)
    report = run(batch, reference, tmp_path)
    (cols,) = [f for f in report.failures if f.expectation_type == "expect_table_columns_to_match_set"]
    assert cols.observed_value == {"missing": ["channel", "country"], "unexpected": ["promo_code"]}


def test_naive_timestamps_fail_the_type_check(reference: Path, tmp_path: Path) -> None:
    df = generate_batch(ROWS, seed=3)
    df["event_ts"] = df["event_ts"].dt.tz_localize(None)
    batch = tmp_path / "transactions_2026-11-01.parquet"
    df.to_parquet(batch, index=False)
    report = run(batch, reference, tmp_path)
    (f,) = [f for f in report.failures if f.column == "event_ts"]
    assert f.expectation_type == "column_dtype_matches_schema"
    assert f.observed_value == "datetime64[us]"
    assert f.details == "schema declares datetime64[UTC]"


def test_drifted_batch_fails_the_distribution_checks(reference: Path, tmp_path: Path) -> None:
    batch = write_batch(tmp_path, "2026-11-01", n_rows=ROWS, seed=9, drift=0.5)
    report = run(batch, reference, tmp_path)
    kinds = {(f.expectation_type, f.column) for f in report.failures}
    assert ("expect_column_mean_to_be_between", "amount") in kinds
    assert ("expect_column_kl_divergence_to_be_less_than", "country") in kinds
    # Only distribution checks fail: the drifted data is otherwise well-formed.
    assert all(
        k[0]
        in (
            "expect_column_mean_to_be_between",
            "expect_column_quantile_values_to_be_between_json_safe",
            "expect_column_kl_divergence_to_be_less_than",
        )
        for k in kinds
    ), kinds
    msg = failure_message(report)
    assert "expect_column_mean_to_be_between on column 'amount': observed " in msg
    assert "expected mean in [" in msg
    assert_reports_written(report)


def _empty(p: Path) -> Path:
    p = p / "transactions_2026-11-01.parquet"
    p.touch()
    return p


def _corrupt_parquet(p: Path) -> Path:
    good = write_batch(p / "good", "2026-11-01", n_rows=ROWS, seed=1)
    bad = p / "transactions_2026-11-01.parquet"
    bad.write_bytes(good.read_bytes()[:-100])
    return bad


def _corrupt_csv(p: Path) -> Path:
    bad = p / "transactions_2026-11-01.csv"
    bad.write_text("transaction_id,amount\ntx-1,3.0\ntx-2,4.0,oops,more\n")
    return bad


@pytest.mark.parametrize(
    ("make", "error", "needle"),
    [
        (_empty, "EmptyBatchError", "0 bytes"),
        (lambda p: p / "transactions_2026-11-01.parquet", "MissingBatchError", "does not exist"),
        (_corrupt_parquet, "UnreadableBatchError", "not a readable parquet file"),
        (_corrupt_csv, "UnreadableBatchError", "not a readable CSV file"),
    ],
    ids=["empty", "missing", "corrupt_parquet", "corrupt_csv"],
)
def test_unreadable_batch_fails_clearly_and_still_writes_reports(
    reference: Path, tmp_path: Path, make, error: str, needle: str
) -> None:
    batch = make(tmp_path)
    report = run(batch, reference, tmp_path)
    assert not report.success
    first = report.failures[0]
    assert first.expectation_type == "batch_is_readable"
    assert first.observed_value == error
    assert needle in first.details
    assert report.skipped_expectations == (f"{report.n_expectations - 2} column checks (batch unreadable)",)
    with pytest.raises(InvalidBatchError) as info:
        report.raise_for_failures()
    assert isinstance(info.value, BatchReadError)
    assert needle in str(info.value)
    assert "Traceback" not in str(info.value)
    assert_reports_written(report)


def test_missing_reference_is_a_setup_error(tmp_path: Path) -> None:
    batch = write_batch(tmp_path, "2026-11-01", n_rows=ROWS, seed=1)
    with pytest.raises(ReferenceBatchError, match="write_reference"):
        validate_batch(batch, SUITE, tmp_path / "no-ref.parquet", report_dir=tmp_path / "report")


def test_same_file_gives_same_fingerprint_and_outcome(reference: Path, tmp_path: Path) -> None:
    batch = write_batch(tmp_path, "2026-11-01", n_rows=ROWS, seed=1, corruption="bad_category")
    a = run(batch, reference, tmp_path / "a")
    b = run(batch, reference, tmp_path / "b")
    assert a.fingerprint == b.fingerprint
    assert [f.line() for f in a.failures] == [f.line() for f in b.failures]
    assert pd.read_parquet(batch).shape[0] == a.row_count


# --- time and label (crafted batches through the real suite) -----------------------------------


def _landed(df: pd.DataFrame, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    df.to_parquet(path, index=False)
    return path


def _lines(report: ValidationReport, kind: str, column: str | None) -> list[str]:
    return [f.line() for f in report.failures if f.expectation_type == kind and f.column == column]


def test_event_times_years_off_the_batch_date_fail_naming_the_day_and_examples(reference: Path, tmp_path: Path) -> None:
    df = generate_batch(ROWS, seed=31, batch_date="2026-11-01")
    df.loc[df.index[:3], "event_ts"] = pd.Timestamp("1994-05-01 10:00", tz="UTC")  # decades old
    df.loc[df.index[3:5], "event_ts"] = pd.Timestamp("2031-01-01 10:00", tz="UTC")  # years ahead
    batch = _landed(df, tmp_path, "transactions_2026-11-01.parquet")
    landed = dt.datetime(2026, 11, 2, 6, 0, tzinfo=dt.UTC)
    report = validate_batch(batch, SUITE, reference, report_dir=tmp_path / "report", landed_at=landed)
    assert not report.success
    (line,) = _lines(report, "expect_column_values_to_be_between", "event_ts")
    assert '"unexpected_count": 5' in line and "1994-05-01" in line and "2031-01-01" in line, line
    assert "on the batch's day 2026-11-01" in line and "landing time 2026-11-02T06:00:00Z" in line, line
    assert [f.column for f in report.failures] == ["event_ts"]  # nothing else is wrong with it
    assert "event_ts" in failure_message(report)
    assert_reports_written(report)


def test_events_after_the_landing_time_fail(reference: Path, tmp_path: Path) -> None:
    batch = write_batch(tmp_path, "2026-11-01", n_rows=ROWS, seed=32)
    landed = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)  # landed at noon: the afternoon cannot be in it
    report = validate_batch(batch, SUITE, reference, report_dir=tmp_path / "report", landed_at=landed)
    (line,) = _lines(report, "expect_column_values_to_be_between", "event_ts")
    assert "not after the landing time 2026-11-01T12:00:00Z + 300 s" in line, line


@pytest.mark.parametrize(
    ("batch_date", "landed", "needle"),
    [
        ("2031-01-01", dt.datetime(2026, 12, 1, tzinfo=dt.UTC), "2031-01-01 cannot hold its events"),
        ("1990-06-01", dt.datetime(2026, 12, 1, tzinfo=dt.UTC), "not more than 366 days before it"),
    ],
    ids=["dated-years-after-landing", "landed-decades-after-its-date"],
)
def test_a_batch_whose_date_no_landing_window_fits_fails_naming_it(
    reference: Path, tmp_path: Path, batch_date: str, landed: dt.datetime, needle: str
) -> None:
    # the events agree with the file's date; the date itself is impossible for when it landed
    batch = write_batch(tmp_path, batch_date, n_rows=ROWS, seed=33)
    report = validate_batch(batch, SUITE, reference, report_dir=tmp_path / "report", landed_at=landed)
    (hit,) = [f for f in report.failures if f.expectation_type == "batch_date_matches_landing_time"]
    assert needle in hit.line() and batch_date in hit.line(), hit.line()
    assert_reports_written(report)


def test_a_batch_of_yesterday_landed_now_passes(reference: Path, tmp_path: Path) -> None:
    """What `make run` and the land_batch DAG land by default: yesterday's complete day, landed now."""
    yesterday = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
    batch = write_batch(tmp_path, yesterday, n_rows=ROWS, seed=34)
    report = run(batch, reference, tmp_path)  # landing time: the file's mtime, i.e. now
    assert report.success, [f.line() for f in report.failures]
    today = write_batch(tmp_path / "today", dt.datetime.now(dt.UTC).date().isoformat(), n_rows=ROWS, seed=34)
    if dt.datetime.now(dt.UTC).hour < 22:  # today's batch has events later than now: refused
        assert not run(today, reference, tmp_path / "t").success


def test_a_single_class_label_is_refused_at_validation(reference: Path, tmp_path: Path) -> None:
    df = generate_batch(ROWS, seed=35, batch_date="2026-11-01").assign(is_fraud=False)
    batch = _landed(df, tmp_path, "transactions_2026-11-01.parquet")
    report = run(batch, reference, tmp_path)
    assert {(f.expectation_type, f.column) for f in report.failures} == {
        ("expect_column_distinct_values_to_equal_set", "is_fraud"),
        ("expect_column_mean_to_be_between", "is_fraud"),
    }
    (classes,) = _lines(report, "expect_column_distinct_values_to_equal_set", "is_fraud")
    assert '"missing_values": [true]' in classes and "both classes" in classes, classes
    (share,) = _lines(report, "expect_column_mean_to_be_between", "is_fraud")
    assert "observed 0" in share and "positive share in [0.005, 0.2]" in share, share
    with pytest.raises(DataValidationError, match="is_fraud"):
        report.raise_for_failures()


def test_a_label_share_out_of_bounds_fails(reference: Path, tmp_path: Path) -> None:
    df = generate_batch(ROWS, seed=36, batch_date="2026-11-01")
    df["is_fraud"] = df.index % 5 < 2  # 40 % fraud: a broken labelling job, not a fraud wave
    batch = _landed(df, tmp_path, "transactions_2026-11-01.parquet")
    report = run(batch, reference, tmp_path)
    assert [(f.expectation_type, f.column) for f in report.failures] == [
        ("expect_column_mean_to_be_between", "is_fraud")
    ]
    assert "observed 0.4 " in report.failures[0].line(), report.failures[0].line()
