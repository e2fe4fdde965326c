"""Assemble the serving image's build context: Dockerfile, a wheelhouse, the server's code, the model.

Dependencies are resolved once per requirements file into a cached wheelhouse on the host, so the
image build itself needs no network and the same pins give the same layers (and build cache hits).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from include.mlops.errors import BuildError
from include.mlops.serving_image.image import ModelArtifact

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_DOCKERFILE = REPO_ROOT / "docker" / "serve.Dockerfile"
DEFAULT_REQUIREMENTS = REPO_ROOT / "requirements-serve.txt"
DEFAULT_WORK_DIR = REPO_ROOT / ".local" / "build"

# Only what the model server imports goes into the image (relative to the repo root).
SERVER_CODE: tuple[str, ...] = (
    "include/__init__.py",
    "include/mlops/__init__.py",
    "include/mlops/errors.py",
    "include/mlops/data",
    "include/mlops/serving",
)

# The serving base image is Debian bookworm: CPython 3.11 on glibc 2.36, x86_64.
WHEEL_PLATFORMS: tuple[str, ...] = (
    "manylinux_2_36_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "linux_x86_64",
)


class WheelhouseError(BuildError):
    """The serving dependencies could not be downloaded as wheels."""


class ServerCodeMissing(BuildError):
    """A file the model server needs is not in the checkout."""


@dataclass(frozen=True)
class BuildContext:
    path: Path  # directory to send to the engine; Dockerfile at its root
    fingerprint: str  # sha256 over Dockerfile, wheels and code (not the model): same value, same layers
    model_sha256: str


def ensure_wheelhouse(requirements: Path, cache_dir: Path, python_version: str = "3.11") -> Path:
    """Download binary wheels for `requirements` (for the base image's Python) once; reuse them after.

    Keyed by the requirements' content and the target Python, so a changed pin gets a fresh directory.
    """
    text = requirements.read_text()
    key = hashlib.sha256(f"{python_version}\n{text}".encode()).hexdigest()[:16]
    target = cache_dir / f"py{python_version}-{key}"
    if (target / "requirements.txt").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wheels-", dir=cache_dir))
    major_minor = python_version.replace(".", "")
    cmd = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--only-binary=:all:", "--python-version", python_version,
        "--implementation", "cp", "--abi", f"cp{major_minor}", "--abi", "abi3", "--abi", "none",
        *(arg for p in WHEEL_PLATFORMS for arg in ("--platform", p)),
        "-r", str(requirements), "-d", str(tmp),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise WheelhouseError(
            f"pip could not download wheels for {requirements} (python {python_version}, manylinux x86_64); "
            f"every serving dependency needs a binary wheel. pip said:\n{proc.stderr[-2000:]}"
        )
    shutil.copyfile(requirements, tmp / "requirements.txt")
    try:
        tmp.rename(target)
    except OSError:
        # Another build filled the same key first: theirs is equivalent, use it.
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # wheels are large and immutable: link when on the same filesystem
    except OSError:
        shutil.copy2(src, dst)


def _server_files(repo_root: Path) -> list[Path]:
    files: list[Path] = []
    for rel in SERVER_CODE:
        p = repo_root / rel
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(sorted(f for f in p.rglob("*.py") if "__pycache__" not in f.parts))
        else:
            raise ServerCodeMissing(
                f"{p} is missing: the serving image needs {rel} (the model server and what it imports)"
            )
    return files


def prepare_context(
    model: ModelArtifact,
    into: Path,
    *,
    dockerfile: Path = DEFAULT_DOCKERFILE,
    wheelhouse: Path,
    repo_root: Path = REPO_ROOT,
) -> BuildContext:
    """Lay out `into` as wheels/, app/include/..., model/model.onnx and Dockerfile; return its fingerprint."""
    h = hashlib.sha256()
    into.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(dockerfile, into / "Dockerfile")
    h.update(b"Dockerfile\0" + dockerfile.read_bytes())
    for whl in sorted(wheelhouse.iterdir()):
        if whl.suffix == ".whl" or whl.name == "requirements.txt":
            _place(whl, into / "wheels" / whl.name)
            # Wheel file names carry name, version and build tag: enough to identify the content.
            h.update(b"wheel\0" + whl.name.encode())
    h.update(b"requirements\0" + (wheelhouse / "requirements.txt").read_bytes())
    for f in _server_files(repo_root):
        rel = f.relative_to(repo_root)
        _place(f, into / "app" / rel)
        h.update(b"code\0" + str(rel).encode() + b"\0" + f.read_bytes())
    _place(model.onnx_path, into / "model" / "model.onnx")
    return BuildContext(path=into, fingerprint=h.hexdigest(), model_sha256=model.sha256())
