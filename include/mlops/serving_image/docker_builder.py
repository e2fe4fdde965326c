"""`ImageBuilder` over a Docker engine: build the serving image, tag it, push it, pin it by digest.

Used by the local and docker profiles (the kubernetes profile builds in-cluster). Works without
Airflow through `from_base_url`; inside Airflow ``include.mlops.airflow.config.image_builder`` builds
one through DockerHook.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.errors import BuildError, SettingsError
from include.mlops.serving_image.context import (
    DEFAULT_DOCKERFILE,
    DEFAULT_REQUIREMENTS,
    DEFAULT_WORK_DIR,
    REPO_ROOT,
    ensure_wheelhouse,
    prepare_context,
)
from include.mlops.serving_image.image import BuiltImage, ModelArtifact, validate_tag
from include.mlops.serving_image.image_registry import (
    ManifestInfo,
    RegistryAuthRequired,
    RegistryClient,
    RegistryEndpoint,
    RegistryUnavailable,
)

if TYPE_CHECKING:
    # Imported by module path: the repo's own docker/ folder shadows the SDK's top-level name for mypy.
    from docker.api.client import APIClient

DEFAULT_BASE_IMAGE = "mlops-base:bookworm"
LABEL_MODEL_SHA256 = "io.mlops.model.sha256"
LABEL_FINGERPRINT = "io.mlops.build.fingerprint"
_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class EngineUnavailable(BuildError):
    """No Docker engine answers at the configured URL."""


class BaseImageMissing(BuildError):
    """The serving base image is not on the engine (it is built offline, never pulled)."""


class ImageBuildFailed(BuildError):
    """A Dockerfile step failed; the message carries the step and its output."""


class PushRefused(BuildError):
    """The registry refused the pushed image, or serves a different digest than was pushed."""


def docker_host(base_url: str | None) -> str:
    # Docker's own default when neither the caller nor DOCKER_HOST names an engine.
    return base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def engine_available(base_url: str | None = None, timeout_s: float = 5.0) -> tuple[bool, str]:
    """Whether a Docker engine answers at `base_url` (default DOCKER_HOST or the local socket), and why not."""
    url = docker_host(base_url)
    try:
        from docker.api.client import APIClient
        from docker.errors import DockerException
    except ImportError:
        return False, "the docker Python SDK is not installed (pip install docker)"
    try:
        api = APIClient(base_url=url, version="auto", timeout=timeout_s)
        try:
            version = api.version().get("Version", "?")
        finally:
            api.close()
    except (DockerException, OSError) as e:
        return False, f"no Docker engine answers at {url}: {e} (start one with docker/start_engine.sh)"
    return True, f"Docker engine {version} at {url}"


@dataclass
class _BuildLog:
    """What the classic builder streamed: steps seen, cache hits, the output of the current step."""

    total_steps: int = 0
    cached_steps: int = 0
    current_step: str = ""
    step_output: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    lines: list[str] = field(default_factory=list)
    image_id: str = ""

    def feed(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk or "errorDetail" in chunk:
            message = chunk.get("errorDetail", {}).get("message") or chunk.get("error", "")
            output = "".join(self.step_output).rstrip()
            raise ImageBuildFailed(
                f"image build failed at {self.current_step or 'the first step'}: {message.strip()}"
                + (f"\n--- output of that step ---\n{output}" if output else "")
            )
        if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
            self.image_id = chunk["aux"]["ID"]
        text = _ANSI.sub("", chunk.get("stream") or "")  # the engine colours a step's stderr red
        if not text:
            return
        self.lines.append(text)
        for line in text.splitlines():
            m = _STEP.match(line.strip())
            if m:
                self.current_step = f"step {m.group(1)}/{m.group(2)} ({m.group(3)})"
                self.total_steps = int(m.group(2))
                self.step_output.clear()
            elif line.strip() == "---> Using cache":
                self.cached_steps += 1
            else:
                self.step_output.append(line + "\n")


class DockerImageBuilder:
    """Builds `<registry>/<model>:<tag>` from docker/serve.Dockerfile with the classic builder and pushes it.

    Idempotent: when the registry already holds the tag with the same model content and the same build
    inputs (Dockerfile, wheels, server code, base image), it returns that image without building.
    """

    def __init__(
        self,
        api: APIClient,
        registry: str,
        *,
        base_image: str = DEFAULT_BASE_IMAGE,
        dockerfile: Path = DEFAULT_DOCKERFILE,
        requirements: Path = DEFAULT_REQUIREMENTS,
        work_dir: Path = DEFAULT_WORK_DIR,
        repo_root: Path = REPO_ROOT,
        python_version: str = "3.11",
        build_timeout_s: int = 1800,
        no_cache: bool = False,
    ) -> None:
        if not registry:
            raise SettingsError("DockerImageBuilder needs a registry (host:port), e.g. 127.0.0.1:5001")
        self.api = api
        self.registry = RegistryEndpoint.parse(registry)
        self.registry_client = RegistryClient(registry)
        self.base_image = base_image
        self.dockerfile = Path(dockerfile)
        self.requirements = Path(requirements)
        self.work_dir = Path(work_dir)
        self.repo_root = Path(repo_root)
        self.python_version = python_version
        self.build_timeout_s = build_timeout_s
        self.no_cache = no_cache  # benchmarks and "rebuild from scratch" runs; the layer cache is the fast path
        self.last_build_log: list[str] = []

    @classmethod
    def from_base_url(cls, base_url: str | None, registry: str, **kwargs: Any) -> DockerImageBuilder:
        """Talk to the engine at `base_url` (unix://, tcp://, ssh://; None: DOCKER_HOST or the local socket)."""
        from docker.api.client import APIClient
        from docker.errors import DockerException

        url = docker_host(base_url)
        try:
            api = APIClient(base_url=url, version="auto", timeout=60)
        except DockerException as e:
            raise EngineUnavailable(
                f"no Docker engine answers at {url}: {e}; start one (docker/start_engine.sh) "
                "or point the docker connection's host at a running engine"
            ) from e
        return cls(api, registry, **kwargs)

    def build_and_push(self, model: ModelArtifact, tag: str | None = None) -> BuiltImage:
        started = time.monotonic()
        tag = validate_tag(tag or model.version)
        name = model.repository_name
        repository = f"{self.registry.host}/{name}"
        base_id = self._base_image_id()
        reachable, reason = self.registry_client.ping()
        if not reachable:
            raise RegistryUnavailable(reason)  # fail before minutes of building, not after

        self.work_dir.mkdir(parents=True, exist_ok=True)
        wheelhouse = ensure_wheelhouse(self.requirements, self.work_dir / "wheels", self.python_version)
        ctx_dir = Path(tempfile.mkdtemp(prefix="context-", dir=self.work_dir))
        try:
            ctx = prepare_context(
                model, ctx_dir, dockerfile=self.dockerfile, wheelhouse=wheelhouse, repo_root=self.repo_root
            )
            fingerprint = f"{ctx.fingerprint[:32]}-{base_id.removeprefix('sha256:')[:16]}"
            existing = self._existing(name, tag, ctx.model_sha256, fingerprint)
            if existing is not None:
                return self._describe(repository, tag, existing, started, reused=True, log=_BuildLog())
            log = self._build(ctx_dir, f"{repository}:{tag}", model, ctx.model_sha256, fingerprint)
        finally:
            shutil.rmtree(ctx_dir, ignore_errors=True)
        pushed_digest = self._push(repository, tag)
        try:
            manifest = self.registry_client.manifest(name, tag)
        except RegistryAuthRequired:
            if not pushed_digest:
                raise
            return self._describe(repository, tag, pushed_digest, started, reused=False, log=log)
        if manifest is None or (pushed_digest and manifest.digest != pushed_digest):
            raise PushRefused(
                f"pushed {repository}:{tag} as {pushed_digest or '?'} but the registry serves "
                f"{manifest.digest if manifest else 'no such tag'}"
            )
        return self._describe(repository, tag, manifest.digest, started, reused=False, log=log)

    # --- steps -----------------------------------------------------------------------------------

    def _base_image_id(self) -> str:
        from docker.errors import DockerException, ImageNotFound

        try:
            return str(self.api.inspect_image(self.base_image)["Id"])
        except ImageNotFound as e:
            raise BaseImageMissing(
                f"base image {self.base_image!r} is not on the engine at {self.api.base_url}; it is never "
                "pulled: build it offline with docker/bootstrap_base.sh"
            ) from e
        except DockerException as e:
            raise EngineUnavailable(f"Docker engine at {self.api.base_url} failed: {e}") from e

    def _existing(self, name: str, tag: str, model_sha256: str, fingerprint: str) -> str | None:
        """The digest the tag already points at, when it holds this very model and build inputs."""
        try:
            manifest = self.registry_client.manifest(name, tag)
        except RegistryAuthRequired:
            return None  # cannot look: build (the engine's layer cache still makes it cheap)
        if manifest is None:
            return None
        labels = self.registry_client.image_config(name, manifest).get("config", {}).get("Labels") or {}
        if labels.get(LABEL_MODEL_SHA256) == model_sha256 and labels.get(LABEL_FINGERPRINT) == fingerprint:
            return manifest.digest
        return None

    def _build(self, ctx_dir: Path, ref: str, model: ModelArtifact, model_sha256: str, fingerprint: str) -> _BuildLog:
        from docker.errors import DockerException

        log = _BuildLog()
        try:
            for chunk in self.api.build(
                path=str(ctx_dir),
                dockerfile="Dockerfile",
                tag=ref,
                buildargs={
                    "BASE_IMAGE": self.base_image,
                    "MODEL_NAME": model.name,
                    "MODEL_VERSION": model.version,
                    "MODEL_SHA256": model_sha256,
                    "BUILD_FINGERPRINT": fingerprint,
                },
                rm=True,
                forcerm=True,
                nocache=self.no_cache,
                pull=False,
                decode=True,
                timeout=self.build_timeout_s,
            ):
                log.feed(chunk)
        except DockerException as e:
            raise ImageBuildFailed(f"image build of {ref} failed at {log.current_step or 'start'}: {e}") from e
        finally:
            self.last_build_log = log.lines
        if not log.image_id and not any("Successfully built" in line for line in log.lines):
            raise ImageBuildFailed(
                f"image build of {ref} ended without an image; last output:\n{''.join(log.lines[-20:])}"
            )
        return log

    def _push(self, repository: str, tag: str) -> str:
        from docker.errors import DockerException

        digest = ""
        try:
            for chunk in self.api.push(repository, tag=tag, stream=True, decode=True):
                if "error" in chunk or "errorDetail" in chunk:
                    message = chunk.get("errorDetail", {}).get("message") or chunk.get("error", "")
                    raise PushRefused(
                        f"registry {self.registry.base_url} refused {repository}:{tag}: {message.strip()}"
                    )
                aux = chunk.get("aux")
                if isinstance(aux, dict) and aux.get("Digest"):
                    digest = str(aux["Digest"])
        except DockerException as e:
            raise PushRefused(f"push of {repository}:{tag} to {self.registry.base_url} failed: {e}") from e
        return digest

    def _describe(
        self, repository: str, tag: str, digest: str, started: float, *, reused: bool, log: _BuildLog
    ) -> BuiltImage:
        from docker.errors import ImageNotFound

        name = repository.split("/", 1)[1]
        try:
            local = self.api.inspect_image(f"{repository}:{tag}")
            size: int | None = int(local["Size"])
            local_labels = local["Config"].get("Labels") or {}
        except ImageNotFound:
            size, local_labels = None, {}  # reused from the registry; this engine never pulled it
        manifest: ManifestInfo | None
        try:
            manifest = self.registry_client.manifest(name, digest)
        except RegistryAuthRequired:
            manifest = None
            labels, compressed = local_labels, 0
        else:
            if manifest is None:
                raise PushRefused(f"registry {self.registry.base_url} has no manifest {name}@{digest}")
            labels = self.registry_client.image_config(name, manifest).get("config", {}).get("Labels") or {}
            compressed = manifest.compressed_size_bytes
        return BuiltImage(
            repository=repository,
            tag=tag,
            digest=digest,
            reference=f"{repository}@{digest}",
            size_bytes=size,
            compressed_size_bytes=compressed,
            build_s=round(time.monotonic() - started, 3),
            reused_existing=reused,
            cached_steps=log.cached_steps,
            total_steps=log.total_steps,
            model_sha256=labels.get(LABEL_MODEL_SHA256, ""),
            labels=dict(labels),
        )
