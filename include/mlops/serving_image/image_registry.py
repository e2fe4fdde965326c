"""A minimal Docker Registry HTTP API v2 client: resolve a tag to its manifest digest and read labels.

The builder uses it to find its own earlier work (same tag, same model content: no rebuild) and to
check that what it pushed is what the registry serves. Loopback registries are plain HTTP.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from include.mlops.errors import BuildError

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)


class RegistryUnavailable(BuildError):
    """The image registry did not answer or refused a request."""


class RegistryAuthRequired(RegistryUnavailable):
    """The registry wants a token this client does not fetch (the engine's own login still pushes)."""


@dataclass(frozen=True)
class ManifestInfo:
    digest: str  # Docker-Content-Digest of the manifest
    compressed_size_bytes: int  # config + layers, as stored
    config_digest: str
    layer_digests: tuple[str, ...]


@dataclass(frozen=True)
class RegistryEndpoint:
    """`host:port` as it appears in image references, and the URL its API answers on."""

    host: str
    scheme: str

    @classmethod
    def parse(cls, registry: str) -> RegistryEndpoint:
        value = registry.strip().rstrip("/")
        if "://" in value:
            scheme, _, host = value.partition("://")
            if scheme not in ("http", "https"):
                raise BuildError(f"registry {registry!r}: scheme must be http or https, or none (host:port)")
            return cls(host=host, scheme=scheme)
        hostname = value.rsplit(":", 1)[0]
        # Docker itself treats loopback registries as insecure (plain HTTP); everything else is TLS.
        loopback = hostname in ("localhost", "::1", "[::1]") or hostname.startswith("127.")
        return cls(host=value, scheme="http" if loopback else "https")

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"


class RegistryClient:
    def __init__(self, registry: str, timeout_s: float = 10.0) -> None:
        self.endpoint = RegistryEndpoint.parse(registry)
        self.timeout_s = timeout_s

    def _request(self, method: str, path: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
        # The scheme is http or https by construction (RegistryEndpoint.parse), never file: or custom.
        req = urllib.request.Request(f"{self.endpoint.base_url}{path}", method=method)  # noqa: S310
        if accept:
            req.add_header("Accept", accept)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310
                return resp.status, dict(resp.headers.items()), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers.items()), e.read()
        except (urllib.error.URLError, OSError) as e:
            raise RegistryUnavailable(
                f"registry {self.endpoint.base_url} did not answer {method} {path}: {e}; "
                "is it running (docker/start_engine.sh starts the local one)?"
            ) from e

    def ping(self) -> tuple[bool, str]:
        try:
            status, _, _ = self._request("GET", "/v2/")
        except RegistryUnavailable as e:
            return False, str(e)
        if status in (200, 401):  # 401: it answers, and wants credentials the engine holds
            return True, f"registry {self.endpoint.base_url} answers"
        return False, f"registry {self.endpoint.base_url}/v2/ answered HTTP {status}"

    def manifest(self, name: str, reference: str) -> ManifestInfo | None:
        """The manifest of `name:reference` (tag or digest), or None when the registry has no such tag."""
        status, headers, body = self._request(
            "GET", f"/v2/{name}/manifests/{reference}", accept=", ".join(MANIFEST_TYPES)
        )
        if status == 404:
            return None
        if status == 401:
            raise RegistryAuthRequired(
                f"registry {self.endpoint.base_url} needs credentials to read manifest {name}:{reference}"
            )
        if status != 200:
            raise RegistryUnavailable(
                f"registry {self.endpoint.base_url} answered HTTP {status} for manifest {name}:{reference}: "
                f"{body[:300]!r}"
            )
        doc = json.loads(body)
        digest = {k.lower(): v for k, v in headers.items()}.get("docker-content-digest", "")
        layers = doc.get("layers", [])
        return ManifestInfo(
            digest=digest,
            compressed_size_bytes=int(doc["config"]["size"]) + sum(int(layer["size"]) for layer in layers),
            config_digest=doc["config"]["digest"],
            layer_digests=tuple(layer["digest"] for layer in layers),
        )

    def image_config(self, name: str, manifest: ManifestInfo) -> dict[str, Any]:
        """The image config blob (env, labels, user, healthcheck) a manifest points at."""
        status, _, body = self._request("GET", f"/v2/{name}/blobs/{manifest.config_digest}")
        if status != 200:
            raise RegistryUnavailable(
                f"registry {self.endpoint.base_url} answered HTTP {status} for config blob "
                f"{manifest.config_digest} of {name}"
            )
        config: dict[str, Any] = json.loads(body)
        return config
