"""The serving target of a model on the deployment's profile: the one place that maps profile -> implementation."""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

from include.mlops.errors import DeployError, InvalidReleaseParams

if TYPE_CHECKING:
    from include.mlops.deploy.target import DeployTarget
    from include.mlops.settings.project import ProjectSettings

# folders of serving_root that hold other things than a model's serving target
_RESERVED_SERVING_NAMES = ("models", "analyses")
_SERVED_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"


def serving_target(settings: ProjectSettings, model_name: str | None = None) -> DeployTarget:
    """The deploy target of one registered model on the profile (one place that maps profile -> implementation).

    Each model name is served on its own (serving_root/<model_name>: its router, stable and
    canary), so releasing one model never touches what serves another. Without a name: the
    model of Variable mlops_registered_model (what retrain trains).
    """
    model_name = settings.registered_model if model_name is None else model_name
    if not re.fullmatch(_SERVED_NAME, model_name or "") or model_name in _RESERVED_SERVING_NAMES:
        raise InvalidReleaseParams(
            f"param model_name={model_name!r}: a served model's name must be 1-128 letters, digits, '.', '_' "
            f"or '-' starting with a letter or digit, and not one of {_RESERVED_SERVING_NAMES} "
            "(it names the model's serving folder)"
        )
    if settings.profile == "local":
        from include.mlops.deploy.local import LocalProcessTarget

        return LocalProcessTarget(settings.serving_root / model_name, python_executable=sys.executable)
    if settings.profile == "docker":
        from include.mlops.deploy.swarm import SwarmTarget

        return SwarmTarget(
            settings.serving_root / model_name,
            model_name,
            registry=settings.image_registry or "",
            replicas=settings.serving_replicas,
            base_url=settings.docker_base_url,
        )
    if settings.profile == "kubernetes":
        from include.mlops.deploy.k8s_manifests import ServingResources
        from include.mlops.deploy.kubernetes import KubernetesServingConfig, KubernetesTarget

        n = settings.serving_replicas
        return KubernetesTarget(
            model_name,
            registry=settings.image_registry or "",
            config=KubernetesServingConfig.from_env(),
            resources=ServingResources(min_replicas=n, max_replicas=3 * n),
        )
    raise DeployError(
        f"profile {settings.profile!r}: no serving target implemented yet in this build (local, docker, "
        "kubernetes); set Variable mlops_profile to one of them"
    )
