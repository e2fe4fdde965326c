"""The model server: one ONNX model behind FastAPI/uvicorn, with health, info, Prometheus metrics
and a ring of recent request samples that the canary analysis reads.

Run: python -m include.mlops.serving.server --model PATH (--port P | --fd N) --model-name N --model-version V
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

# the one encoder training and evaluation use too, with the checks a client can fail named
from include.mlops.data.features import encode_records
from include.mlops.data.schema import N_FEATURES
from include.mlops.errors import ModelLoadError

if TYPE_CHECKING:
    import onnxruntime as ort

# FastAPI resolves handler annotations at runtime, so its types are imported at module level;
# no DAG file imports this module (the deploy targets start it as a process).

log = logging.getLogger(__name__)

INPUT_NAME = "features"
OUTPUT_NAME = "probability"
MAX_RECORDS_PER_REQUEST = 10_000
# 10,000 records of ~300 bytes each, with room to spare; checked before and while reading
MAX_BODY_BYTES = 8 * 1024 * 1024


class BodyTooLarge(Exception):
    """The request body is larger than the server accepts (413)."""


@dataclass(frozen=True)
class ServerConfig:
    model_path: Path
    model_name: str
    model_version: str
    image_digest: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    # a listening socket the parent bound and passed on (it then knows the port, and no other
    # process can take it between a probe and the bind); host and port are then only labels
    fd: int | None = None
    ort_threads: int = 1
    sample_ring_size: int = 20_000
    graceful_shutdown_s: float = 30.0
    max_body_bytes: int = MAX_BODY_BYTES


@dataclass
class _ServerState:
    """Mutable per-process state; only the event loop thread writes samples."""

    session: ort.InferenceSession | None = None
    loaded_at: float | None = None
    load_error: str | None = None
    in_flight: int = 0
    # (unix ts, latency_ms, status, mean prediction or None, non-finite output); O(1) append, bounded
    samples: collections.deque[tuple[float, float, int, float | None, bool]] = field(
        default_factory=lambda: collections.deque(maxlen=20_000)
    )


def load_session(model_path: Path, ort_threads: int) -> ort.InferenceSession:
    """Open the ONNX model and check it takes `features` [batch, N_FEATURES] and gives `probability`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # one uvicorn worker per process; threads beyond one fight the event loop on small models
    opts.intra_op_num_threads = ort_threads
    opts.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"cannot load ONNX model {model_path}: {exc}") from exc
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name for o in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise ModelLoadError(
            f"model {model_path} has inputs {sorted(inputs)} and outputs {sorted(outputs)}; "
            f"the server needs input {INPUT_NAME!r} and output {OUTPUT_NAME!r}"
        )
    shape = inputs[INPUT_NAME].shape
    if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != N_FEATURES):
        raise ModelLoadError(
            f"model {model_path} input {INPUT_NAME!r} has shape {shape}; expected [batch, {N_FEATURES}]"
        )
    return session


WARM_UP_RUNS = 10


