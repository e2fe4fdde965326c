"""A thin training image for tests: the offline base image, the training module as entrypoint,
and the training venv + working tree bind-mounted read-only (``mlops_training_docker_mounts``)."""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

from include.mlops.serving_image.docker_builder import DEFAULT_BASE_IMAGE
from include.mlops.training.runner import repo_root, training_python


def interpreter_mounts() -> list[tuple[str, str]]:
    """Read-only mounts that make the training venv run in the base image: the working tree (which
    holds .venv-train and include/) and, when the venv's interpreter is not Debian's own
    /usr/bin/python3.11 (which the base image has), that interpreter's prefix."""
    root = str(repo_root())
    mounts = [(root, root)]
    prefix = Path(training_python()).resolve().parents[1]
    if prefix != Path("/usr") and not str(prefix).startswith(root):
        mounts.append((str(prefix), str(prefix)))
    return mounts


@contextlib.contextmanager
def dev_trainer_image() -> Iterator[str]:
    """Build the thin image (seconds: no layer but ENV/ENTRYPOINT), yield its tag, remove it."""
    import docker

    client = docker.from_env(timeout=120)
    tag = f"mlops-train-dev:{uuid.uuid4().hex[:8]}"
    dockerfile = (
        f"FROM {DEFAULT_BASE_IMAGE}\n"
        f"ENV PYTHONPATH={repo_root()} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1\n"
        f'ENTRYPOINT ["{training_python()}", "-m", "include.mlops.training.train"]\n'
    )
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    try:
        yield tag
    finally:
        for c in client.containers.list(all=True, filters={"label": "app.kubernetes.io/name=mlops-training"}):
            c.remove(force=True)
        client.images.remove(tag, force=True)
