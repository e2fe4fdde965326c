# The training image: the same entrypoint the local profile runs from .venv-train, so the
# DockerOperator and KubernetesPodOperator train exactly what the tests train.
#
# Build from the repository root (keep .venv*, .local out of the context with .dockerignore):
#   CPU (default):  docker build -f docker/train.Dockerfile -t mlops-train:cpu .
#   CUDA:           docker build -f docker/train.Dockerfile -t mlops-train:cu128 \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#                   (an empty TORCH_INDEX_URL takes the Linux torch wheel from the default index,
#                   which is also a CUDA build; CUDA libraries come as wheels, the host only needs
#                   the NVIDIA driver and container toolkit.)
#   Offline:        put the wheels in a wheels/ folder of the context and pass
#                     --build-arg TORCH_INDEX_URL= --build-arg PIP_INSTALL_ARGS="--no-index --find-links /src"
# Run: docker run --rm [--gpus device=0] --cap-drop ALL --security-opt no-new-privileges -v /data:/data mlops-train:cpu --config /data/run/train_config.json
ARG BASE_IMAGE=mlops-base:bookworm

# --- builder: the training venv (torch, pandas, pyarrow, onnx) ------------------------------------
FROM ${BASE_IMAGE} AS builder
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INSTALL_ARGS=""
WORKDIR /src
# `wheel[s]` is a glob so the folder is optional; its *.whl files land in /src.
COPY requirements-train.txt wheel[s] /src/
# `torch==2.13.0` in requirements-train.txt also matches the index's local build (2.13.0+cpu,
# 2.13.0+cu128), and pip prefers it over the plain version: the index picks the variant.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --quiet \
      ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} ${PIP_INSTALL_ARGS} \
      -r /src/requirements-train.txt \
 && /opt/venv/bin/python -c "import torch, onnx, pandas, pyarrow; print('torch', torch.__version__)" \
 && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools \
 && find /opt/venv -depth -type d -name __pycache__ -exec rm -rf {} +

# --- final: python + venv + the library code -------------------------------------------------------
FROM ${BASE_IMAGE}
ARG BASE_IMAGE
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Numeric uid/gid so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 mlops \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mlops
COPY --from=builder /opt/venv /opt/venv
# No NVIDIA_VISIBLE_DEVICES here: under the NVIDIA runtime an image value of `all` hands every GPU of
# the host to every container, whatever the router reserved. The GPUs come only from the launcher's
# device request (Docker: the placement's device ids) or the device plugin (Kubernetes).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /app
# Code last: a code change rebuilds only this layer, not the multi-GB torch venv.
COPY --chown=0:0 include/ /app/include/
LABEL org.opencontainers.image.title="mlops training" \
      org.opencontainers.image.description="python -m include.mlops.training.train --config CONFIG.json" \
      org.opencontainers.image.base.name="${BASE_IMAGE}" \
      io.mlops.torch.index="${TORCH_INDEX_URL}"
USER 10001:10001
# The config (and the data, output and checkpoint paths it names) come from a mounted volume;
# the checkpoint dir must survive the container so a retried pod resumes.
ENTRYPOINT ["python", "-m", "include.mlops.training.train"]
CMD ["--help"]
