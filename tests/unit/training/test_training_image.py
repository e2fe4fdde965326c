"""The training image (docker/train.Dockerfile) must not hand GPUs out itself: under the NVIDIA
runtime an image-level NVIDIA_VISIBLE_DEVICES=all exposes every GPU of the host to each container,
whatever device ids the router's placement requested."""

from __future__ import annotations

import re
import shlex

from include.mlops.training.runner import repo_root


def _env_of_final_stage(dockerfile: str) -> dict[str, str]:
    """ENV key=value pairs of the last FROM stage (continuation lines joined, comments dropped)."""
    lines = [ln for ln in dockerfile.splitlines() if not ln.lstrip().startswith("#")]
    instructions = re.split(r"(?<!\\)\n", "\n".join(lines))
    joined = [re.sub(r"\\\n\s*", " ", ins).strip() for ins in instructions]
    stages: list[list[str]] = []
    for ins in joined:
        if ins.upper().startswith("FROM "):
            stages.append([])
        elif stages and ins:
            stages[-1].append(ins)
    env: dict[str, str] = {}
    for ins in stages[-1]:
        if ins.upper().startswith("ENV "):
            for pair in shlex.split(ins[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_the_training_image_does_not_expose_every_gpu() -> None:
    env = _env_of_final_stage((repo_root() / "docker" / "train.Dockerfile").read_text())
    assert env["PYTHONPATH"] == "/app"  # the parser reads the image's ENV
    assert "NVIDIA_VISIBLE_DEVICES" not in env, env
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
