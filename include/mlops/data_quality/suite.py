"""The expectation suite as data: YAML -> checked SuiteSpec -> Great Expectations ExpectationSuite.

Drift bounds (reference_checks) are resolved against a reference batch at load time, so the YAML
holds tolerances, never numbers copied from one day's data. Malformed YAML fails with the key path.
"""

from __future__ import annotations

import datetime
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.errors import SettingsError

if TYPE_CHECKING:
    import great_expectations as gx
    import pandas as pd

__all__ = [
    "DATETIME_UTC",
    "EventTimeSpec",
    "LabelSpec",
    "SuiteError",
    "SuiteSpec",
    "build_expectations",
    "dtype_matches",
    "event_time_bounds",
    "event_time_expectations",
    "load_suite",
    "read_suite_spec",
]

DATETIME_UTC = "datetime64[UTC]"
_SCALAR_DTYPES = ("str", "float64", "int64", "bool", DATETIME_UTC)
_NUMERIC_DTYPES = ("float64", "int64")
# What GX's ExpectColumnValuesToBeOfType observes for each dtype on pandas: tz-aware timestamps are
# checked by element type. dtype_matches() in the validation pre-check is the strict check.
_GX_TYPE_NAMES = {"str": "str", "float64": "float64", "int64": "int64", "bool": "bool", DATETIME_UTC: "Timestamp"}
_TOP_KEYS = (
    "name",
    "row_count",
    "schema",
    "not_null",
    "unique",
    "ranges",
    "value_sets",
    "reference_checks",
    "event_time",
    "label",
    "expectations",
)
_NUMERIC_REF_KEYS = ("mean_rel_tolerance", "quantiles", "quantile_rel_tolerance", "quantile_abs_tolerance")
_EVENT_TIME_KEYS = ("column", "before_batch_day_h", "after_batch_day_h", "after_landing_s", "max_landing_delay_days")
_LABEL_KEYS = ("column", "positive_share")


class SuiteError(SettingsError):
    """The suite YAML is malformed: the message names the key path (and entry index) at fault."""


@dataclass(frozen=True)
class EventTimeSpec:
    """Event time against the batch's day and its landing time (tolerances from the suite)."""

    column: str
    before_batch_day_h: float  # events of the day before that arrive late
    after_batch_day_h: float
    after_landing_s: float  # clock skew between producers and the landing zone
    max_landing_delay_days: float  # how late a batch may land (backfills)


@dataclass(frozen=True)
class LabelSpec:
    """The label column: both classes present, the positive share within bounds."""

    column: str
    positive_share_min: float
    positive_share_max: float


@dataclass(frozen=True)
class SuiteSpec:
    """A checked suite file. Mappings are plain dicts (YAML shapes), checked by read_suite_spec."""

    name: str
    path: str
    row_count_min: int
    row_count_max: int
    column_dtypes: dict[str, str]
    not_null: tuple[str, ...]
    unique: tuple[str, ...]
    ranges: dict[str, tuple[float, float]]
    value_sets: dict[str, tuple[Any, ...]]
    numeric_reference: dict[str, dict[str, Any]]
    categorical_kl_max: dict[str, float]
    extra: tuple[dict[str, Any], ...]
    event_time: EventTimeSpec | None = None
    label: LabelSpec | None = None


def dtype_matches(expected: str, actual: Any) -> bool:
    """Whether a pandas dtype is what the suite's schema declares ("datetime64[UTC]": any unit, UTC)."""
    import pandas as pd

    if expected == DATETIME_UTC:
        return isinstance(actual, pd.DatetimeTZDtype) and str(actual.tz) == "UTC"
    return str(actual) == expected


def _fail(where: str, msg: str) -> SuiteError:
    return SuiteError(f"{where}: {msg}")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(where, f"expected a mapping, got {type(value).__name__} {value!r}")
    return value


