"""Deploy targets: where a model version is served and how traffic is split between stable and canary."""

from include.mlops.deploy.target import Backend, DeployTarget, ModelRef, ServingState

__all__ = ["Backend", "DeployTarget", "ModelRef", "ServingState"]
