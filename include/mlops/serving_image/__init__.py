"""Serving images: package a registered ONNX model with the model server, push it, pin it by digest.

`ImageBuilder` is the interface the release DAG's `build_image` task calls; `DockerImageBuilder`
implements it over a Docker engine (local and docker profiles). Nothing heavy is imported here.
"""

from include.mlops.serving_image.docker_builder import DockerImageBuilder, engine_available
from include.mlops.serving_image.image import BuiltImage, ImageBuilder, ModelArtifact

__all__ = ["BuiltImage", "DockerImageBuilder", "ImageBuilder", "ModelArtifact", "engine_available"]
