"""The serving image build path against a real Docker engine and the local registry.

Needs docker/start_engine.sh (dockerd + registry on 127.0.0.1:$MLOPS_REGISTRY_PORT, default 5001) and
docker/bootstrap_base.sh (the offline base image). Skips only when no engine answers, and under
CI=true fails instead (the CI starts both).
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from include.mlops.data.schema import BOOLEAN_FEATURES, CATEGORICAL_FEATURES, NUMERIC_FEATURES
from include.mlops.serving_image import BuiltImage, DockerImageBuilder, ImageBuilder, ModelArtifact, engine_available
from include.mlops.serving_image.docker_builder import DEFAULT_BASE_IMAGE, ImageBuildFailed
from include.mlops.serving_image.image import InvalidImageReference, ModelFileMissing
from include.mlops.serving_image.image_registry import MANIFEST_TYPES, RegistryClient, RegistryUnavailable
from tests.model_fixtures import build_logistic_model

REGISTRY = f"127.0.0.1:{os.environ.get('MLOPS_REGISTRY_PORT', '5001')}"
MODEL_NAME = "fraud-detector-it"
MAX_IMAGE_BYTES = 400 * 1024 * 1024
# skips without an engine, fails under CI=true (the docker_engine fixture, tests/services.py)
needs_engine = pytest.mark.usefixtures("docker_engine")


def _record() -> dict[str, object]:
    rec: dict[str, object] = {col: rng[0] for col, (_, rng) in NUMERIC_FEATURES.items()}
    rec.update(dict.fromkeys(BOOLEAN_FEATURES, False))
    rec.update({col: vocab[0] for col, vocab in CATEGORICAL_FEATURES.items()})
    return rec


@pytest.fixture(scope="module")
def docker_api() -> Iterator[object]:
    import docker

    api = docker.APIClient(version="auto", timeout=120)
    try:
        api.inspect_image(DEFAULT_BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"base image {DEFAULT_BASE_IMAGE} is missing: run docker/bootstrap_base.sh (about 1.5 min)")
    ok, reason = RegistryClient(REGISTRY).ping()
    if not ok:
        pytest.fail(f"{reason}: run docker/start_engine.sh")
    yield api
    api.close()


@pytest.fixture(scope="module")
def builder(docker_api: object) -> DockerImageBuilder:
    return DockerImageBuilder(docker_api, REGISTRY)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def session_tag() -> str:
    # A fresh tag per run: the first build really builds (the layer cache may still be warm).
    return f"it-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def first_image(builder: DockerImageBuilder, session_tag: str, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    model = build_logistic_model(tmp_path_factory.mktemp("m1") / "model.onnx", seed=1)
    return builder.build_and_push(ModelArtifact(MODEL_NAME, "1", model), tag=f"{session_tag}-v1")


@pytest.fixture(scope="module")
def second_image(
    builder: DockerImageBuilder, first_image: BuiltImage, session_tag: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[BuiltImage, list[str]]:
    model = build_logistic_model(tmp_path_factory.mktemp("m2") / "model.onnx", seed=2)
    image = builder.build_and_push(ModelArtifact(MODEL_NAME, "2", model), tag=f"{session_tag}-v2")
    return image, list(builder.last_build_log)


# --- without an engine -------------------------------------------------------------------------------


def test_docker_image_builder_satisfies_the_image_builder_protocol() -> None:
    assert issubclass(DockerImageBuilder, ImageBuilder)


def test_engine_available_names_the_url_when_nothing_answers(tmp_path: Path) -> None:
    ok, reason = engine_available(f"unix://{tmp_path}/no-engine.sock", timeout_s=2)
    assert not ok
    assert "no-engine.sock" in reason and "start_engine.sh" in reason


def test_model_artifact_rejects_a_missing_file_and_an_unusable_name(tmp_path: Path) -> None:
    with pytest.raises(ModelFileMissing, match="missing or empty"):
        ModelArtifact("fraud-detector", "1", tmp_path / "absent.onnx")
    model = build_logistic_model(tmp_path / "model.onnx")
    with pytest.raises(InvalidImageReference, match="repository name"):
        _ = ModelArtifact("fraud/detector!", "1", model).repository_name
    assert ModelArtifact("Fraud Detector", "1", model).repository_name == "fraud-detector"


# --- with the engine and the local registry ----------------------------------------------------------


@needs_engine
@pytest.mark.slow
def test_invalid_tag_is_rejected_before_anything_is_built(builder: DockerImageBuilder, tmp_path: Path) -> None:
    model = build_logistic_model(tmp_path / "model.onnx")
    with pytest.raises(InvalidImageReference, match="image tag"):
        builder.build_and_push(ModelArtifact(MODEL_NAME, "1", model), tag="-bad tag")


@needs_engine
@pytest.mark.slow
def test_built_image_is_pinned_by_the_digest_the_registry_serves(first_image: BuiltImage) -> None:
    assert first_image.digest.startswith("sha256:") and len(first_image.digest) == 71
    assert first_image.reference == f"{REGISTRY}/{MODEL_NAME}@{first_image.digest}"
    req = urllib.request.Request(
        f"http://{REGISTRY}/v2/{MODEL_NAME}/manifests/{first_image.tag}", headers={"Accept": MANIFEST_TYPES[0]}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Docker-Content-Digest"] == first_image.digest
        manifest = json.load(resp)
    assert manifest["mediaType"] == MANIFEST_TYPES[0]
    assert first_image.labels["io.mlops.model.version"] == "1"
    assert first_image.labels["io.mlops.model.name"] == MODEL_NAME
    assert first_image.labels["org.opencontainers.image.version"] == "1"


@needs_engine
@pytest.mark.slow
def test_image_is_small_runs_as_non_root_and_has_no_compiler(docker_api, first_image: BuiltImage) -> None:  # type: ignore[no-untyped-def]
    assert first_image.size_bytes is not None and first_image.size_bytes < MAX_IMAGE_BYTES, first_image.size_bytes
    config = docker_api.inspect_image(first_image.tagged)["Config"]
    assert config["User"] == "10001:10001"
    assert "8080/tcp" in config["ExposedPorts"]
    assert "/health/ready" in " ".join(config["Healthcheck"]["Test"])
    container = docker_api.create_container(
        first_image.tagged, command=["sh", "-c", "id -u; command -v gcc cc c++ || echo no-compiler"]
    )
    try:
        docker_api.start(container)
        assert docker_api.wait(container, timeout=60)["StatusCode"] == 0
        out = docker_api.logs(container).decode().split()
    finally:
        docker_api.remove_container(container, force=True)
    assert out == ["10001", "no-compiler"]


@needs_engine
@pytest.mark.slow
def test_container_reports_ready_and_serves_predictions(docker_api, first_image: BuiltImage) -> None:  # type: ignore[no-untyped-def]
    container = docker_api.create_container(
        first_image.reference,
        environment={"MLOPS_IMAGE_DIGEST": first_image.digest},
        ports=[8080],
        # the engine picks the host port when it binds it, and says which: no port handed on to a race
        host_config=docker_api.create_host_config(port_bindings={8080: ("127.0.0.1",)}),
    )
    try:
        docker_api.start(container)
        port = int(docker_api.port(container, 8080)[0]["HostPort"])
        deadline, ready = time.monotonic() + 60, False
        while time.monotonic() < deadline and not ready:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as r:
                    ready = r.status == 200
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        assert ready, docker_api.logs(container).decode()[-2000:]
        body = json.dumps({"records": [_record(), _record()]}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            payload = json.load(r)
        assert payload["model_name"] == MODEL_NAME and payload["model_version"] == "1"
        assert len(payload["predictions"]) == 2 and all(0.0 < p < 1.0 for p in payload["predictions"])
        # Docker's own HEALTHCHECK (the urllib one-liner) must agree: first probe after 10 s.
        deadline, health = time.monotonic() + 40, ""
        while time.monotonic() < deadline and health != "healthy":
            health = docker_api.inspect_container(container)["State"].get("Health", {}).get("Status", "")
            time.sleep(1)
        assert health == "healthy"
    finally:
        docker_api.remove_container(container, force=True)


@needs_engine
@pytest.mark.slow
def test_model_only_change_rebuilds_only_the_model_layer(
    builder: DockerImageBuilder, first_image: BuiltImage, second_image: tuple[BuiltImage, list[str]]
) -> None:
    image, log = second_image
    assert image.digest != first_image.digest
    registry = RegistryClient(REGISTRY)
    layers_1 = registry.manifest(MODEL_NAME, first_image.digest).layer_digests  # type: ignore[union-attr]
    layers_2 = registry.manifest(MODEL_NAME, image.digest).layer_digests  # type: ignore[union-attr]
    # Same base, user, venv and code layers; only the model file's layer differs.
    assert layers_1[:-1] == layers_2[:-1]
    assert layers_1[-1] != layers_2[-1]
    text = "".join(log)
    venv_step = text.split("RUN python3 -m venv", 1)[1]
    assert venv_step.lstrip().split("\n", 1)[1].strip().startswith("---> Using cache")
    assert image.cached_steps >= image.total_steps - 8, (image.cached_steps, image.total_steps)
    assert image.build_s < 60


@needs_engine
@pytest.mark.slow
def test_same_model_and_tag_is_reused_without_building(
    builder: DockerImageBuilder, first_image: BuiltImage, tmp_path: Path
) -> None:
    model = build_logistic_model(tmp_path / "model.onnx", seed=1)  # byte-identical to the first image's
    again = builder.build_and_push(ModelArtifact(MODEL_NAME, "1", model), tag=first_image.tag)
    assert again.reused_existing
    assert again.digest == first_image.digest
    assert again.total_steps == 0
    assert again.build_s < 10


@needs_engine
@pytest.mark.slow
def test_same_tag_with_a_different_model_is_rebuilt_and_moves_the_tag(
    builder: DockerImageBuilder, session_tag: str, tmp_path: Path
) -> None:
    tag = f"{session_tag}-moved"
    a = builder.build_and_push(ModelArtifact(MODEL_NAME, "3", build_logistic_model(tmp_path / "a.onnx", seed=3)), tag)
    b = builder.build_and_push(ModelArtifact(MODEL_NAME, "3", build_logistic_model(tmp_path / "b.onnx", seed=4)), tag)
    assert not b.reused_existing and b.digest != a.digest
    assert RegistryClient(REGISTRY).manifest(MODEL_NAME, tag).digest == b.digest  # type: ignore[union-attr]


@needs_engine
@pytest.mark.slow
def test_failing_dockerfile_step_is_reported_with_its_output(docker_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dockerfile = tmp_path / "broken.Dockerfile"
    dockerfile.write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo resolving-offline-deps && echo no-such-wheel >&2 && exit 3\n"
    )
    broken = DockerImageBuilder(docker_api, REGISTRY, dockerfile=dockerfile)
    model = build_logistic_model(tmp_path / "model.onnx", seed=5)
    with pytest.raises(ImageBuildFailed) as err:
        broken.build_and_push(ModelArtifact(MODEL_NAME, "5", model), tag=f"broken-{uuid.uuid4().hex[:8]}")
    message = str(err.value)
    assert "step 3/3" in message and "RUN echo resolving-offline-deps" in message
    assert "no-such-wheel\n" in message and "\x1b" not in message and "non-zero code: 3" in message


@needs_engine
@pytest.mark.slow
def test_unreachable_registry_fails_with_a_build_error_naming_it(docker_api, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # a port this test holds bound but not listening: refused for as long as the test runs, and no
    # other run can start a server on it meanwhile
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        registry = f"127.0.0.1:{held.getsockname()[1]}"
        builder = DockerImageBuilder(docker_api, registry)
        model = build_logistic_model(tmp_path / "model.onnx", seed=6)
        with pytest.raises(RegistryUnavailable, match=registry):
            builder.build_and_push(ModelArtifact(MODEL_NAME, "6", model), tag="unreachable")


@needs_engine
@pytest.mark.slow
def test_airflow_connection_in_the_local_profile_shape_reaches_the_engine_and_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shape airflow_settings.yaml declares: host = engine URL, extra.registry = where to push.
    conn = {"conn_type": "docker", "host": "unix:///var/run/docker.sock", "extra": {"registry": REGISTRY}}
    monkeypatch.setenv("AIRFLOW_CONN_DOCKER_IT", json.dumps(conn))
    from include.mlops.airflow.config import image_builder

    builder = image_builder("docker_it")
    assert builder.registry.host == REGISTRY
    assert builder.api.ping()
