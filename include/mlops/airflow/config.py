"""Read the deployment's Connections and Variables into the library's plain settings objects.

Every Airflow lookup of the pipeline's configuration is here: the library gets settings values
(``ProjectSettings``, ``ResourcePolicy``, ``TrainingContainerSettings``, a ``ResourceRouter``, a
``DockerImageBuilder``) and never asks Airflow itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.errors import SettingsError
from include.mlops.settings.project import (
    DOCKER_CONN_ID,
    MLFLOW_CONN_ID,
    ProjectSettings,
    resolve_path,
)

if TYPE_CHECKING:
    from include.mlops.routing.router import ResourceRouter
    from include.mlops.routing.training import ResourcePolicy
    from include.mlops.serving_image.docker_builder import DockerImageBuilder
    from include.mlops.training.container import TrainingContainerSettings


def project_settings() -> ProjectSettings:
    """Inside a running task: Connections and Variables decide the profile and endpoints."""
    from airflow.sdk import BaseHook, Variable

    ml = BaseHook.get_connection(MLFLOW_CONN_ID)
    ml_extra = ml.extra_dejson
    docker_url, registry = _docker_connection()
    return ProjectSettings(
        profile=Variable.get("mlops_profile", default="local"),
        mlflow_tracking_uri=f"{ml.schema or 'http'}://{ml.host}:{ml.port}",
        mlflow_backend_store=resolve_path(str(ml_extra.get("backend_store", ".local/mlflow/mlflow.db"))),
        mlflow_artifact_root=resolve_path(str(ml_extra.get("artifact_root", ".local/mlflow/artifacts"))),
        data_root=resolve_path(Variable.get("mlops_data_root", default=".local/data")),
        serving_root=resolve_path(Variable.get("mlops_serving_root", default=".local/serving")),
        registered_model=Variable.get("mlops_registered_model", default="fraud-detector"),
        docker_base_url=docker_url,
        image_registry=registry,
        serving_replicas=int(Variable.get("mlops_serving_replicas", default="2")),
    )


def _docker_connection() -> tuple[str | None, str | None]:
    """docker_default's engine URL and registry; (None, None) only when the connection is absent.

    Airflow reports a connection it could not parse (a malformed AIRFLOW_CONN_ variable) or could
    not look up as "not defined"; the variable being set tells a broken one from an absent one.
    Anything else that goes wrong reading it fails, naming the connection: a release must never
    read a broken connection as "no engine" and ship without an image.
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from include.mlops.serving_image.docker_connection import docker_endpoints

    env_var = f"AIRFLOW_CONN_{DOCKER_CONN_ID.upper()}"
    try:
        dk = BaseHook.get_connection(DOCKER_CONN_ID)
    except AirflowNotFoundException as exc:
        if os.environ.get(env_var):
            raise SettingsError(
                f"connection {DOCKER_CONN_ID!r}: {env_var} is set but Airflow cannot read it ({exc}); "
                "it must be a connection URI or a JSON object with conn_type and host"
            ) from exc
        return None, None  # really absent: the local profile runs without an engine
    except Exception as exc:
        raise SettingsError(f"connection {DOCKER_CONN_ID!r} could not be looked up: {exc}") from exc
    found = docker_endpoints(DOCKER_CONN_ID, host=dk.host, port=dk.port, login=dk.login, extra=dk.extra)
    return found.base_url, found.registry


def resource_policy() -> ResourcePolicy:
    """The allow-lists of the training request's priority class and tolerations (Variables)."""
    from airflow.sdk import Variable

    from include.mlops.routing.training import (
        ALLOWED_PRIORITY_CLASSES_VARIABLE,
        ALLOWED_TOLERATIONS_VARIABLE,
        ResourcePolicy,
    )

    return ResourcePolicy.from_values(
        priority_classes=Variable.get(ALLOWED_PRIORITY_CLASSES_VARIABLE, default="[]"),
        tolerations=Variable.get(ALLOWED_TOLERATIONS_VARIABLE, default="[]"),
    )


