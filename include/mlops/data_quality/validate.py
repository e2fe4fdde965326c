"""Validate one landed batch against the expectation suite with Great Expectations 1.x.

Always leaves a JSON result and a Data Docs site under report_dir, also when the batch cannot be
read or fails; the returned ValidationReport is what the DAG tags on MLflow and pushes to XCom.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.errors import BatchReadError, DataValidationError, SettingsError

if TYPE_CHECKING:
    import pandas as pd

    from include.mlops.data_quality.suite import SuiteSpec

__all__ = [
    "FailedExpectation",
    "InvalidBatchError",
    "ReferenceBatchError",
    "ValidationReport",
    "validate_batch",
]

RESULT_JSON_NAME = "validation_result.json"
DATA_DOCS_DIR = "data_docs"
_SITE_NAME = "batch_report"
# Pseudo expectation types for what is checked before GX can run.
READABLE = "batch_is_readable"
DTYPE = "column_dtype_matches_schema"
BATCH_DATE = "batch_date_matches_landing_time"
# The batch's date in its file name: transactions_YYYY-MM-DD.parquet, transactions_YYYY-MM-DD_2.csv, ...
_DATE_IN_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})")
# Expectations that still say something useful about a column of the wrong dtype; others would
# only fail deep inside pandas (e.g. comparing text with numbers).
_DTYPE_SAFE = ("expect_column_values_to_be_of_type", "expect_column_values_to_not_be_null")
_MAX_EXAMPLES = 5


class InvalidBatchError(DataValidationError, BatchReadError):
    """The batch could not be read at all; it is both a read error and a failed validation."""


class ReferenceBatchError(SettingsError):
    """The reference batch the drift checks compare with is missing or unreadable (a setup problem)."""


@dataclass(frozen=True)
class FailedExpectation:
    """One failed expectation: what rule, on which column, what was seen, and the rule's bounds."""

    expectation_type: str
    column: str | None
    observed_value: Any
    details: str

    def line(self) -> str:
        where = f" on column {self.column!r}" if self.column else ""
        return f"{self.expectation_type}{where}: observed {_short(self.observed_value)} ({self.details})"


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of validate_batch. duration_s is the GX validation alone (read and Data Docs excluded)."""

    success: bool
    batch_path: str
    suite_name: str
    row_count: int
    n_expectations: int
    failures: tuple[FailedExpectation, ...]
    fingerprint: str
    result_json_path: str
    data_docs_index_path: str
    duration_s: float
    read_s: float = 0.0
    data_docs_s: float = 0.0
    skipped_expectations: tuple[str, ...] = field(default=())

    def summary(self) -> dict[str, Any]:
        """JSON-safe flat summary for MLflow tags / XCom (failures as one-line strings)."""
        return {
            "success": self.success,
            "batch_path": self.batch_path,
            "suite_name": self.suite_name,
            "row_count": self.row_count,
            "n_expectations": self.n_expectations,
            "n_failures": len(self.failures),
            "failures": [f.line() for f in self.failures],
            "skipped_expectations": list(self.skipped_expectations),
            "fingerprint": self.fingerprint,
            "result_json_path": self.result_json_path,
            "data_docs_index_path": self.data_docs_index_path,
            "duration_s": round(self.duration_s, 4),
        }

    def raise_for_failures(self) -> None:
        """Raise DataValidationError (InvalidBatchError if unreadable) listing every failure."""
        if self.success:
            return
        lines = "\n".join(f"  - {f.line()}" for f in self.failures)
        msg = (
            f"batch {self.batch_path} failed suite {self.suite_name!r}: "
            f"{len(self.failures)} failed of {self.n_expectations} expectations\n{lines}\n"
            f"report: {self.result_json_path}\ndata docs: {self.data_docs_index_path}"
        )
        if any(f.expectation_type == READABLE for f in self.failures):
            raise InvalidBatchError(msg)
        raise DataValidationError(msg)


def validate_batch(
    batch_path: str | Path,
    suite_path: str | Path,
    reference_path: str | Path,
    *,
    report_dir: str | Path,
    batch_date: datetime.date | None = None,
    landed_at: datetime.datetime | None = None,
) -> ValidationReport:
    """Validate the batch at `batch_path`; never raises for bad data, only for a bad setup.

    Read failures and schema mismatches (missing/extra columns, wrong dtypes) become failures in
    the report; expectations that cannot run on a broken column are skipped and listed. Raises
    SuiteError (bad suite YAML) or ReferenceBatchError (bad reference). Call
    `.raise_for_failures()` on the result to stop a pipeline.

    The event-time check compares with `batch_date` (default: the date in the file name, if any)
    and `landed_at` (default: the file's modification time, when it landed).
    """
    import pandas as pd

    from include.mlops.data.batches import fingerprint, read_batch

    batch_path = Path(batch_path)
    report_dir = Path(report_dir)
    spec, expectations = _suite_and_expectations(Path(suite_path), Path(reference_path))
    batch_date, landed_at = _batch_time(batch_path, batch_date, landed_at)
    from include.mlops.data_quality.suite import event_time_expectations

    time_checks, date_problem = event_time_expectations(spec, batch_date=batch_date, landed_at=landed_at)
    expectations += time_checks

    t0 = time.perf_counter()
    failures: list[FailedExpectation] = []
    try:
        digest = fingerprint(batch_path)
    except (BatchReadError, OSError):
        digest = ""
    try:
        df = read_batch(batch_path)
    except BatchReadError as exc:
        failures.append(FailedExpectation(READABLE, None, type(exc).__name__, str(exc)))
        df = pd.DataFrame()
    read_s = time.perf_counter() - t0

    if date_problem is not None:
        failures.append(FailedExpectation(BATCH_DATE, None, str(batch_date), date_problem))
    broken, dtype_failures = _schema_precheck(spec, df)
    runnable, skipped = [], []
    for exp in expectations:
        col = getattr(exp, "column", None)
        if col in broken and (broken[col] == "missing" or exp.expectation_type not in _DTYPE_SAFE):
            skipped.append(f"{exp.expectation_type}({col})")
        else:
            runnable.append(exp)
    if failures:  # unreadable: only the table-level checks ran, on an empty frame
        skipped = [f"{len(skipped)} column checks (batch unreadable)"]

    run = _run_gx(spec.name, runnable, df, report_dir)
    gx_failures = [_failure(r) for r in run.result.results if not r.success]
    # The pre-check names the exact pandas dtype and the schema's; GX's type check only its own
    # type names (e.g. "Timestamp"), so keep the pre-check's line for a column both flag.
    wrong_dtype = {f.column for f in dtype_failures}
    failures += dtype_failures
    failures += [
        f
        for f in gx_failures
        if not (f.expectation_type == "expect_column_values_to_be_of_type" and f.column in wrong_dtype)
    ]

    report = ValidationReport(
        success=not failures,
        batch_path=str(batch_path),
        suite_name=spec.name,
        row_count=len(df),
        n_expectations=len(expectations),
        failures=tuple(failures),
        fingerprint=digest,
        result_json_path=str(report_dir / RESULT_JSON_NAME),
        data_docs_index_path=str(run.docs_index),
        duration_s=run.validate_s,
        read_s=read_s,
        data_docs_s=run.docs_s,
        skipped_expectations=tuple(skipped),
    )
    _write_json_atomic(
        report_dir / RESULT_JSON_NAME,
        {
            "summary": report.summary(),
            "failures": [asdict(f) for f in report.failures],
            "gx_result": run.result.to_json_dict(),
        },
    )
    return report


def _batch_time(
    path: Path, batch_date: datetime.date | None, landed_at: datetime.datetime | None
) -> tuple[datetime.date | None, datetime.datetime]:
    """The batch's date (argument, else the file name's) and landing time (argument, else mtime)."""
    if batch_date is None:
        m = _DATE_IN_NAME.search(path.name)
        if m:
            try:
                batch_date = datetime.date.fromisoformat(m.group(1))
            except ValueError:  # 2026-13-45: not a date, so the name carries none
                batch_date = None
    if landed_at is None:
        try:
            landed_at = datetime.datetime.fromtimestamp(path.stat().st_mtime, tz=datetime.UTC)
        except OSError:  # unreadable or missing: the read check reports it; bound by now
            landed_at = datetime.datetime.now(datetime.UTC)
    elif landed_at.tzinfo is None:
        raise SettingsError(f"landed_at={landed_at!r}: must be timezone-aware (e.g. UTC)")
    return batch_date, landed_at


# --- suite and reference (cached per process: the DAG worker validates many batches) ---------

_SUITE_CACHE: dict[tuple[Any, ...], tuple[SuiteSpec, list[Any]]] = {}


def _file_key(p: Path) -> tuple[str, int, int]:
    st = p.stat()
    return (str(p.resolve()), st.st_mtime_ns, st.st_size)


def _suite_and_expectations(suite_path: Path, reference_path: Path) -> tuple[SuiteSpec, list[Any]]:
    from include.mlops.data.batches import read_batch
    from include.mlops.data_quality.suite import SuiteError, build_expectations, read_suite_spec

    if not suite_path.is_file():
        raise SuiteError(f"suite file {suite_path} does not exist")
    try:
        ref_key = _file_key(reference_path)
    except FileNotFoundError as exc:
        raise ReferenceBatchError(
            f"reference batch {reference_path} does not exist; create it with "
            "include.mlops.data.generate.write_reference() or point the suite at the right file"
        ) from exc
    key = (_file_key(suite_path), ref_key)
    if key not in _SUITE_CACHE:
        spec = read_suite_spec(suite_path)
        try:
            reference = read_batch(reference_path)
        except BatchReadError as exc:
            raise ReferenceBatchError(f"reference batch unusable: {exc}") from exc
        _SUITE_CACHE.clear()  # one suite/reference pair in use per worker; don't grow
        _SUITE_CACHE[key] = (spec, build_expectations(spec, reference))
    spec, expectations = _SUITE_CACHE[key]
    # GX binds expectations to the suite they are added to: hand out fresh copies each run.
    return spec, [e.copy(deep=True) for e in expectations]


def _schema_precheck(spec: SuiteSpec, df: pd.DataFrame) -> tuple[dict[str, str], list[FailedExpectation]]:
    """Columns GX must not run value checks on ("missing"/"dtype"), and one failure per wrong dtype."""
    from include.mlops.data_quality.suite import dtype_matches

    broken: dict[str, str] = {}
    failures = []
    for col, expected in spec.column_dtypes.items():
        if col not in df.columns:
            broken[col] = "missing"
        elif not dtype_matches(expected, df[col].dtype):
            broken[col] = "dtype"
            failures.append(FailedExpectation(DTYPE, col, str(df[col].dtype), f"schema declares {expected}"))
    return broken, failures


# --- Great Expectations run --------------------------------------------------------------------


@dataclass(frozen=True)
class _GxRun:
    result: Any  # ExpectationSuiteValidationResult
    validate_s: float
    docs_s: float
    docs_index: Path


def _run_gx(suite_name: str, expectations: list[Any], df: pd.DataFrame, report_dir: Path) -> _GxRun:
    import great_expectations as gx

    docs_dir = (report_dir / DATA_DOCS_DIR).resolve()
    docs_dir.mkdir(parents=True, exist_ok=True)
    # A fresh ephemeral context per batch (about 0.1 s): its in-memory result store then holds only
    # this validation, so the Data Docs site under report_dir shows this batch and nothing else.
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={
            _SITE_NAME: {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
        # Workers run without internet: no usage-statistics calls, no progress bars in task logs.
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    ctx = gx.get_context(mode="ephemeral", project_config=config)
    batch_def = (
        ctx.data_sources.add_pandas("landing")
        .add_dataframe_asset("transactions")
        .add_batch_definition_whole_dataframe("whole_batch")
    )
    suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name, expectations=expectations))
    definition = ctx.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite_name}_on_landing", data=batch_def, suite=suite)
    )
    t0 = time.perf_counter()
    # BASIC keeps observed values and unexpected examples at ~70% of SUMMARY's cost (no value counts).
    result = definition.run(batch_parameters={"dataframe": df}, result_format="BASIC")
    validate_s = time.perf_counter() - t0
    # What a Checkpoint's UpdateDataDocsAction does, kept out of the timed validation (~0.6 s).
    t1 = time.perf_counter()
    ctx.build_data_docs(site_names=[_SITE_NAME])
    docs_s = time.perf_counter() - t1
    return _GxRun(result, validate_s, docs_s, docs_dir / "index.html")


# --- turning GX results into FailedExpectation -------------------------------------------------


def _failure(r: Any) -> FailedExpectation:
    cfg = r.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("column", "batch_id")}
    res = r.result or {}
    details = (cfg.meta or {}).get("rule") or _rule(cfg.type, kwargs)
    if "observed_value" in res:
        observed = res["observed_value"]
        mismatched = (res.get("details") or {}).get("mismatched")
        if cfg.type == "expect_table_columns_to_match_set" and mismatched:
            observed = {k: v for k, v in mismatched.items() if v}
        partition = (res.get("details") or {}).get("observed_partition")
        if observed is None and partition:
            # GX gives no KL number when the batch has values outside the reference partition.
            observed = {"shares": dict(zip(map(str, partition["values"]), partition["weights"], strict=False))}
        if observed is None and res.get("partial_missing_list"):
            # a set check (the label's classes): name what is missing, not "None"
            observed = {"missing_values": res["partial_missing_list"]}
    elif "unexpected_count" in res:
        observed = {
            "unexpected_count": res["unexpected_count"],
            "unexpected_percent": res.get("unexpected_percent"),
            "examples": sorted({_short(v) for v in (res.get("partial_unexpected_list") or [])})[:_MAX_EXAMPLES],
        }
    else:
        observed = None
    exc = r.exception_info or {}
    if exc.get("raised_exception"):
        details += f"; GX could not evaluate it: {_first_line(exc.get('exception_message'))}"
    return FailedExpectation(cfg.type, cfg.kwargs.get("column"), _json_safe(observed), details)


def _rule(kind: str, kwargs: dict[str, Any]) -> str:
    if "value_set" in kwargs:
        return f"allowed values {list(kwargs['value_set'])}"
    if "column_set" in kwargs:
        return f"expected columns {sorted(kwargs['column_set'])}"
    if "partition_object" in kwargs:
        return f"KL divergence from the reference shares must be < {kwargs.get('threshold')}"
    if "quantile_ranges" in kwargs:
        qr = kwargs["quantile_ranges"]
        pairs = ", ".join(
            f"q{q:g} in [{lo:.4g}, {hi:.4g}]" for q, (lo, hi) in zip(qr["quantiles"], qr["value_ranges"], strict=True)
        )
        return f"expected {pairs}"
    if "min_value" in kwargs or "max_value" in kwargs:
        lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
        what = "mean" if "mean" in kind else "row count" if "row_count" in kind else "values"
        return f"expected {what} in [{_short(lo)}, {_short(hi)}]"
    if "type_" in kwargs:
        return f"expected type {kwargs['type_']}"
    if kind == "expect_column_values_to_not_be_null":
        return "expected no nulls"
    if kind == "expect_column_values_to_be_unique":
        return "expected every value to be unique"
    shown = {k: v for k, v in kwargs.items() if k not in ("mostly", "result_format", "meta")}
    return ", ".join(f"{k}={_short(v)}" for k, v in shown.items()) or kind


def _json_safe(v: Any) -> Any:
    if v is None or isinstance(v, (bool, str, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_json_safe(x) for x in v]
    if hasattr(v, "item"):  # numpy scalar
        return _json_safe(v.item())
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _short(v: Any, limit: int = 160) -> str:
    if isinstance(v, float):
        s = "NaN" if math.isnan(v) else f"{v:.6g}"
    elif hasattr(v, "item") and not isinstance(v, (list, dict)):
        return _short(v.item(), limit)
    else:
        s = json.dumps(_json_safe(v)) if isinstance(v, (dict, list, tuple)) else str(v)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _first_line(msg: Any) -> str:
    lines = str(msg or "").strip().splitlines()
    return lines[0][:300] if lines else "no message"


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_json_safe(payload), f, indent=2, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
