# The model server image: ONNX Runtime behind FastAPI/uvicorn, one model version baked in.
# Built by include/mlops/build (DockerImageBuilder), which lays out the context:
#   Dockerfile, wheels/*.whl + wheels/requirements.txt, app/include/..., model/model.onnx
# Layers go from least to most often changed, so a model-only change rebuilds only the last one.
ARG BASE_IMAGE=mlops-base:bookworm

# --- builder: a venv from the prebuilt wheels (no network, no compilers) --------------------------
FROM ${BASE_IMAGE} AS builder
COPY wheels/ /wheels/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links /wheels --no-compile --disable-pip-version-check \
      --quiet -r /wheels/requirements.txt \
 && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools \
 && find /opt/venv -depth \( -name tests -o -name __pycache__ \) -type d -path '*/site-packages/*' \
      -exec rm -rf {} + \
 && /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib >/dev/null

# --- final: python + the venv + the server code + the model ---------------------------------------
FROM ${BASE_IMAGE}
ARG BASE_IMAGE
# Numeric uid/gid so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 mlops \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mlops
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app
WORKDIR /app
COPY app/ /app/
LABEL org.opencontainers.image.title="mlops model server" \
      org.opencontainers.image.description="ONNX model behind FastAPI: /predict, /health/ready, /metrics" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health/ready', timeout=2)"]
# MLOPS_IMAGE_DIGEST is set by the deployer (an image cannot know its own digest).
CMD ["sh", "-c", "exec python -m include.mlops.serving.server --model /app/model/model.onnx --host 0.0.0.0 --port 8080 --model-name \"$MLOPS_MODEL_NAME\" --model-version \"$MLOPS_MODEL_VERSION\" ${MLOPS_IMAGE_DIGEST:+--image-digest \"$MLOPS_IMAGE_DIGEST\"}"]

# Model-specific metadata and the model itself last: everything above is shared between versions.
ARG MODEL_NAME
ARG MODEL_VERSION
ARG MODEL_SHA256
ARG BUILD_FINGERPRINT
LABEL org.opencontainers.image.version="${MODEL_VERSION}" \
      io.mlops.model.name="${MODEL_NAME}" \
      io.mlops.model.version="${MODEL_VERSION}" \
      io.mlops.model.sha256="${MODEL_SHA256}" \
      io.mlops.build.fingerprint="${BUILD_FINGERPRINT}"
ENV MLOPS_MODEL_NAME=${MODEL_NAME} \
    MLOPS_MODEL_VERSION=${MODEL_VERSION}
COPY --chown=0:0 model/model.onnx /app/model/model.onnx
