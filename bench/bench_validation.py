"""Throughput of the transactions suite on a 100k-row batch: Great Expectations vs plain pandas.

The baseline evaluates the very same expectation objects (same bounds, same reference) with
vectorised pandas, so the ratio is GX's overhead. Run: PYTHONPATH=. .venv/bin/python bench/bench_validation.py
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from include.mlops.data.batches import read_batch
from include.mlops.data.generate import write_batch, write_reference
from include.mlops.data_quality.suite import dtype_matches, read_suite_spec
from include.mlops.data_quality.validate import _suite_and_expectations, validate_batch

SUITE = Path(__file__).resolve().parents[1] / "include" / "data" / "suites" / "transactions.yaml"


def pandas_check(exp: Any, df: pd.DataFrame) -> bool:
    """One expectation, evaluated with pandas the way GX defines it (nulls ignored by value checks)."""
    kind = exp.expectation_type
    col = getattr(exp, "column", None)
    s = df[col] if col is not None else None
    if kind == "expect_table_columns_to_match_set":
        return set(df.columns) == set(exp.column_set)
    if kind == "expect_table_row_count_to_be_between":
        return exp.min_value <= len(df) <= exp.max_value
    if kind == "expect_column_values_to_be_of_type":
        return True  # the dtype pre-check below covers it for every column at once
    if kind == "expect_column_values_to_not_be_null":
        return not s.isna().any()
    if kind == "expect_column_values_to_be_unique":
        return not s.dropna().duplicated().any()
    if kind == "expect_column_values_to_be_between":
        v = s.dropna()
        return bool(((v >= exp.min_value) & (v <= exp.max_value)).all())
    if kind == "expect_column_values_to_be_in_set":
        return bool(s.dropna().isin(list(exp.value_set)).all())
    if kind == "expect_column_mean_to_be_between":
        return exp.min_value <= s.mean() <= exp.max_value
    if kind == "expect_column_quantile_values_to_be_between_json_safe":
        qr = exp.quantile_ranges
        got = s.quantile(qr["quantiles"], interpolation="nearest").to_numpy()
        return all(lo <= g <= hi for g, (lo, hi) in zip(got, qr["value_ranges"], strict=True))
    if kind == "expect_column_kl_divergence_to_be_less_than":
        po = exp.partition_object
        shares = s.value_counts(normalize=True)
        observed = np.array([shares.get(v, 0.0) for v in po["values"]])
        expected = np.array(po["weights"])
        mask = observed > 0
        kl = float(np.sum(observed[mask] * np.log(observed[mask] / expected[mask])))
        return math.isfinite(kl) and kl < exp.threshold
    if kind == "expect_column_values_to_match_regex":
        return bool(s.dropna().str.contains(re.compile(exp.regex)).all())
    raise NotImplementedError(kind)


def pandas_suite(expectations: list[Any], dtypes: dict[str, str], df: pd.DataFrame) -> bool:
    ok = all(dtype_matches(dt, df[c].dtype) for c, dt in dtypes.items() if c in df.columns)
    return ok and all(pandas_check(e, df) for e in expectations)


def timed(fn: Any, repeat: int) -> tuple[float, float, Any]:
    """Median wall seconds, median CPU seconds of this process, last result."""
    walls, cpus, out = [], [], None
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-validation-"))
    ref = write_reference(work / "reference.parquet", seed=0, n_rows=50_000)
    batch = write_batch(work / "landing", "2026-11-02", n_rows=args.rows, seed=3)
    df = read_batch(batch)
    spec = read_suite_spec(SUITE)
    _, expectations = _suite_and_expectations(SUITE, ref)

    validate_batch(batch, SUITE, ref, report_dir=work / "warmup")  # imports, caches
    reports = []

    def gx_once() -> Any:
        r = validate_batch(batch, SUITE, ref, report_dir=work / f"report{len(reports)}")
        reports.append(r)
        return r

    call_wall, call_cpu, last = timed(gx_once, args.repeat)
    assert last.success, last.summary()
    gx_validate = statistics.median(r.duration_s for r in reports)
    gx_docs = statistics.median(r.data_docs_s for r in reports)
    pd_wall, pd_cpu, ok = timed(lambda: pandas_suite(expectations, spec.column_dtypes, df), args.repeat)
    assert ok

    n = len(df)
    print(f"suite: {len(expectations)} expectations, batch: {n} rows, median of {args.repeat}")
    print(f"{'':34}{'seconds':>10}{'rows/s':>14}{'x pandas':>10}")
    rows = [
        ("pandas baseline (same checks)", pd_wall),
        ("GX validation (timed part)", gx_validate),
        ("GX Data Docs build", gx_docs),
        ("validate_batch() whole call", call_wall),
    ]
    for name, s in rows:
        print(f"{name:34}{s:>10.3f}{n / s:>14,.0f}{s / pd_wall:>10.1f}")
    print(f"CPU seconds: pandas {pd_cpu:.3f}, validate_batch() {call_cpu:.3f} (ratio {call_cpu / pd_cpu:.1f})")
    print(f"target: GX validation < 1 s on 100k rows -> {'met' if gx_validate < 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
