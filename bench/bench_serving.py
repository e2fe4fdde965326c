"""Throughput and latency of this model server vs `mlflow models serve` on the same ONNX model.

Same load for both: C client threads (stdlib http.client, keep-alive) posting one record per
request for D seconds. Our server takes raw records (and encodes them); MLflow takes the encoded
float32 row. Run: PYTHONPATH=. .venv/bin/python bench/bench_serving.py [--seconds 8 --clients 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from include.mlops.data.features import encode_records
from include.mlops.deploy.process import free_port
from tests.model_fixtures import build_logistic_model, sample_records

ROOT = Path(__file__).resolve().parents[1]


def wait_http(port: int, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"port {port}{path} not ready after {timeout_s} s")


def hammer(port: int, path: str, bodies: list[bytes], seconds: float, clients: int) -> tuple[float, float, float, int]:
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        k = i
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            c.request("POST", path, body=bodies[k % len(bodies)], headers={"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            lat[i].append((time.perf_counter() - t0) * 1000)
            errors[i] += r.status != 200
            k += clients

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    all_lat = np.concatenate([np.array(x) for x in lat])
    return len(all_lat) / wall, float(np.percentile(all_lat, 50)), float(np.percentile(all_lat, 99)), sum(errors)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, default=4)
    a = ap.parse_args()
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    records = sample_records(200, seed=11)
    x = encode_records(records)
    ours_bodies = [json.dumps({"records": [r]}).encode() for r in records]
    mlflow_bodies = [json.dumps({"inputs": row[None, :].tolist()}).encode() for row in x]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        model_path = build_logistic_model(d / "m.onnx")
        # save_model writes the same MLmodel directory log_model would put in a run's artifacts
        mlflow_dir = d / "mlflow_model"
        signature = infer_signature(x[:2], np.zeros((2, 1), dtype=np.float32))
        mlflow.onnx.save_model(onnx.load(str(model_path)), str(mlflow_dir), signature=signature)
        results = {}
        procs = []
        try:
            p1 = free_port()
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "include.mlops.serving.server", "--model", str(model_path), "--port", str(p1),
                 "--model-name", "fraud", "--model-version", "1"],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
            wait_http(p1, "/health/ready", 30)
            hammer(p1, "/predict", ours_bodies, 1.0, a.clients)  # warm-up
            results["this server"] = hammer(p1, "/predict", ours_bodies, a.seconds, a.clients)
            procs[-1].terminate()
            procs[-1].wait(20)

            p2 = free_port()
            mlflow_log = open(d / "mlflow-serve.log", "wb")  # noqa: SIM115 - closed with the temp dir
            mlflow_exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
            procs.append(subprocess.Popen(
                [mlflow_exe, "models", "serve", "-m", str(mlflow_dir), "-h", "127.0.0.1", "-p", str(p2),
                 "--env-manager", "local", "--workers", "1"],
                stdout=mlflow_log, stderr=subprocess.STDOUT,
                # mlflow execs `uvicorn` by name: it must find this environment's
                env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
            ))  # fmt: skip
            try:
                wait_http(p2, "/ping", 120)
            except RuntimeError:
                print((d / "mlflow-serve.log").read_text()[-3000:])
                raise
            hammer(p2, "/invocations", mlflow_bodies, 1.0, a.clients)
            results["mlflow models serve"] = hammer(p2, "/invocations", mlflow_bodies, a.seconds, a.clients)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    p.wait(20)
    print(f"{a.clients} clients x {a.seconds:g} s, 1 record per request, 1 server worker each")
    print(f"{'':22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for name, (rps, p50, p99, err) in results.items():
        print(f"{name:22}{rps:>10.0f}{p50:>10.2f}{p99:>10.2f}{err:>8}")
    ours, theirs = results["this server"], results["mlflow models serve"]
    print(
        f"throughput ratio: {ours[0] / theirs[0]:.1f}x (target >= 3x); "
        f"p99 ratio (mlflow/ours): {theirs[2] / ours[2]:.1f}x"
    )


if __name__ == "__main__":
    main()
