"""The suite YAML loader: the shipped suite, reference-relative bounds, and errors naming the key at fault."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from include.mlops.data.generate import generate_batch
from include.mlops.data.schema import CATEGORICAL_FEATURES, COLUMNS, NUMERIC_FEATURES
from include.mlops.data_quality.suite import SuiteError, dtype_matches, load_suite, read_suite_spec
from include.mlops.errors import SettingsError

SUITE = Path(__file__).resolve().parents[3] / "include" / "data" / "suites" / "transactions.yaml"


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return generate_batch(5_000, seed=0)


@pytest.fixture()
def doc() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(SUITE.read_text()))


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def by_type(suite: Any, kind: str) -> dict[str | None, Any]:
    return {e.column if hasattr(e, "column") else None: e for e in suite.expectations if e.expectation_type == kind}


def test_shipped_suite_mirrors_schema_py(reference: pd.DataFrame) -> None:
    spec = read_suite_spec(SUITE)
    assert set(spec.column_dtypes) == set(COLUMNS)
    for col, (dtype, (lo, hi)) in NUMERIC_FEATURES.items():
        assert spec.column_dtypes[col] == dtype
        assert spec.ranges[col] == (lo, hi)
    for col, vocab in CATEGORICAL_FEATURES.items():
        assert spec.value_sets[col] == vocab
    # The generator's clean output has exactly the declared dtypes.
    for col, expected in spec.column_dtypes.items():
        assert dtype_matches(expected, reference[col].dtype), col


def test_shipped_suite_loads_every_check_kind(reference: pd.DataFrame) -> None:
    suite = load_suite(SUITE, reference)
    kinds = {e.expectation_type for e in suite.expectations}
    assert {
        "expect_table_columns_to_match_set",
        "expect_table_row_count_to_be_between",
        "expect_column_values_to_be_of_type",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_unique",
        "expect_column_values_to_be_between",
        "expect_column_values_to_be_in_set",
        "expect_column_mean_to_be_between",
        "expect_column_quantile_values_to_be_between_json_safe",
        "expect_column_kl_divergence_to_be_less_than",
        "expect_column_values_to_match_regex",
    } <= kinds
    assert len(by_type(suite, "expect_column_values_to_not_be_null")) == len(COLUMNS)


def test_drift_bounds_are_relative_to_the_reference(reference: pd.DataFrame) -> None:
    suite = load_suite(SUITE, reference)
    mean = by_type(suite, "expect_column_mean_to_be_between")["amount"]
    ref_mean = reference["amount"].mean()
    assert mean.min_value == pytest.approx(ref_mean * 0.85)
    assert mean.max_value == pytest.approx(ref_mean * 1.15)
    q = by_type(suite, "expect_column_quantile_values_to_be_between_json_safe")["tx_count_24h"]
    med = reference["tx_count_24h"].quantile(0.5, interpolation="nearest")
    lo, hi = q.quantile_ranges["value_ranges"][1]
    assert lo <= med <= hi
    assert hi - lo >= 2  # quantile_abs_tolerance: 1 on each side of an integer median
    kl = by_type(suite, "expect_column_kl_divergence_to_be_less_than")["country"]
    shares = dict(zip(kl.partition_object["values"], kl.partition_object["weights"], strict=True))
    assert shares["DE"] == pytest.approx((reference["country"] == "DE").mean(), abs=1e-5)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_unknown_expectation_type_names_the_entry_and_suggests(tmp_path: Path, doc: dict, reference) -> None:
    doc["expectations"] = [{"type": "ExpectColumnValuesToBeBetwen", "kwargs": {"column": "amount"}}]
    with pytest.raises(
        SuiteError, match=r"expectations\[0\]\.type: unknown expectation .*ExpectColumnValuesToBeBetween"
    ):
        load_suite(write(tmp_path, doc), reference)


def test_entry_that_is_not_a_mapping_names_its_index(tmp_path: Path, doc: dict) -> None:
    doc["expectations"].append(["ExpectColumnToExist", "amount"])
    with pytest.raises(SuiteError, match=r"expectations\[1\]: expected a mapping, got list"):
        read_suite_spec(write(tmp_path, doc))


def test_entry_without_type_names_the_missing_key(tmp_path: Path, doc: dict) -> None:
    doc["expectations"] = [{"kwargs": {"column": "amount"}}]
    with pytest.raises(SuiteError, match=r"expectations\[0\]: missing key 'type'"):
        read_suite_spec(write(tmp_path, doc))


def test_kwargs_gx_rejects_name_the_entry_and_the_field(tmp_path: Path, doc: dict, reference) -> None:
    doc["expectations"] = [
        {"type": "ExpectColumnToExist", "kwargs": {"column": "amount"}},
        {"type": "ExpectColumnValuesToBeBetween", "kwargs": {"min_value": 0}},
    ]
    with pytest.raises(SuiteError, match=r"expectations\[1\]\.kwargs: ExpectColumnValuesToBeBetween rejects.*column"):
        load_suite(write(tmp_path, doc), reference)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(rangez={}), "unknown top-level key"),
        (lambda d: d.pop("schema"), "missing required key 'schema'"),
        (lambda d: d["schema"].update(amount="float32"), r"schema\.amount: unknown dtype 'float32'"),
        (lambda d: d["ranges"].update(amout={"min": 0, "max": 1}), r"ranges\.amout: .*did you mean 'amount'"),
        (lambda d: d["ranges"].update(country={"min": 0, "max": 1}), r"ranges\.country: .*numeric columns"),
        (lambda d: d["ranges"]["amount"].update(max=-1), r"ranges\.amount\.max: must be >= 0"),
        (lambda d: d["row_count"].update(min="many"), r"row_count\.min: expected a finite number"),
        (lambda d: d["value_sets"].update(channel=[]), r"value_sets\.channel: expected a non-empty list"),
        (
            lambda d: d["reference_checks"]["numeric"]["amount"].update(mean_tol=0.1),
            r"reference_checks\.numeric\.amount: unknown key\(s\) \['mean_tol'\]",
        ),
        (
            lambda d: d["reference_checks"]["numeric"]["amount"].update(quantiles=[0.5, 2]),
            r"reference_checks\.numeric\.amount\.quantiles: quantiles must lie in \[0, 1\]",
        ),
        (
            lambda d: d["reference_checks"]["categorical"].update(country={"kl": 0.1}),
            r"reference_checks\.categorical\.country: expected exactly the key 'kl_max'",
        ),
        (lambda d: d.update(not_null="some"), r"not_null: expected 'all' or a list"),
        (lambda d: d["event_time"].update(column="amount"), r"event_time\.column: .*must be datetime64\[UTC\]"),
        (lambda d: d["event_time"].pop("after_landing_s"), r"event_time: missing key\(s\) \['after_landing_s'\]"),
        (lambda d: d["event_time"].update(before_batch_day_h=-1), r"event_time\.before_batch_day_h: must be >= 0"),
        (lambda d: d["label"].update(column="is_fruad"), r"label\.column: .*did you mean 'is_fraud'"),
        (lambda d: d["label"].update(positive_share={"min": 0, "max": 1}), r"label\.positive_share: .*inside \(0, 1\)"),
    ],
)
def test_malformed_suite_names_the_key_path(tmp_path: Path, doc: dict, mutate: Any, needle: str) -> None:
    mutate(doc)
    with pytest.raises(SuiteError, match=needle):
        read_suite_spec(write(tmp_path, doc))


def test_reference_checks_without_a_reference_batch_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="reference_checks need a reference batch"):
        load_suite(SUITE, None)


def test_missing_or_invalid_yaml_file_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        read_suite_spec(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        read_suite_spec(bad)
