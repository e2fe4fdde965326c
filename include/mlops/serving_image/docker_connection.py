"""What a `docker` Airflow connection says: the engine URL and the registry, or why it is broken.

Only an absent connection may mean "no engine configured". A connection that exists but cannot be
read as an engine URL and a registry fails here, naming the connection, so that a typo never turns
into a release that silently ships without an image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from include.mlops.errors import SettingsError

__all__ = ["ENGINE_URL_SCHEMES", "DockerEndpoints", "docker_endpoints"]

# what the docker SDK accepts as base_url
ENGINE_URL_SCHEMES = ("unix", "tcp", "http", "https", "ssh", "npipe")


@dataclass(frozen=True)
class DockerEndpoints:
    base_url: str | None  # None: DOCKER_HOST, else the local socket (Docker's own default)
    registry: str | None


def _engine_url(conn_id: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or "://" not in value:
        raise SettingsError(
            f"connection {conn_id!r}: {field}={value!r} is not a Docker engine URL; "
            "use unix:///var/run/docker.sock or tcp://HOST:2375"
        )
    parts = urlsplit(value)
    if parts.scheme not in ENGINE_URL_SCHEMES:
        raise SettingsError(
            f"connection {conn_id!r}: {field}={value!r} has scheme {parts.scheme!r}; "
            f"allowed: {', '.join(ENGINE_URL_SCHEMES)}"
        )
    where = parts.path if parts.scheme in ("unix", "npipe") else parts.netloc
    if not where:
        what = "socket path" if parts.scheme in ("unix", "npipe") else "host"
        raise SettingsError(f"connection {conn_id!r}: {field}={value!r} names no {what}")
    return value


def _extra(conn_id: str, raw: str | Mapping[str, Any] | None) -> Mapping[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        return raw
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"connection {conn_id!r}: extra is not valid JSON ({exc}): {raw[:200]!r}") from exc
    if not isinstance(doc, dict):
        raise SettingsError(f"connection {conn_id!r}: extra must be a JSON object, got {type(doc).__name__}")
    return doc


def docker_endpoints(
    conn_id: str,
    *,
    host: str | None,
    port: int | None = None,
    login: str | None = None,
    extra: str | Mapping[str, Any] | None = None,
) -> DockerEndpoints:
    """Engine URL and registry of an existing `docker` connection; SettingsError naming it if malformed.

    Two shapes, as include.mlops.airflow.config.image_builder reads them: host = engine URL with
    extra.registry (the local profile), or the provider's shape, host = registry with a login and
    the engine URL in extra.base_url (default: DOCKER_HOST, else the local socket).
    """
    ex = _extra(conn_id, extra)
    registry = ex.get("registry")
    if registry is not None and (not isinstance(registry, str) or not registry.strip() or "://" in registry):
        raise SettingsError(
            f"connection {conn_id!r}: extra.registry={registry!r} must be HOST[:PORT] of a registry (no scheme)"
        )
    if login:  # the provider's shape: host is the registry
        base_url = _engine_url(conn_id, "extra.base_url", ex["base_url"]) if ex.get("base_url") else None
        if not registry and host:
            registry = f"{host}:{port}" if port else host
        return DockerEndpoints(base_url, registry or None)
    if not host:
        raise SettingsError(
            f"connection {conn_id!r} exists but has no host: set it to the engine URL "
            "(unix:///var/run/docker.sock), or delete the connection to run without an engine"
        )
    return DockerEndpoints(_engine_url(conn_id, "host", host), registry or None)
