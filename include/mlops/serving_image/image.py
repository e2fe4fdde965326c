"""What goes into a serving image and what comes out: the model artifact, the built image, the interface.

Typed values shared by every builder (Docker engine here, an in-cluster builder elsewhere);
`BuiltImage` is what the release DAG passes on through XCom and records with the model version.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from include.mlops.errors import BuildError

# Docker's reference grammar: a repository path component and a tag.
_REPO_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class InvalidImageReference(BuildError):
    """A model name or tag cannot become a valid image reference."""


class ModelFileMissing(BuildError):
    """The model file to package does not exist or is empty."""


@dataclass(frozen=True)
class ModelArtifact:
    """A registered model version's ONNX file, as the build step receives it."""

    name: str  # registered model name, e.g. "fraud-detector"
    version: str  # registry version, e.g. "7"
    onnx_path: Path

    def __post_init__(self) -> None:
        path = Path(self.onnx_path)
        object.__setattr__(self, "onnx_path", path)
        if not path.is_file() or path.stat().st_size == 0:
            raise ModelFileMissing(
                f"model {self.name!r} version {self.version!r}: ONNX file {path} is missing or empty; "
                "download the registered artifact before building its image"
            )

    @property
    def repository_name(self) -> str:
        """The image repository for this model: the registered name, lower-cased and validated."""
        repo = self.name.strip().lower().replace(" ", "-")
        if not _REPO_COMPONENT.match(repo):
            raise InvalidImageReference(
                f"model name {self.name!r} cannot be an image repository name: use lower-case letters, "
                "digits and single '.', '_' or '-' separators (e.g. 'fraud-detector')"
            )
        return repo

    def sha256(self) -> str:
        """Content hash of the model file: the label that makes rebuilding the same model a no-op."""
        h = hashlib.sha256()
        with self.onnx_path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()


def validate_tag(tag: str) -> str:
    if not _TAG.match(tag):
        raise InvalidImageReference(
            f"image tag {tag!r} is invalid: up to 128 characters from [A-Za-z0-9_.-], not starting with '.' or '-'"
        )
    return tag


@dataclass(frozen=True)
class BuiltImage:
    """A serving image in a registry, pinned by digest; JSON-ready through `to_dict()`."""

    repository: str  # "<registry>/<model>", e.g. "127.0.0.1:5001/fraud-detector"
    tag: str
    digest: str  # "sha256:..." of the manifest, as the registry reports it
    reference: str  # "<repository>@<digest>": what deployments use
    size_bytes: int | None  # uncompressed, on the engine that built it; None when reused and not local
    compressed_size_bytes: int  # layers + config as stored in the registry (0: registry needs credentials)
    build_s: float  # wall time of build_and_push, reuse included
    reused_existing: bool  # the tag already held this model and build inputs: nothing was built
    cached_steps: int  # Dockerfile steps answered from the build cache
    total_steps: int
    model_sha256: str
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def tagged(self) -> str:
        return f"{self.repository}:{self.tag}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuiltImage:
        return cls(**data)


@runtime_checkable
class ImageBuilder(Protocol):
    """Builds the serving image for a model version and pushes it; idempotent per (model content, tag)."""

    def build_and_push(self, model: ModelArtifact, tag: str | None = None) -> BuiltImage: ...