def warm_up(session: Any, runs: int = WARM_UP_RUNS) -> None:
    """Run the graph a few times before reporting ready: ONNX Runtime's first runs allocate and
    plan, and a canary judged on its cold first requests looks slower than it is. A graph that
    fails here is left to fail on real requests (the canary analysis counts those as errors)."""
    import numpy as np

    for batch in (1, 8) * (runs // 2):
        try:
            session.run([OUTPUT_NAME], {INPUT_NAME: np.zeros((batch, N_FEATURES), dtype=np.float32)})
        except Exception as exc:  # noqa: BLE001 - reported, judged later on real traffic
            log.warning("warm-up inference failed: %s", str(exc)[:300])
            return


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (BodyTooLarge) by its declared Content-Length or once `limit` bytes have arrived.

    Starlette's request.body() reads everything first; a client could make the server buffer
    any amount before the size rule is checked.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {int(declared)} bytes (Content-Length) is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(config: ServerConfig) -> FastAPI:
    """Build the FastAPI app; the model loads in a background thread so liveness answers at once."""
    from contextlib import asynccontextmanager

    import numpy as np
    import prometheus_client
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    prometheus_client.disable_created_metrics()

    state = _ServerState(samples=collections.deque(maxlen=config.sample_ring_size))
    registry = CollectorRegistry()
    labels = {"model_name": config.model_name, "model_version": config.model_version}
    requests_total = Counter(
        "predict_requests_total", "POST /predict requests by status code", ["status", *labels], registry=registry
    )
    latency_hist = Histogram(
        "predict_latency_seconds",
        "POST /predict handler latency",
        list(labels),
        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        registry=registry,
    ).labels(**labels)
    pred_hist = Histogram(
        "prediction_probability",
        "predicted fraud probability per record",
        list(labels),
        buckets=tuple(i / 10 for i in range(1, 11)),
        registry=registry,
    ).labels(**labels)
    ready_gauge = Gauge("model_ready", "1 once the model is loaded", list(labels), registry=registry).labels(**labels)
    counters: dict[int, Any] = {}
    version_header = {"X-Model-Version": config.model_version}

    def count(status: int) -> None:
        c = counters.get(status)
        if c is None:
            c = counters[status] = requests_total.labels(status=str(status), **labels)
        c.inc()

    def load() -> None:
        try:
            session = load_session(config.model_path, config.ort_threads)
            warm_up(session)
            state.session = session
            state.loaded_at = time.time()
            ready_gauge.set(1)
            log.info("model %s v%s loaded from %s", config.model_name, config.model_version, config.model_path)
        except ModelLoadError as exc:
            state.load_error = str(exc)
            log.error("%s", exc)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        threading.Thread(target=load, name="model-load", daemon=True).start()
        yield

    app = FastAPI(title=f"model server {config.model_name}", lifespan=lifespan, docs_url=None, redoc_url=None)

    def finish(t0: float, status: int, mean_pred: float | None, non_finite: bool = False) -> None:
        latency_s = time.perf_counter() - t0
        state.samples.append((time.time(), latency_s * 1000.0, status, mean_pred, non_finite))
        latency_hist.observe(latency_s)
        count(status)

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        t0 = time.perf_counter()
        state.in_flight += 1
        try:
            if state.session is None:
                finish(t0, 503, None)
                return JSONResponse({"detail": "model not loaded yet"}, status_code=503, headers=version_header)
            try:
                raw = await _read_body(request, config.max_body_bytes)
            except BodyTooLarge as exc:
                finish(t0, 413, None)
                # the rest of the body is never read: close the connection rather than drain it
                return JSONResponse(
                    {"detail": f"{exc}; send at most {MAX_RECORDS_PER_REQUEST} records per request"},
                    status_code=413,
                    headers={**version_header, "Connection": "close"},
                )
            try:
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"body is not JSON ({exc}); send {{'records': [...]}}") from None
                records = body["records"]
                if not isinstance(records, list) or not records:
                    raise ValueError("'records' must be a non-empty list of objects")
                if len(records) > MAX_RECORDS_PER_REQUEST:
                    raise ValueError(f"{len(records)} records in one request; the limit is {MAX_RECORDS_PER_REQUEST}")
                x = encode_records(records)
            except (ValueError, KeyError, TypeError) as exc:
                msg = "body must be JSON {'records': [...]}" if isinstance(exc, KeyError | TypeError) else str(exc)
                finish(t0, 422, None)
                return JSONResponse({"detail": msg}, status_code=422, headers=version_header)
            try:
                probs = state.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0].reshape(-1)
            except Exception as exc:  # noqa: BLE001 - any runtime failure of the graph is the model's fault: a 500
                finish(t0, 500, None)
                log.error("inference failed: %s", exc)
                return JSONResponse(
                    {"detail": f"inference failed: {str(exc)[:300]}"}, status_code=500, headers=version_header
                )
            finite = np.isfinite(probs)
            if not finite.all():
                # NaN/inf is a model failure, never a 200: JSON has no NaN, and a client reading
                # "probability NaN" as "not fraud" is worse than an error it can see
                n_bad = int((~finite).sum())
                finish(t0, 500, None, non_finite=True)
                log.error("model produced %d non-finite predictions of %d", n_bad, probs.size)
                return JSONResponse(
                    {"detail": f"model produced non-finite predictions (NaN/inf) for {n_bad} of {probs.size} records"},
                    status_code=500,
                    headers=version_header,
                )
            mean = float(np.mean(probs))
            for p in probs:
                pred_hist.observe(float(p))
            payload = {
                "predictions": probs.tolist(),
                "model_name": config.model_name,
                "model_version": config.model_version,
            }
            finish(t0, 200, mean)
            return Response(json.dumps(payload, allow_nan=False), media_type="application/json", headers=version_header)
        finally:
            state.in_flight -= 1

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/health/ready")
    async def ready() -> Response:
        if state.session is not None:
            return JSONResponse({"status": "ready"})
        body: dict[str, Any] = {"status": "loading" if state.load_error is None else "failed"}
        if state.load_error:
            body["load_error"] = state.load_error
        return JSONResponse(body, status_code=503)

    @app.get("/info")
    async def info() -> dict[str, Any]:
        return {
            "model_name": config.model_name,
            "model_version": config.model_version,
            "image_digest": config.image_digest,
            "model_path": str(config.model_path),
            "loaded_at": state.loaded_at,
            "load_error": state.load_error,
            "in_flight": state.in_flight,
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/samples")
    async def samples(since: float = 0.0) -> dict[str, Any]:
        # columnar: compact JSON and directly usable as arrays by the analysis
        rows = [s for s in state.samples if s[0] >= since]
        return {
            "model_version": config.model_version,
            "ts": [r[0] for r in rows],
            "latency_ms": [r[1] for r in rows],
            "status": [r[2] for r in rows],
            "mean_prediction": [r[3] for r in rows],
            "non_finite": [r[4] for r in rows],
        }

    app.state.server_state = state
    return app


def serve(config: ServerConfig) -> None:
    """Run the app on uvicorn until SIGTERM/SIGINT; in-flight requests drain before exit."""
    import socket

    import uvicorn

    uv = uvicorn.Config(
        create_app(config),
        host=config.host,
        port=config.port,
        workers=1,
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=int(config.graceful_shutdown_s),
        server_header=False,
    )
    # socket(fileno=) reads the family back from the descriptor (uvicorn's own `fd` assumes AF_UNIX)
    sockets = None if config.fd is None else [socket.socket(fileno=config.fd)]
    uvicorn.Server(uv).run(sockets=sockets)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, type=Path, help="path of the ONNX model file")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int, help="bind 127.0.0.1:PORT (or --host)")
    where.add_argument("--fd", type=int, help="serve on this inherited listening socket instead")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model-name", required=True)
    p.add_argument("--model-version", required=True)
    p.add_argument("--image-digest", default=None)
    p.add_argument("--ort-threads", type=int, default=1)
    p.add_argument("--graceful-shutdown-s", type=float, default=30.0)
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="larger request bodies get 413")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve(
        ServerConfig(
            model_path=a.model,
            model_name=a.model_name,
            model_version=a.model_version,
            image_digest=a.image_digest,
            host=a.host,
            port=a.port or 0,
            fd=a.fd,
            ort_threads=a.ort_threads,
            graceful_shutdown_s=a.graceful_shutdown_s,
            max_body_bytes=a.max_body_bytes,
        )
    )


if __name__ == "__main__":
    main()