def training_container_settings(data_root: str | Path, docker_url: str | None) -> TrainingContainerSettings:
    """The training container's image and extra mounts (Variables), for a ``docker`` placement."""
    from airflow.sdk import Variable

    from include.mlops.training.container import MOUNTS_VARIABLE, TrainingContainerSettings
    from include.mlops.training.runner import TRAINING_IMAGE_VARIABLE

    return TrainingContainerSettings.from_values(
        image=Variable.get(TRAINING_IMAGE_VARIABLE, default=None),
        mounts=Variable.get(MOUNTS_VARIABLE, default="[]"),
        data_root=data_root,
        docker_url=docker_url,
    )


def router() -> ResourceRouter:
    """The router as the deployment configures it (Airflow Variables; the local machine by default).

    ``router_capacity_source``: ``local`` | ``docker`` | ``inventory:<path>`` | ``kubernetes:<conn_id>``
    (``docker``: this machine's capacity, tasks run as containers on its engine);
    ``router_book_url``: the reservation book every worker reaches (``postgresql://...``; needed
    when workers run on separate machines: Celery, Kubernetes executors); when empty,
    ``router_book_path``: the SQLite file shared by the workers and api-server of one host.
    """
    from airflow.sdk import Variable

    from include.mlops.routing.providers.local import LocalMachineProvider
    from include.mlops.routing.reservations import ReservationBook
    from include.mlops.routing.router import CombinedProvider, ResourceRouter

    source = Variable.get("router_capacity_source", default="local")
    book_url = str(Variable.get("router_book_url", default="") or "").strip()
    book = ReservationBook(
        book_url or resolve_path(Variable.get("router_book_path", default=".local/router/book.sqlite"))
    )
    kind, _, arg = source.partition(":")
    local = LocalMachineProvider()
    if kind == "local":
        return ResourceRouter(local, book)
    if kind == "docker":
        return ResourceRouter(LocalMachineProvider(target="docker", node_pool="docker-engine"), book)
    if kind == "inventory":
        from include.mlops.routing.providers.static import StaticInventoryProvider

        return ResourceRouter(CombinedProvider((StaticInventoryProvider(arg), local)), book)
    if kind == "kubernetes":
        from airflow.sdk import Connection

        from include.mlops.routing.providers.kubernetes import KubernetesCapacityProvider

        conn = Connection.get(arg or "kubernetes_default")
        k8s = KubernetesCapacityProvider.from_connection(conn.host, conn.extra_dejson)
        return ResourceRouter(CombinedProvider((k8s, local)), book)
    raise SettingsError(
        f"Variable router_capacity_source={source!r}: "
        "use 'local', 'docker', 'inventory:<path>' or 'kubernetes:<conn_id>'"
    )


def image_builder(conn_id: str = DOCKER_CONN_ID, **kwargs: Any) -> DockerImageBuilder:
    """A serving-image builder through Airflow's DockerHook, configured by a `docker` connection.

    Two shapes are accepted: host = engine URL (unix://...) with extra.registry (the local profile in
    airflow_settings.yaml), or the provider's own shape, host = registry with login/password and the
    engine URL in extra.base_url. extra.base_image overrides the base image.
    """
    from airflow.exceptions import AirflowException
    from airflow.providers.docker.hooks.docker import DockerHook

    from include.mlops.serving_image.docker_builder import DockerImageBuilder, EngineUnavailable, docker_host

    conn = DockerHook.get_connection(conn_id)
    extra = conn.extra_dejson
    host = conn.host or ""
    if "://" in host and not conn.login:
        base_url, registry, login_conn = host, extra.get("registry", ""), None
    else:
        base_url = docker_host(extra.get("base_url"))
        registry = extra.get("registry") or (f"{host}:{conn.port}" if conn.port else host)
        login_conn = conn_id if conn.login else None
    if not registry:
        raise SettingsError(f"connection {conn_id!r}: no registry to push to; set extra.registry (e.g. 127.0.0.1:5001)")
    if extra.get("base_image"):
        kwargs.setdefault("base_image", extra["base_image"])
    try:
        api = DockerHook(docker_conn_id=login_conn, base_url=base_url, timeout=60).get_conn()
    except AirflowException as e:
        raise EngineUnavailable(f"connection {conn_id!r}: no Docker engine answers at {base_url}: {e}") from e
    return DockerImageBuilder(api, registry, **kwargs)
