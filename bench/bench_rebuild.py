"""Serving image: cold build vs a rebuild after a model-only change vs an idempotent re-run.

Baseline = the cold build (no layer cache; the wheelhouse already downloaded), measured in the same run.
Needs docker/start_engine.sh and docker/bootstrap_base.sh. Run: PYTHONPATH=. .venv/bin/python bench/bench_rebuild.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from include.mlops.serving_image import DockerImageBuilder, ModelArtifact, engine_available
from include.mlops.serving_image.context import DEFAULT_REQUIREMENTS, DEFAULT_WORK_DIR, ensure_wheelhouse
from tests.model_fixtures import build_logistic_model

REGISTRY = f"127.0.0.1:{os.environ.get('MLOPS_REGISTRY_PORT', '5001')}"
NAME = "fraud-detector-bench"


def main() -> int:
    ok, reason = engine_available()
    if not ok:
        print(f"skipped: {reason}")
        return 1
    t0 = time.monotonic()
    ensure_wheelhouse(DEFAULT_REQUIREMENTS, DEFAULT_WORK_DIR / "wheels")
    wheel_s = time.monotonic() - t0
    run = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        m1 = build_logistic_model(Path(tmp) / "m1.onnx", seed=11)
        m2 = build_logistic_model(Path(tmp) / "m2.onnx", seed=12)
        cold = DockerImageBuilder.from_base_url(None, REGISTRY, no_cache=True).build_and_push(
            ModelArtifact(NAME, "1", m1), tag=f"{run}-cold"
        )
        warm_builder = DockerImageBuilder.from_base_url(None, REGISTRY)
        warm = warm_builder.build_and_push(ModelArtifact(NAME, "2", m2), tag=f"{run}-warm")
        again = warm_builder.build_and_push(ModelArtifact(NAME, "2", m2), tag=f"{run}-warm")

    rows = [
        ("cold build (no layer cache) + push", cold.build_s, f"{cold.cached_steps}/{cold.total_steps}"),
        ("rebuild, model-only change + push", warm.build_s, f"{warm.cached_steps}/{warm.total_steps}"),
        ("same model + tag (reused, no build)", again.build_s, "-"),
    ]
    print(f"wheelhouse ready in {wheel_s:.1f} s (0 when cached); image {cold.size_bytes / 1e6:.0f} MB "
          f"uncompressed, {cold.compressed_size_bytes / 1e6:.0f} MB in the registry")  # fmt: skip
    print(f"{'case':40} {'wall s':>8} {'vs cold':>8} {'speed-up':>9} {'cached steps':>13}")
    for label, secs, cached in rows:
        print(f"{label:40} {secs:8.2f} {secs / cold.build_s:8.3f} {cold.build_s / secs:8.1f}x {cached:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
