"""Parse and validate `airflow_settings.yaml` (Astro CLI format) for a plain Airflow.

Validation happens entirely before the first write, so a malformed file applies nothing;
applying (``include.mlops.airflow.apply_settings``) is an upsert that reports what changed, so
re-running changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from include.mlops.errors import SettingsError

_CONNECTION_KEYS = {
    "conn_id",
    "conn_type",
    "conn_host",
    "conn_schema",
    "conn_login",
    "conn_password",
    "conn_port",
    "conn_extra",
    "conn_description",
}
_POOL_KEYS = {"pool_name", "pool_slot", "pool_description", "pool_include_deferred"}
_VARIABLE_KEYS = {"variable_name", "variable_value", "variable_description"}


@dataclass(frozen=True)
class ConnectionSpec:
    conn_id: str
    conn_type: str
    host: str | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = None
    port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    description: str | None = None


@dataclass(frozen=True)
class PoolSpec:
    name: str
    slots: int
    description: str = ""
    include_deferred: bool = False


@dataclass(frozen=True)
class VariableSpec:
    key: str
    value: str
    description: str | None = None


@dataclass(frozen=True)
class AirflowSettings:
    connections: tuple[ConnectionSpec, ...]
    pools: tuple[PoolSpec, ...]
    variables: tuple[VariableSpec, ...]

    def connection(self, conn_id: str) -> ConnectionSpec:
        for c in self.connections:
            if c.conn_id == conn_id:
                return c
        raise SettingsError(f"connection {conn_id!r} is not declared in airflow_settings.yaml")

    def variable(self, key: str) -> str:
        for v in self.variables:
            if v.key == key:
                return v.value
        raise SettingsError(f"variable {key!r} is not declared in airflow_settings.yaml")


@dataclass(frozen=True)
class ApplyReport:
    created: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping, for error messages."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping: dict[str, Any] = {str(k): v for k, v in loader.construct_mapping(node, deep=True).items()}
    mapping["__line__"] = node.start_mark.line + 1
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _where(path: Path, entry: dict[str, Any], section: str, index: int) -> str:
    return f"{path}:{entry.get('__line__', '?')}: airflow.{section}[{index}]"


def _check_keys(entry: Any, allowed: set[str], required: set[str], where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise SettingsError(f"{where}: expected a mapping, got {type(entry).__name__}")
    keys = set(entry) - {"__line__"}
    unknown = sorted(keys - allowed)
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted(k for k in required if entry.get(k) in (None, ""))
    if missing:
        raise SettingsError(f"{where}: missing required key(s) {missing}")
    return entry


def _strip_lines(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_lines(v) for k, v in value.items() if k != "__line__"}
    if isinstance(value, list):
        return [_strip_lines(v) for v in value]
    return value


def _opt_str(value: Any, key: str, where: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, (dict, list)):
        raise SettingsError(f"{where}: {key} must be a scalar, got {type(value).__name__}")
    return str(value)


def _int(value: Any, key: str, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"{where}: {key} must be an integer, got {value!r}")
    if value < minimum:
        raise SettingsError(f"{where}: {key} must be >= {minimum}, got {value}")
    return value


def load_airflow_settings(path: str | Path) -> AirflowSettings:
    """Read and validate the whole file; raise SettingsError naming file:line, entry and key."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as e:
        raise SettingsError(f"{path}: file not found") from e
    try:
        doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise SettingsError(f"{path}{line}: not valid YAML: {getattr(e, 'problem', e)}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("airflow"), dict):
        raise SettingsError(f"{path}: top-level key 'airflow' (a mapping) is required")
    root = doc["airflow"]
    unknown = sorted(set(root) - {"connections", "pools", "variables", "__line__"})
    if unknown:
        raise SettingsError(f"{path}:{root['__line__']}: airflow: unknown section(s) {unknown}")

    def section(name: str) -> list[Any]:
        items = root.get(name) or []
        if not isinstance(items, list):
            raise SettingsError(f"{path}:{root['__line__']}: airflow.{name} must be a list")
        return items

    connections: list[ConnectionSpec] = []
    for i, raw in enumerate(section("connections")):
        where = _where(path, raw if isinstance(raw, dict) else {}, "connections", i)
        entry = _check_keys(raw, _CONNECTION_KEYS, {"conn_id", "conn_type"}, where)
        extra = entry.get("conn_extra")
        if isinstance(extra, str) and extra.strip():
            try:
                extra = json.loads(extra)
            except json.JSONDecodeError as exc:
                raise SettingsError(f"{where}: conn_extra is not valid JSON: {exc}") from exc
        if extra is not None and not isinstance(extra, (dict, str)):
            raise SettingsError(f"{where}: conn_extra must be a mapping or a JSON string")
        port = entry.get("conn_port")
        connections.append(
            ConnectionSpec(
                conn_id=str(entry["conn_id"]),
                conn_type=str(entry["conn_type"]),
                host=_opt_str(entry.get("conn_host"), "conn_host", where),
                schema=_opt_str(entry.get("conn_schema"), "conn_schema", where),
                login=_opt_str(entry.get("conn_login"), "conn_login", where),
                password=_opt_str(entry.get("conn_password"), "conn_password", where),
                port=None if port in (None, "") else _int(port, "conn_port", where, 1),
                extra=_strip_lines(extra) if isinstance(extra, dict) else {},
                description=_opt_str(entry.get("conn_description"), "conn_description", where),
            )
        )
    pools: list[PoolSpec] = []
    for i, raw in enumerate(section("pools")):
        where = _where(path, raw if isinstance(raw, dict) else {}, "pools", i)
        entry = _check_keys(raw, _POOL_KEYS, {"pool_name", "pool_slot"}, where)
        deferred = entry.get("pool_include_deferred", False)
        if not isinstance(deferred, bool):
            raise SettingsError(f"{where}: pool_include_deferred must be true or false, got {deferred!r}")
        pools.append(
            PoolSpec(
                name=str(entry["pool_name"]),
                slots=_int(entry["pool_slot"], "pool_slot", where, 0),
                description=_opt_str(entry.get("pool_description"), "pool_description", where) or "",
                include_deferred=deferred,
            )
        )
    variables: list[VariableSpec] = []
    for i, raw in enumerate(section("variables")):
        where = _where(path, raw if isinstance(raw, dict) else {}, "variables", i)
        entry = _check_keys(raw, _VARIABLE_KEYS, {"variable_name"}, where)
        value = entry.get("variable_value")
        if isinstance(value, (dict, list)):
            value = json.dumps(_strip_lines(value))
        variables.append(
            VariableSpec(
                key=str(entry["variable_name"]),
                value="" if value is None else str(value),
                description=_opt_str(entry.get("variable_description"), "variable_description", where),
            )
        )
    for kind, names in (
        ("connection", [c.conn_id for c in connections]),
        ("pool", [p.name for p in pools]),
        ("variable", [v.key for v in variables]),
    ):
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SettingsError(f"{path}: duplicate {kind} name(s) {dupes}")
    return AirflowSettings(tuple(connections), tuple(pools), tuple(variables))
