"""The suite YAML loader: the shipped suite, reference-relative bounds, and errors naming the key at fault."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import great_expectations  # noqa: F401 -- loaded at collection, not again in each mutant's fork
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


# --- a small suite written in the test: each rule of the reader at its boundary, each bound of the
# builder computed by hand from a reference of a few rows

SMALL: dict[str, Any] = {
    "name": "small",
    "row_count": {"min": 1, "max": 10},
    "schema": {"id": "str", "ts": "datetime64[UTC]", "x": "float64", "n": "int64", "flag": "bool", "cat": "str"},
}


def small(tmp_path: Path, **extra: Any) -> Path:
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump({**copy.deepcopy(SMALL), **extra}, sort_keys=False))  # the schema's order kept
    return p


def refused(tmp_path: Path, message: str, **extra: Any) -> None:
    with pytest.raises(SuiteError) as exc:
        read_suite_spec(small(tmp_path, **extra))
    assert str(exc.value) == message


def test_a_minimal_suite_reads_with_empty_sections(tmp_path: Path) -> None:
    spec = read_suite_spec(small(tmp_path, name=123))
    assert spec.name == "123" and spec.path == str(tmp_path / "suite.yaml")
    assert (spec.row_count_min, spec.row_count_max) == (1, 10)
    assert spec.column_dtypes == SMALL["schema"]
    assert (spec.not_null, spec.unique, spec.ranges, spec.value_sets) == ((), (), {}, {})
    assert (spec.numeric_reference, spec.categorical_kl_max, spec.extra) == ({}, {}, ())
    assert spec.event_time is None and spec.label is None


def test_a_document_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(SuiteError, match=rf"^{p}: expected a mapping, got list \['a', 'b'\]$"):
        read_suite_spec(p)


@pytest.mark.parametrize("key", ["name", "schema", "row_count"])
def test_each_required_key_is_named_when_missing(tmp_path: Path, key: str) -> None:
    doc = copy.deepcopy(SMALL)
    doc.pop(key)
    p = write(tmp_path, doc)
    with pytest.raises(SuiteError) as exc:
        read_suite_spec(p)
    assert str(exc.value) == f"{p}: missing required key {key!r}"


def test_unknown_top_level_keys_are_listed_with_the_allowed_ones(tmp_path: Path) -> None:
    p = small(tmp_path, zeta=1, alpha=2)
    with pytest.raises(SuiteError) as exc:
        read_suite_spec(p)
    assert str(exc.value) == (
        f"{p}: unknown top-level key(s) ['alpha', 'zeta']; allowed: name, row_count, schema, not_null, unique, "
        "ranges, value_sets, reference_checks, event_time, label, expectations"
    )


def test_schema_rules(tmp_path: Path) -> None:
    refused(tmp_path, "schema: declares no columns", schema={})
    refused(tmp_path, "schema: expected a mapping, got list ['x']", schema=["x"])
    refused(
        tmp_path,
        "schema.x: unknown dtype 'float32'; allowed: str, float64, int64, bool, datetime64[UTC]",
        schema={"x": "float32"},
    )


def test_row_count_bounds(tmp_path: Path) -> None:
    spec = read_suite_spec(small(tmp_path, row_count={"min": 0, "max": 0}))
    assert (spec.row_count_min, spec.row_count_max) == (0, 0)
    refused(tmp_path, "row_count.min: must be >= 0, got -1", row_count={"min": -1, "max": 5})
    refused(tmp_path, "row_count.max: must be >= 5, got 4", row_count={"min": 5, "max": 4})
    refused(tmp_path, "row_count.min: expected a finite number, got None", row_count={"max": 5})
    refused(tmp_path, "row_count.max: expected a finite number, got True", row_count={"min": 0, "max": True})
    refused(tmp_path, "row_count: expected a mapping, got int 5", row_count=5)


@pytest.mark.parametrize("value", [".inf", ".nan", "'5'"])
def test_numbers_must_be_finite_numbers(tmp_path: Path, value: str) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(f"name: s\nschema: {{x: float64}}\nrow_count: {{min: 0, max: {value}}}\n")
    with pytest.raises(SuiteError, match=r"^row_count\.max: expected a finite number, got "):
        read_suite_spec(p)


def test_range_rules(tmp_path: Path) -> None:
    spec = read_suite_spec(small(tmp_path, ranges={"x": {"min": -1.5, "max": -1.5}, "n": {"min": 0, "max": 3}}))
    assert spec.ranges == {"x": (-1.5, -1.5), "n": (0.0, 3.0)}
    refused(tmp_path, "ranges.x.max: must be >= 2.0, got 1", ranges={"x": {"min": 2, "max": 1}})
    refused(tmp_path, "ranges.x.min: expected a finite number, got None", ranges={"x": {"max": 1}})
    refused(tmp_path, "ranges.x: expected a mapping, got list [0, 1]", ranges={"x": [0, 1]})
    refused(
        tmp_path,
        "ranges.flag: column 'flag' has dtype bool; ranges apply to numeric columns",
        ranges={"flag": {"min": 0, "max": 1}},
    )
    refused(tmp_path, "ranges.zzz: column 'zzz' is not in schema", ranges={"zzz": {"min": 0, "max": 1}})
    refused(
        tmp_path, "ranges.xx: column 'xx' is not in schema (did you mean 'x'?)", ranges={"xx": {"min": 0, "max": 1}}
    )


def test_value_set_rules(tmp_path: Path) -> None:
    assert read_suite_spec(small(tmp_path, value_sets={"cat": ["a", "b"]})).value_sets == {"cat": ("a", "b")}
    refused(tmp_path, "value_sets.cat: expected a non-empty list of values, got []", value_sets={"cat": []})
    refused(tmp_path, "value_sets.cat: expected a non-empty list of values, got 'a'", value_sets={"cat": "a"})
    refused(tmp_path, "value_sets.zzz: column 'zzz' is not in schema", value_sets={"zzz": ["a"]})


def test_not_null_and_unique_take_all_or_known_columns(tmp_path: Path) -> None:
    spec = read_suite_spec(small(tmp_path, not_null="all", unique=["id", "n"]))
    assert spec.not_null == ("id", "ts", "x", "n", "flag", "cat") and spec.unique == ("id", "n")
    refused(tmp_path, "unique[1]: column 'zzz' is not in schema", unique=["id", "zzz"])
    refused(tmp_path, "not_null: expected 'all' or a list of column names, got [1]", not_null=[1])


def test_numeric_reference_rules(tmp_path: Path) -> None:
    spec = read_suite_spec(
        small(
            tmp_path,
            reference_checks={"numeric": {"x": {"mean_rel_tolerance": 0, "quantiles": [0, 1]}, "n": {}}},
        )
    )
    assert spec.numeric_reference == {
        "x": {
            "mean_rel_tolerance": 0.0,
            "quantiles": [0.0, 1.0],
            "quantile_rel_tolerance": 0.0,
            "quantile_abs_tolerance": 0.0,
        },
        "n": {},
    }
    w = "reference_checks.numeric.x"

    def num(spec: dict[str, Any]) -> dict[str, Any]:
        return {"reference_checks": {"numeric": {"x": spec}}}

    refused(tmp_path, f"{w}.mean_rel_tolerance: must be >= 0, got -0.1", **num({"mean_rel_tolerance": -0.1}))
    refused(
        tmp_path, f"{w}.quantiles: expected a non-empty list of numbers in [0, 1], got []", **num({"quantiles": []})
    )
    refused(
        tmp_path, f"{w}.quantiles: expected a non-empty list of numbers in [0, 1], got 0.5", **num({"quantiles": 0.5})
    )
    refused(tmp_path, f"{w}.quantiles[1]: must be >= 0, got -0.1", **num({"quantiles": [0.5, -0.1]}))
    refused(tmp_path, f"{w}.quantiles: quantiles must lie in [0, 1], got [1.01]", **num({"quantiles": [1.01]}))
    refused(
        tmp_path,
        f"{w}.quantile_abs_tolerance: must be >= 0, got -1",
        **num({"quantiles": [0.5], "quantile_abs_tolerance": -1}),
    )
    refused(
        tmp_path,
        f"{w}: unknown key(s) ['q']; allowed: mean_rel_tolerance, quantiles, quantile_rel_tolerance, "
        "quantile_abs_tolerance",
        **num({"q": 1}),
    )
    refused(tmp_path, f"{w}: expected a mapping, got int 1", **num(1))  # type: ignore[arg-type]
    refused(
        tmp_path,
        "reference_checks.numeric.zzz: column 'zzz' is not in schema",
        reference_checks={"numeric": {"zzz": {}}},
    )
    refused(
        tmp_path,
        "reference_checks: unknown key(s) ['numerical']; allowed: numeric, categorical",
        reference_checks={"numerical": {}},
    )


def test_categorical_reference_rules(tmp_path: Path) -> None:
    spec = read_suite_spec(small(tmp_path, reference_checks={"categorical": {"cat": {"kl_max": 0}}}))
    assert spec.categorical_kl_max == {"cat": 0.0}
    w = "reference_checks.categorical.cat"
    refused(
        tmp_path, f"{w}.kl_max: must be >= 0, got -0.01", reference_checks={"categorical": {"cat": {"kl_max": -0.01}}}
    )
    refused(
        tmp_path,
        f"{w}: expected exactly the key 'kl_max', got ['kl_max', 'x']",
        reference_checks={"categorical": {"cat": {"kl_max": 1, "x": 1}}},
    )
    refused(tmp_path, f"{w}: expected a mapping, got int 1", reference_checks={"categorical": {"cat": 1}})
    refused(
        tmp_path,
        "reference_checks.categorical.zzz: column 'zzz' is not in schema",
        reference_checks={"categorical": {"zzz": {"kl_max": 1}}},
    )


EVENT_TIME = {
    "column": "ts",
    "before_batch_day_h": 24,
    "after_batch_day_h": 1,
    "after_landing_s": 300,
    "max_landing_delay_days": 366,
}


def test_event_time_rules(tmp_path: Path) -> None:
    from include.mlops.data_quality.suite import EventTimeSpec

    spec = read_suite_spec(small(tmp_path, event_time=EVENT_TIME))
    assert spec.event_time == EventTimeSpec("ts", 24.0, 1.0, 300.0, 366.0)
    assert read_suite_spec(small(tmp_path, event_time={**EVENT_TIME, "after_landing_s": 0})).event_time is not None
    refused(
        tmp_path,
        "event_time.column: column 'x' has dtype float64; event time must be datetime64[UTC]",
        event_time={**EVENT_TIME, "column": "x"},
    )
    refused(tmp_path, "event_time.column: column 'zzz' is not in schema", event_time={**EVENT_TIME, "column": "zzz"})
    refused(
        tmp_path,
        "event_time.max_landing_delay_days: must be >= 0, got -1",
        event_time={**EVENT_TIME, "max_landing_delay_days": -1},
    )
    refused(
        tmp_path,
        "event_time: unknown key(s) ['zone']; allowed: column, before_batch_day_h, after_batch_day_h, "
        "after_landing_s, max_landing_delay_days",
        event_time={**EVENT_TIME, "zone": "UTC"},
    )
    refused(
        tmp_path,
        "event_time: missing key(s) ['after_batch_day_h', 'column']",
        event_time={k: v for k, v in EVENT_TIME.items() if k not in ("column", "after_batch_day_h")},
    )
    refused(tmp_path, "event_time: expected a mapping, got str 'ts'", event_time="ts")


def test_label_rules(tmp_path: Path) -> None:
    from include.mlops.data_quality.suite import LabelSpec

    share = {"min": 0.01, "max": 0.5}
    spec = read_suite_spec(small(tmp_path, label={"column": "flag", "positive_share": share}))
    assert spec.label == LabelSpec("flag", 0.01, 0.5)
    # int64 labels too, and min == max is a (narrow) window
    spec = read_suite_spec(small(tmp_path, label={"column": "n", "positive_share": {"min": 0.3, "max": 0.3}}))
    assert spec.label == LabelSpec("n", 0.3, 0.3)
    for lo, hi in ((0, 0.5), (0.1, 1), (0.1, 1.5)):
        refused(
            tmp_path,
            f"label.positive_share: bounds must lie strictly inside (0, 1), got [{float(lo)}, {float(hi)}]",
            label={"column": "flag", "positive_share": {"min": lo, "max": hi}},
        )
    refused(
        tmp_path,
        "label.positive_share.max: must be >= 0.3, got 0.2",
        label={"column": "flag", "positive_share": {"min": 0.3, "max": 0.2}},
    )
    refused(
        tmp_path,
        "label.column: column 'cat' has dtype str; a binary label is bool or int64 0/1",
        label={"column": "cat", "positive_share": share},
    )
    refused(tmp_path, "label: missing key(s) ['positive_share']", label={"column": "flag"})
    refused(
        tmp_path,
        "label.positive_share: unknown key(s) ['mean']; allowed: min, max",
        label={"column": "flag", "positive_share": {**share, "mean": 0.1}},
    )


def test_extra_expectation_entry_rules(tmp_path: Path) -> None:
    refused(tmp_path, "expectations: expected a list of {type, kwargs} entries, got dict", expectations={"type": "X"})
    refused(
        tmp_path,
        "expectations[0]: unknown key(s) ['args']; allowed: type, kwargs",
        expectations=[{"type": "ExpectColumnToExist", "args": []}],
    )
    refused(tmp_path, "expectations[0].type: expected a class name string, got 3", expectations=[{"type": 3}])
    refused(
        tmp_path,
        "expectations[0].kwargs: expected a mapping, got list ['x']",
        expectations=[{"type": "ExpectColumnToExist", "kwargs": ["x"]}],
    )
    spec = read_suite_spec(small(tmp_path, expectations=[{"type": "ExpectColumnToExist"}]))
    assert spec.extra == ({"type": "ExpectColumnToExist"},)


def test_dtype_matches_utc_timestamps_of_any_unit_only() -> None:
    assert dtype_matches("datetime64[UTC]", pd.DatetimeTZDtype("ns", "UTC"))
    assert dtype_matches("datetime64[UTC]", pd.DatetimeTZDtype("us", "UTC"))
    assert not dtype_matches("datetime64[UTC]", pd.DatetimeTZDtype("ns", "Europe/Berlin"))
    assert not dtype_matches("datetime64[UTC]", pd.Series(pd.to_datetime(["2024-01-01"])).dtype)
    assert dtype_matches("int64", pd.Series([1]).dtype) and not dtype_matches("int64", pd.Series([1.0]).dtype)


# the builder


def built(tmp_path: Path, ref: pd.DataFrame | None = None, **extra: Any) -> dict[str, list[Any]]:
    from include.mlops.data_quality.suite import build_expectations

    out: dict[str, list[Any]] = {}
    for e in build_expectations(read_suite_spec(small(tmp_path, **extra)), ref):
        out.setdefault(e.expectation_type, []).append(e)
    return out


def test_the_builder_turns_schema_and_row_count_into_table_checks(tmp_path: Path) -> None:
    got = built(tmp_path)
    (cols,) = got["expect_table_columns_to_match_set"]
    assert cols.column_set == ["id", "ts", "x", "n", "flag", "cat"] and cols.exact_match is True
    (rows,) = got["expect_table_row_count_to_be_between"]
    assert (rows.min_value, rows.max_value) == (1, 10)
    types = {e.column: e.type_ for e in got["expect_column_values_to_be_of_type"]}
    assert types == {"id": "str", "ts": "Timestamp", "x": "float64", "n": "int64", "flag": "bool", "cat": "str"}
    assert set(got) == {
        "expect_table_columns_to_match_set",
        "expect_table_row_count_to_be_between",
        "expect_column_values_to_be_of_type",
    }


def test_the_builder_turns_column_rules_into_column_checks(tmp_path: Path) -> None:
    got = built(
        tmp_path,
        not_null=["id", "x"],
        unique=["id"],
        ranges={"x": {"min": 0, "max": 2.5}},
        value_sets={"cat": ["a", "b"]},
    )
    assert [e.column for e in got["expect_column_values_to_not_be_null"]] == ["id", "x"]
    assert [e.column for e in got["expect_column_values_to_be_unique"]] == ["id"]
    (rng,) = got["expect_column_values_to_be_between"]
    assert (rng.column, rng.min_value, rng.max_value) == ("x", 0.0, 2.5)
    (vs,) = got["expect_column_values_to_be_in_set"]
    assert (vs.column, vs.value_set) == ("cat", ["a", "b"])


def test_mean_bounds_are_the_reference_mean_plus_minus_its_relative_tolerance(tmp_path: Path) -> None:
    # x: mean 2.5, 20 % -> [2.0, 3.0]; n: mean -2 (the tolerance is of |mean|), 50 % -> [-3, -1]
    ref = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0, None], "n": [-1, -3, -1, -3, -2]})
    got = built(
        tmp_path,
        ref,
        reference_checks={"numeric": {"x": {"mean_rel_tolerance": 0.2}, "n": {"mean_rel_tolerance": 0.5}}},
    )
    bounds = {e.column: (e.min_value, e.max_value) for e in got["expect_column_mean_to_be_between"]}
    assert bounds["x"] == pytest.approx((2.0, 3.0)) and bounds["n"] == pytest.approx((-3.0, -1.0))
    assert "expect_column_quantile_values_to_be_between_json_safe" not in got


def test_quantile_bounds_use_the_larger_of_the_relative_and_absolute_tolerance(tmp_path: Path) -> None:
    # nearest quantiles of 10..50 at 0, 0.5, 1: 10, 30, 50; tolerance max(10 % of |q|, 2): 2, 3, 5
    ref = pd.DataFrame({"x": [50.0, 10.0, 40.0, 20.0, 30.0]})
    checks = {"quantiles": [0, 0.5, 1], "quantile_rel_tolerance": 0.1, "quantile_abs_tolerance": 2}
    got = built(tmp_path, ref, reference_checks={"numeric": {"x": checks}})
    (q,) = got["expect_column_quantile_values_to_be_between_json_safe"]
    assert q.column == "x"
    assert q.quantile_ranges == {
        "quantiles": [0.0, 0.5, 1.0],
        "value_ranges": [[8.0, 12.0], [27.0, 33.0], [45.0, 55.0]],
    }
    assert "expect_column_mean_to_be_between" not in got


def test_kl_partition_takes_the_declared_vocabulary_with_a_tiny_share_for_absent_values(tmp_path: Path) -> None:
    # reference: a twice, b once, c never; vocabulary a, b, c: weights 2/3, 1/3, 1e-6, normalised
    ref = pd.DataFrame({"cat": ["a", "b", "a", None]})
    got = built(
        tmp_path, ref, value_sets={"cat": ["a", "b", "c"]}, reference_checks={"categorical": {"cat": {"kl_max": 0.05}}}
    )
    (kl,) = got["expect_column_kl_divergence_to_be_less_than"]
    total = 1 + 1e-6
    assert kl.partition_object["values"] == ["a", "b", "c"]
    assert kl.partition_object["weights"] == pytest.approx([2 / 3 / total, 1 / 3 / total, 1e-6 / total])
    assert kl.threshold == 0.05 and kl.column == "cat"


def test_kl_partition_without_a_vocabulary_takes_the_references_values(tmp_path: Path) -> None:
    ref = pd.DataFrame({"n": [7, 7, 7, 9]})
    got = built(tmp_path, ref, reference_checks={"categorical": {"n": {"kl_max": 0.1}}})
    (kl,) = got["expect_column_kl_divergence_to_be_less_than"]
    assert kl.partition_object == {"values": [7, 9], "weights": pytest.approx([0.75, 0.25])}
    assert all(type(v) is int for v in kl.partition_object["values"])  # plain ints: JSON-safe


def test_reference_problems_are_named(tmp_path: Path) -> None:
    num = {"reference_checks": {"numeric": {"x": {"mean_rel_tolerance": 0.1}}}}
    with pytest.raises(SuiteError, match=r"suite\.yaml: reference_checks need a reference batch, none was given$"):
        built(tmp_path, None, **num)
    with pytest.raises(SuiteError, match=r"^reference batch lacks column\(s\) \['x'\] named in reference_checks$"):
        built(tmp_path, pd.DataFrame({"n": [1]}), **num)
    with pytest.raises(SuiteError, match=r"^reference batch lacks column\(s\) \['cat'\]"):
        built(tmp_path, pd.DataFrame({"n": [1]}), reference_checks={"categorical": {"cat": {"kl_max": 1}}})
    with pytest.raises(SuiteError, match=r"^reference_checks\.numeric\.x: the reference batch has no non-null 'x'$"):
        built(tmp_path, pd.DataFrame({"x": [None, None]}, dtype="float64"), **num)


@pytest.mark.parametrize(("column", "classes"), [("flag", [True, False]), ("n", [1, 0])])
def test_label_checks_both_classes_and_the_positive_share(tmp_path: Path, column: str, classes: list[Any]) -> None:
    got = built(tmp_path, label={"column": column, "positive_share": {"min": 0.005, "max": 0.2}})
    (both,) = got["expect_column_distinct_values_to_equal_set"]
    assert both.column == column and list(both.value_set) == classes
    assert both.meta == {"rule": f"the label must hold both classes {classes}: one class alone cannot train a model"}
    (share,) = got["expect_column_mean_to_be_between"]
    assert (share.column, share.min_value, share.max_value) == (column, 0.005, 0.2)
    assert share.meta == {"rule": "expected the label's positive share in [0.005, 0.2]"}


def test_extra_expectations_are_built_by_class_name(tmp_path: Path) -> None:
    got = built(
        tmp_path,
        expectations=[
            {"type": "ExpectColumnToExist", "kwargs": {"column": "x"}},
            {
                "type": "ExpectColumnQuantileValuesToBeBetweenJsonSafe",
                "kwargs": {"column": "x", "quantile_ranges": {"quantiles": [0.5], "value_ranges": [[0, 1]]}},
            },
        ],
    )
    assert [e.column for e in got["expect_column_to_exist"]] == ["x"]
    assert len(got["expect_column_quantile_values_to_be_between_json_safe"]) == 1
    with pytest.raises(
        SuiteError,
        match=r"^expectations\[0\]\.type: unknown expectation 'Nothing'; use a class name from great_expectations",
    ):
        built(tmp_path, expectations=[{"type": "Nothing"}])


def test_event_time_window_on_the_batch_day_by_hand() -> None:
    import datetime as dt

    from include.mlops.data_quality.suite import EventTimeSpec, event_time_bounds

    spec = EventTimeSpec(
        "ts", before_batch_day_h=24, after_batch_day_h=1, after_landing_s=300, max_landing_delay_days=366
    )
    landed = dt.datetime(2024, 3, 10, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))  # 12:00 UTC
    utc = dt.UTC
    # on the day 2024-03-10: from 24 h before its start; until the landing + 300 s (before the day's end + 1 h)
    lo, hi, rule = event_time_bounds(spec, batch_date=dt.date(2024, 3, 10), landed_at=landed)
    assert (lo, hi) == (dt.datetime(2024, 3, 9, tzinfo=utc), dt.datetime(2024, 3, 10, 12, 5, tzinfo=utc))
    assert rule == (
        "event time must fall on the batch's day 2024-03-10 (-24 h, +1 h), not after the landing time "
        "2024-03-10T12:00:00Z + 300 s, not more than 366 days before it: expected values in "
        "[2024-03-09T00:00:00+00:00, 2024-03-10T12:05:00+00:00]"
    )
    # a batch of 2 days ago landed today: its day's end + 1 h bounds it, not the landing
    lo, hi, _ = event_time_bounds(spec, batch_date=dt.date(2024, 3, 8), landed_at=landed)
    assert (lo, hi) == (dt.datetime(2024, 3, 7, tzinfo=utc), dt.datetime(2024, 3, 9, 1, tzinfo=utc))
    # a batch of 2 years ago: landed more than 366 days later, the landing's bound wins (2023-03-10 12:00)
    lo, hi, _ = event_time_bounds(spec, batch_date=dt.date(2022, 3, 10), landed_at=landed)
    assert lo == dt.datetime(2023, 3, 10, 12, tzinfo=utc) and hi == dt.datetime(2022, 3, 11, 1, tzinfo=utc)
    # without a date: only the landing time bounds it
    lo, hi, rule = event_time_bounds(spec, batch_date=None, landed_at=landed)
    assert (lo, hi) == (dt.datetime(2023, 3, 10, 12, tzinfo=utc), dt.datetime(2024, 3, 10, 12, 5, tzinfo=utc))
    assert rule.startswith("event time must fall not after the landing time 2024-03-10T12:00:00Z + 300 s, ")


def test_event_time_expectation_or_the_problem_of_an_impossible_batch_date(tmp_path: Path) -> None:
    import datetime as dt

    from include.mlops.data_quality.suite import event_time_expectations

    utc = dt.UTC
    assert event_time_expectations(
        read_suite_spec(small(tmp_path)), batch_date=None, landed_at=dt.datetime.now(utc)
    ) == (
        [],
        None,
    )
    tight = {**EVENT_TIME, "before_batch_day_h": 0, "after_landing_s": 0}
    spec = read_suite_spec(small(tmp_path, event_time=tight))
    # landed one second into its own day: the window [00:00:00, 00:00:01] holds
    (exp,), problem = event_time_expectations(
        spec, batch_date=dt.date(2024, 3, 10), landed_at=dt.datetime(2024, 3, 10, 0, 0, 1, tzinfo=utc)
    )
    assert problem is None and exp.column == "ts"
    assert (exp.min_value, exp.max_value) == (
        dt.datetime(2024, 3, 10, tzinfo=utc),
        dt.datetime(2024, 3, 10, 0, 0, 1, tzinfo=utc),
    )
    assert exp.meta["rule"].startswith("event time must fall on the batch's day 2024-03-10")
    # landed at the very start of its day: the window is empty
    exps, problem = event_time_expectations(
        spec, batch_date=dt.date(2024, 3, 10), landed_at=dt.datetime(2024, 3, 10, tzinfo=utc)
    )
    assert exps == [] and problem is not None
    assert problem.startswith("the batch's date 2024-03-10 cannot hold its events: event time must fall on the batch's")


@pytest.mark.parametrize(
    ("section", "where"),
    [
        ({"ranges": ["x"]}, "ranges"),
        ({"value_sets": ["x"]}, "value_sets"),
        ({"reference_checks": ["x"]}, "reference_checks"),
        ({"reference_checks": {"numeric": ["x"]}}, "reference_checks.numeric"),
        ({"reference_checks": {"categorical": ["x"]}}, "reference_checks.categorical"),
    ],
)
def test_a_section_that_is_not_a_mapping_is_named(tmp_path: Path, section: dict[str, Any], where: str) -> None:
    refused(tmp_path, f"{where}: expected a mapping, got list ['x']", **section)


def test_a_negative_positive_share_minimum_is_named(tmp_path: Path) -> None:
    refused(
        tmp_path,
        "label.positive_share.min: must be >= 0, got -0.1",
        label={"column": "flag", "positive_share": {"min": -0.1, "max": 0.5}},
    )


def test_extra_expectation_kwargs_rejected_by_gx_name_each_field(tmp_path: Path) -> None:
    # no kwargs at all: every required field is named, joined by "; "
    with pytest.raises(SuiteError) as exc:
        built(tmp_path, expectations=[{"type": "ExpectColumnQuantileValuesToBeBetween"}])
    assert str(exc.value) == (
        "expectations[0].kwargs: ExpectColumnQuantileValuesToBeBetween rejects its kwargs: "
        "column: field required; quantile_ranges: field required"
    )


def test_quantile_bounds_take_the_nearest_reference_value_not_an_interpolation(tmp_path: Path) -> None:
    # 10, 20, 30, 40 at q 0.4: position 0.4 x 3 = 1.2, nearest is the 2nd value, 20 (linear would be 23)
    ref = pd.DataFrame({"x": [40.0, 10.0, 30.0, 20.0]})
    got = built(tmp_path, ref, reference_checks={"numeric": {"x": {"quantiles": [0.4]}}})
    (q,) = got["expect_column_quantile_values_to_be_between_json_safe"]
    assert q.quantile_ranges["value_ranges"] == [[20.0, 20.0]]  # tolerances default to 0
