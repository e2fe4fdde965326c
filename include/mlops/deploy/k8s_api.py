"""The Kubernetes API as the serving target uses it: server-side apply, get and delete of any kind by
one generic path through the official client's ApiClient, and where the target works (MLOPS_K8S_*)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from include.mlops.deploy import k8s_manifests as km
from include.mlops.errors import DeployError

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

FIELD_MANAGER = "mlops-release"
# connect and read: a wedged API server fails the move (the task retries) instead of hanging it
REQUEST_TIMEOUT_S = (10, 30)


@dataclass(frozen=True)
class KubernetesServingConfig:
    """Where the target works; from MLOPS_K8S_* environment variables (see README, profile kubernetes)."""

    namespace: str = "mlops-serving"
    gateway: km.GatewayRef = field(default_factory=km.GatewayRef)
    gateway_url: str | None = None
    workers_namespace: str | None = None
    kube_config: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> KubernetesServingConfig:
        e = os.environ if env is None else env
        gw_ns, _, gw_name = e.get("MLOPS_K8S_GATEWAY", "gateway-system/mlops-gateway").rpartition("/")
        return cls(
            namespace=e.get("MLOPS_K8S_NAMESPACE", "mlops-serving"),
            gateway=km.GatewayRef(name=gw_name, namespace=gw_ns or "gateway-system"),
            gateway_url=e.get("MLOPS_K8S_GATEWAY_URL") or None,
            workers_namespace=e.get("MLOPS_K8S_WORKERS_NAMESPACE") or None,
            kube_config=e.get("KUBECONFIG") or None,
        )


def api_client(kube_config: str | None) -> ApiClient:
    """A client from a kubeconfig file, else the pod's in-cluster service account."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        if kube_config:
            cfg = client.Configuration()
            config.load_kube_config(config_file=kube_config, client_configuration=cfg)
            return client.ApiClient(cfg)
        config.load_incluster_config()
    except (ConfigException, OSError) as exc:
        where = f"kubeconfig {kube_config}" if kube_config else "no KUBECONFIG and not in a pod (in-cluster config)"
        raise DeployError(f"kubernetes profile: cannot configure the API client from {where}: {exc}") from exc
    return client.ApiClient()


class KubeRest:
    """apply/get/delete in one namespace; the client is made on first use (imports kubernetes then)."""

    def __init__(self, namespace: str, client: ApiClient | None = None, kube_config: str | None = None) -> None:
        self.namespace = namespace
        self.kube_config = kube_config
        self._client = client

    @property
    def client(self) -> ApiClient:
        if self._client is None:
            self._client = api_client(self.kube_config)
        return self._client

    def call(self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None,
              content_type: str = "application/json") -> Any:  # fmt: skip
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return self.client.call_api(
                path, method, query_params=query or [], body=body,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                response_types_map={200: "object", 201: "object", 202: "object"},
                auth_settings=["BearerToken"], _return_http_data_only=True, _request_timeout=REQUEST_TIMEOUT_S,
            )  # fmt: skip
        except ApiException as exc:
            if exc.status == 404 and method in ("GET", "DELETE"):
                return None
            raise DeployError(f"kubernetes API {method} {path}: HTTP {exc.status} {exc.reason}: {exc.body}") from exc
        except HTTPError as exc:  # unreachable, refused, timed out (after urllib3's own retries)
            host = self.client.configuration.host
            raise DeployError(f"kubernetes API {host} unreachable for {method} {path}: {exc}") from exc

    def path(self, kind: str, name: str | None = None) -> str:
        base = km.PATHS[kind].format(ns=self.namespace)
        return f"{base}/{name}" if name else base

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply: creates or updates to exactly these fields (ours, forced)."""
        out = self.call(
            "PATCH", self.path(obj["kind"], obj["metadata"]["name"]), obj,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")], content_type="application/apply-patch+yaml",
        )  # fmt: skip
        return dict(out or {})

    def create(self, obj: dict[str, Any]) -> bool:
        """POST: True if created, False if it exists already (409), the API server deciding between racers."""
        try:
            self.call("POST", self.path(obj["kind"]), obj, query=[("fieldManager", FIELD_MANAGER)])
        except DeployError as exc:
            if getattr(exc.__cause__, "status", None) == 409:
                return False
            raise
        return True

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        found = self.call("GET", self.path(kind, name))
        return dict(found) if found else None

    def delete(self, kind: str, name: str) -> bool:
        """True if it existed (a 404 is success: the object is gone either way)."""
        return self.call("DELETE", self.path(kind, name), {"propagationPolicy": "Background"}) is not None