def _number(value: Any, where: str, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(where, f"expected a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise _fail(where, f"must be >= {minimum}, got {value!r}")
    return float(value)


def _columns(value: Any, where: str, known: Mapping[str, str]) -> tuple[str, ...]:
    if value == "all":
        return tuple(known)
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise _fail(where, f"expected 'all' or a list of column names, got {value!r}")
    for i, c in enumerate(value):
        _known_column(c, f"{where}[{i}]", known)
    return tuple(value)


def _known_column(col: str, where: str, known: Mapping[str, str]) -> None:
    if col not in known:
        hint = difflib.get_close_matches(col, list(known), n=1)
        raise _fail(where, f"column {col!r} is not in schema" + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def read_suite_spec(path: str | Path) -> SuiteSpec:
    """Parse and check the suite YAML; raises SuiteError naming the key path of the first problem."""
    import yaml

    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except FileNotFoundError as exc:
        raise SuiteError(f"suite file {p} does not exist") from exc
    except yaml.YAMLError as exc:
        raise SuiteError(f"suite file {p} is not valid YAML: {exc}") from exc
    doc = _mapping(raw, f"{p}")
    unknown = sorted(set(doc) - set(_TOP_KEYS))
    if unknown:
        raise _fail(f"{p}", f"unknown top-level key(s) {unknown}; allowed: {', '.join(_TOP_KEYS)}")
    for key in ("name", "schema", "row_count"):
        if key not in doc:
            raise _fail(f"{p}", f"missing required key {key!r}")

    schema = _mapping(doc["schema"], "schema")
    if not schema:
        raise _fail("schema", "declares no columns")
    dtypes: dict[str, str] = {}
    for col, dt in schema.items():
        if dt not in _SCALAR_DTYPES:
            raise _fail(f"schema.{col}", f"unknown dtype {dt!r}; allowed: {', '.join(_SCALAR_DTYPES)}")
        dtypes[str(col)] = dt

    rc = _mapping(doc["row_count"], "row_count")
    rc_min = int(_number(rc.get("min"), "row_count.min", minimum=0))
    rc_max = int(_number(rc.get("max"), "row_count.max", minimum=rc_min))

    ranges: dict[str, tuple[float, float]] = {}
    for col, r in _mapping(doc.get("ranges", {}), "ranges").items():
        where = f"ranges.{col}"
        _known_column(col, where, dtypes)
        if dtypes[col] not in _NUMERIC_DTYPES:
            raise _fail(where, f"column {col!r} has dtype {dtypes[col]}; ranges apply to numeric columns")
        r = _mapping(r, where)
        lo = _number(r.get("min"), f"{where}.min")
        ranges[col] = (lo, _number(r.get("max"), f"{where}.max", minimum=lo))

    value_sets: dict[str, tuple[Any, ...]] = {}
    for col, values in _mapping(doc.get("value_sets", {}), "value_sets").items():
        where = f"value_sets.{col}"
        _known_column(col, where, dtypes)
        if not isinstance(values, list) or not values:
            raise _fail(where, f"expected a non-empty list of values, got {values!r}")
        value_sets[col] = tuple(values)

    ref = _mapping(doc.get("reference_checks", {}), "reference_checks")
    unknown = sorted(set(ref) - {"numeric", "categorical"})
    if unknown:
        raise _fail("reference_checks", f"unknown key(s) {unknown}; allowed: numeric, categorical")
    numeric_ref: dict[str, dict[str, Any]] = {}
    for col, spec in _mapping(ref.get("numeric", {}), "reference_checks.numeric").items():
        where = f"reference_checks.numeric.{col}"
        _known_column(col, where, dtypes)
        spec = _mapping(spec, where)
        bad = sorted(set(spec) - set(_NUMERIC_REF_KEYS))
        if bad:
            raise _fail(where, f"unknown key(s) {bad}; allowed: {', '.join(_NUMERIC_REF_KEYS)}")
        checked: dict[str, Any] = {}
        if "mean_rel_tolerance" in spec:
            checked["mean_rel_tolerance"] = _number(
                spec["mean_rel_tolerance"], f"{where}.mean_rel_tolerance", minimum=0
            )
        if "quantiles" in spec:
            qs = spec["quantiles"]
            if not isinstance(qs, list) or not qs:
                raise _fail(f"{where}.quantiles", f"expected a non-empty list of numbers in [0, 1], got {qs!r}")
            checked["quantiles"] = [_number(q, f"{where}.quantiles[{i}]", minimum=0) for i, q in enumerate(qs)]
            if max(checked["quantiles"]) > 1:
                raise _fail(f"{where}.quantiles", f"quantiles must lie in [0, 1], got {qs!r}")
            for key in ("quantile_rel_tolerance", "quantile_abs_tolerance"):
                checked[key] = _number(spec.get(key, 0.0), f"{where}.{key}", minimum=0)
        numeric_ref[col] = checked
    kl_max: dict[str, float] = {}
    for col, spec in _mapping(ref.get("categorical", {}), "reference_checks.categorical").items():
        where = f"reference_checks.categorical.{col}"
        _known_column(col, where, dtypes)
        spec = _mapping(spec, where)
        if set(spec) != {"kl_max"}:
            raise _fail(where, f"expected exactly the key 'kl_max', got {sorted(spec)}")
        kl_max[col] = _number(spec["kl_max"], f"{where}.kl_max", minimum=0)

    event_time = _event_time_spec(doc.get("event_time"), dtypes)
    label = _label_spec(doc.get("label"), dtypes)

    extra = doc.get("expectations", [])
    if not isinstance(extra, list):
        raise _fail("expectations", f"expected a list of {{type, kwargs}} entries, got {type(extra).__name__}")
    for i, entry in enumerate(extra):
        where = f"expectations[{i}]"
        entry = _mapping(entry, where)
        if "type" not in entry:
            raise _fail(where, "missing key 'type' (a class name in gx.expectations)")
        bad = sorted(set(entry) - {"type", "kwargs"})
        if bad:
            raise _fail(where, f"unknown key(s) {bad}; allowed: type, kwargs")
        if not isinstance(entry["type"], str):
            raise _fail(f"{where}.type", f"expected a class name string, got {entry['type']!r}")
        _mapping(entry.get("kwargs", {}), f"{where}.kwargs")

    return SuiteSpec(
        name=str(doc["name"]),
        path=str(p),
        row_count_min=rc_min,
        row_count_max=rc_max,
        column_dtypes=dtypes,
        not_null=_columns(doc.get("not_null", []), "not_null", dtypes),
        unique=_columns(doc.get("unique", []), "unique", dtypes),
        ranges=ranges,
        value_sets=value_sets,
        numeric_reference=numeric_ref,
        categorical_kl_max=kl_max,
        extra=tuple(dict(e) for e in extra),
        event_time=event_time,
        label=label,
    )


def _checked_keys(value: Any, where: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    doc = _mapping(value, where)
    unknown = sorted(set(doc) - set(allowed))
    missing = sorted(set(allowed) - set(doc))
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; allowed: {', '.join(allowed)}")
    if missing:
        raise _fail(where, f"missing key(s) {missing}")
    return doc


def _event_time_spec(value: Any, dtypes: Mapping[str, str]) -> EventTimeSpec | None:
    if value is None:
        return None
    doc = _checked_keys(value, "event_time", _EVENT_TIME_KEYS)
    col = doc["column"]
    _known_column(col, "event_time.column", dtypes)
    if dtypes[col] != DATETIME_UTC:
        raise _fail("event_time.column", f"column {col!r} has dtype {dtypes[col]}; event time must be {DATETIME_UTC}")
    num = {k: _number(doc[k], f"event_time.{k}", minimum=0) for k in _EVENT_TIME_KEYS[1:]}
    return EventTimeSpec(column=col, **num)


def _label_spec(value: Any, dtypes: Mapping[str, str]) -> LabelSpec | None:
    if value is None:
        return None
    doc = _checked_keys(value, "label", _LABEL_KEYS)
    col = doc["column"]
    _known_column(col, "label.column", dtypes)
    if dtypes[col] not in ("bool", "int64"):
        raise _fail("label.column", f"column {col!r} has dtype {dtypes[col]}; a binary label is bool or int64 0/1")
    share = _checked_keys(doc["positive_share"], "label.positive_share", ("min", "max"))
    lo = _number(share["min"], "label.positive_share.min", minimum=0)
    hi = _number(share["max"], "label.positive_share.max", minimum=lo)
    if hi > 1 or lo <= 0 or hi >= 1:
        raise _fail("label.positive_share", f"bounds must lie strictly inside (0, 1), got [{lo}, {hi}]")
    return LabelSpec(column=col, positive_share_min=lo, positive_share_max=hi)


def _expectation_class(name: str, where: str) -> type:
    import great_expectations as gx

    from include.mlops.data_quality.expectations import CUSTOM_EXPECTATIONS

    known = {n: getattr(gx.expectations, n) for n in dir(gx.expectations) if n.startswith("Expect")}
    known.update(CUSTOM_EXPECTATIONS)
    if name not in known:
        hint = difflib.get_close_matches(name, list(known), n=1)
        raise _fail(
            where,
            f"unknown expectation {name!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + "; use a class name from great_expectations.expectations",
        )
    cls: type = known[name]
    return cls


def _make(cls: type, kwargs: dict[str, Any], where: str) -> Any:
    import pydantic

    try:
        return cls(**kwargs)
    except (pydantic.ValidationError, pydantic.v1.ValidationError) as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err.get('loc', ())) or '(entry)'}: {err.get('msg')}" for err in exc.errors()
        )
        raise _fail(where, f"{cls.__name__} rejects its kwargs: {problems}") from exc
    except (TypeError, ValueError) as exc:
        raise _fail(where, f"{cls.__name__} rejects its kwargs: {exc}") from exc


def _py(v: Any) -> Any:
    """numpy scalar -> Python scalar (GX's stores serialise kwargs with the json module)."""
    return v.item() if hasattr(v, "item") else v


def build_expectations(spec: SuiteSpec, reference_df: pd.DataFrame | None) -> list[Any]:
    """The GX expectation objects of a suite; reference_checks need `reference_df`."""
    import great_expectations as gx

    from include.mlops.data_quality.expectations import ExpectColumnQuantileValuesToBeBetweenJsonSafe

    e = gx.expectations
    out: list[Any] = [
        e.ExpectTableColumnsToMatchSet(column_set=list(spec.column_dtypes), exact_match=True),
        e.ExpectTableRowCountToBeBetween(min_value=spec.row_count_min, max_value=spec.row_count_max),
    ]
    for col, dt in spec.column_dtypes.items():
        out.append(e.ExpectColumnValuesToBeOfType(column=col, type_=_GX_TYPE_NAMES[dt]))
    out += [e.ExpectColumnValuesToNotBeNull(column=col) for col in spec.not_null]
    out += [e.ExpectColumnValuesToBeUnique(column=col) for col in spec.unique]
    for col, (lo, hi) in spec.ranges.items():
        out.append(e.ExpectColumnValuesToBeBetween(column=col, min_value=lo, max_value=hi))
    out += [e.ExpectColumnValuesToBeInSet(column=col, value_set=list(vs)) for col, vs in spec.value_sets.items()]

    if spec.numeric_reference or spec.categorical_kl_max:
        if reference_df is None:
            raise SuiteError(f"{spec.path}: reference_checks need a reference batch, none was given")
        missing = [c for c in (*spec.numeric_reference, *spec.categorical_kl_max) if c not in reference_df.columns]
        if missing:
            raise SuiteError(f"reference batch lacks column(s) {missing} named in reference_checks")
    for col, checks in spec.numeric_reference.items():
        assert reference_df is not None
        values = reference_df[col].dropna()
        if len(values) == 0:
            raise SuiteError(f"reference_checks.numeric.{col}: the reference batch has no non-null {col!r}")
        if "mean_rel_tolerance" in checks:
            mean = float(values.mean())
            tol = checks["mean_rel_tolerance"] * abs(mean)
            out.append(e.ExpectColumnMeanToBeBetween(column=col, min_value=mean - tol, max_value=mean + tol))
        if "quantiles" in checks:
            qs = checks["quantiles"]
            # "nearest" is what GX's pandas quantile metric uses: reference and batch agree on method.
            ref_q = [float(v) for v in values.quantile(qs, interpolation="nearest")]
            ranges = []
            for v in ref_q:
                tol = max(checks["quantile_rel_tolerance"] * abs(v), checks["quantile_abs_tolerance"])
                ranges.append([v - tol, v + tol])
            out.append(
                ExpectColumnQuantileValuesToBeBetweenJsonSafe(
                    column=col, quantile_ranges={"quantiles": qs, "value_ranges": ranges}
                )
            )
    for col, kl in spec.categorical_kl_max.items():
        assert reference_df is not None
        shares = reference_df[col].value_counts(normalize=True, dropna=True)
        # Categories of the declared vocabulary absent from the reference get a tiny share, so a
        # batch that has them shows a large but finite divergence instead of an infinite one.
        vocab = list(spec.value_sets.get(col, ())) or [_py(v) for v in shares.index]
        weights = [max(float(shares.get(v, 0.0)), 1e-6) for v in vocab]
        total = sum(weights)
        out.append(
            e.ExpectColumnKLDivergenceToBeLessThan(
                column=col,
                partition_object={"values": vocab, "weights": [w / total for w in weights]},
                threshold=kl,
            )
        )

    if spec.label is not None:
        lab = spec.label
        classes: list[Any] = [True, False] if spec.column_dtypes[lab.column] == "bool" else [1, 0]
        out.append(
            e.ExpectColumnDistinctValuesToEqualSet(
                column=lab.column,
                value_set=classes,
                meta={"rule": f"the label must hold both classes {classes}: one class alone cannot train a model"},
            )
        )
        out.append(
            e.ExpectColumnMeanToBeBetween(
                column=lab.column,
                min_value=lab.positive_share_min,
                max_value=lab.positive_share_max,
                meta={
                    "rule": f"expected the label's positive share in "
                    f"[{lab.positive_share_min:g}, {lab.positive_share_max:g}]"
                },
            )
        )

    for i, entry in enumerate(spec.extra):
        cls = _expectation_class(entry["type"], f"expectations[{i}].type")
        out.append(_make(cls, dict(entry.get("kwargs", {})), f"expectations[{i}].kwargs"))
    return out


def event_time_bounds(
    spec: EventTimeSpec, *, batch_date: datetime.date | None, landed_at: datetime.datetime
) -> tuple[datetime.datetime, datetime.datetime, str]:
    """The window a batch's event times must fall in, and the rule in words.

    On the batch's day (give or take the tolerances), never after its landing time plus the clock
    skew, and never more than max_landing_delay_days before it. Without a date (a file name that
    carries none), only the landing time bounds it.
    """
    landed = landed_at.astimezone(datetime.UTC)
    hi = landed + datetime.timedelta(seconds=spec.after_landing_s)
    lo = landed - datetime.timedelta(days=spec.max_landing_delay_days)
    rule = (
        f"not after the landing time {landed:%Y-%m-%dT%H:%M:%SZ} + {spec.after_landing_s:g} s, "
        f"not more than {spec.max_landing_delay_days:g} days before it"
    )
    if batch_date is not None:
        day = datetime.datetime(batch_date.year, batch_date.month, batch_date.day, tzinfo=datetime.UTC)
        lo = max(lo, day - datetime.timedelta(hours=spec.before_batch_day_h))
        hi = min(hi, day + datetime.timedelta(days=1, hours=spec.after_batch_day_h))
        rule = (
            f"on the batch's day {batch_date} (-{spec.before_batch_day_h:g} h, +{spec.after_batch_day_h:g} h), " + rule
        )
    return lo, hi, f"event time must fall {rule}: expected values in [{lo.isoformat()}, {hi.isoformat()}]"


def event_time_expectations(
    spec: SuiteSpec, *, batch_date: datetime.date | None, landed_at: datetime.datetime
) -> tuple[list[Any], str | None]:
    """The batch's own time check (not cached with the suite: its bounds depend on the batch).

    Returns (expectations, problem): a batch date that no window can satisfy (after the landing
    time, or landed too long after it) is a problem in itself, named instead of a check.
    """
    if spec.event_time is None:
        return [], None
    import great_expectations as gx

    lo, hi, rule = event_time_bounds(spec.event_time, batch_date=batch_date, landed_at=landed_at)
    if lo >= hi:
        return [], f"the batch's date {batch_date} cannot hold its events: {rule}"
    exp = gx.expectations.ExpectColumnValuesToBeBetween(
        column=spec.event_time.column, min_value=lo, max_value=hi, meta={"rule": rule}
    )
    return [exp], None


def load_suite(path: str | Path, reference_df: pd.DataFrame | None) -> gx.ExpectationSuite:
    """Turn the suite YAML into a GX ExpectationSuite, drift bounds resolved against `reference_df`."""
    import great_expectations as gx

    spec = read_suite_spec(path)
    return gx.ExpectationSuite(name=spec.name, expectations=build_expectations(spec, reference_df))
