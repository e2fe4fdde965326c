"""The model server as a real process: predict, 422s that name the field, health, info, metrics, samples,
5xx from a model that fails at run time, readiness that never comes for a model that cannot load.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from include.mlops.deploy.process import free_port
from tests.model_fixtures import build_faulty_model, build_logistic_model, build_unloadable_model, sample_records
from tests.ports import BIND_ATTEMPTS, port_taken

ROOT = Path(__file__).resolve().parents[2]
RECORDS = sample_records(5, seed=3)


def start_server(model: Path, version: str = "7") -> tuple[subprocess.Popen, str]:
    """The model server on a free port: started again on a new one when its log says the port was
    taken, and an answer counts only while our server runs (tests/ports.py)."""
    log_path = model.parent / f"server-{model.stem}-{version}.log"
    for _attempt in range(BIND_ATTEMPTS):
        port = free_port()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "include.mlops.serving.server", "--model", str(model), "--port", str(port),
                 "--model-name", "fraud", "--model-version", version, "--image-digest", "sha256:abc"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not port_taken(log_path.read_text(errors="replace")):
            assert proc.poll() is None, f"server exited {proc.returncode}:\n{log_path.read_text()[-2000:]}"
            try:
                httpx.get(f"{url}/health/live", timeout=1)
                if proc.poll() is None:
                    return proc, url
            except httpx.HTTPError:
                time.sleep(0.05)
        proc.kill()
        proc.wait(10)
        if not port_taken(log_path.read_text(errors="replace")):
            raise RuntimeError(f"server did not start:\n{log_path.read_text()[-2000:]}")
    raise RuntimeError(f"the model server found its port taken {BIND_ATTEMPTS} times")


def wait_ready(url: str, timeout_s: float = 20) -> int:
    deadline = time.monotonic() + timeout_s
    code = 0
    while time.monotonic() < deadline:
        code = httpx.get(f"{url}/health/ready", timeout=2).status_code
        if code == 200:
            break
        time.sleep(0.05)
    return code


@pytest.fixture
def server(tmp_path: Path):
    proc, url = start_server(build_logistic_model(tmp_path / "m.onnx"))
    assert wait_ready(url) == 200
    yield url
    proc.send_signal(signal.SIGTERM)
    # uvicorn re-raises the SIGTERM it handled after draining, so -SIGTERM is a clean exit too
    assert proc.wait(15) in (0, -signal.SIGTERM)


def test_predict_returns_probabilities_and_version_header(server: str):
    r = httpx.post(f"{server}/predict", json={"records": RECORDS})
    assert r.status_code == 200
    body = r.json()
    assert len(body["predictions"]) == 5 and all(0 < p < 1 for p in body["predictions"])
    assert body["model_version"] == "7" and r.headers["x-model-version"] == "7"


def test_malformed_records_get_422_naming_the_missing_field(server: str):
    rec = dict(RECORDS[0])
    del rec["merchant_category"]
    r = httpx.post(f"{server}/predict", json={"records": [RECORDS[1], rec]})
    assert r.status_code == 422
    assert "records[1]" in r.json()["detail"] and "'merchant_category'" in r.json()["detail"]
    bad = dict(RECORDS[0], amount="lots")
    assert "'amount'" in httpx.post(f"{server}/predict", json={"records": [bad]}).json()["detail"]
    assert httpx.post(f"{server}/predict", json={"rows": []}).status_code == 422
    assert httpx.post(f"{server}/predict", content=b"{not json").status_code == 422


def test_info_metrics_and_samples_reflect_requests(server: str):
    t0 = time.time()
    for _ in range(3):
        httpx.post(f"{server}/predict", json={"records": RECORDS})
    httpx.post(f"{server}/predict", json={"records": [{}]})
    info = httpx.get(f"{server}/info").json()
    assert info["model_name"] == "fraud" and info["image_digest"] == "sha256:abc" and info["loaded_at"] > 0
    metrics = httpx.get(f"{server}/metrics").text
    assert 'predict_requests_total{model_name="fraud",model_version="7",status="200"} 3.0' in metrics
    assert 'status="422"} 1.0' in metrics
    assert "predict_latency_seconds_bucket" in metrics and "prediction_probability_count" in metrics
    s = httpx.get(f"{server}/samples", params={"since": t0}).json()
    assert s["status"] == [200, 200, 200, 422]
    assert all(x > 0 for x in s["latency_ms"]) and s["mean_prediction"][3] is None
    assert httpx.get(f"{server}/samples", params={"since": time.time() + 60}).json()["status"] == []


def test_model_failing_at_run_time_answers_500(tmp_path: Path):
    proc, url = start_server(build_faulty_model(tmp_path / "f.onnx"))
    try:
        assert wait_ready(url) == 200
        r = httpx.post(f"{url}/predict", json={"records": RECORDS})
        assert r.status_code == 500 and "inference failed" in r.json()["detail"]
    finally:
        proc.kill()
        proc.wait()


def test_unloadable_model_stays_unready_and_says_why(tmp_path: Path):
    proc, url = start_server(build_unloadable_model(tmp_path / "b.onnx"))
    try:
        assert httpx.get(f"{url}/health/live").status_code == 200
        time.sleep(0.5)
        r = httpx.get(f"{url}/health/ready")
        assert r.status_code == 503 and r.json()["status"] == "failed" and "cannot load" in r.json()["load_error"]
        assert httpx.post(f"{url}/predict", json={"records": RECORDS}).status_code == 503
    finally:
        proc.kill()
        proc.wait()


def _strict_json(text: str):
    import json

    def refuse(name: str):
        raise AssertionError(f"non-standard JSON constant {name} in the body")

    return json.loads(text, parse_constant=refuse)


def test_model_answering_nan_gets_500_counted_as_a_non_finite_error(tmp_path: Path):
    from tests.model_fixtures import build_nan_model

    proc, url = start_server(build_nan_model(tmp_path / "nan.onnx"))
    try:
        assert wait_ready(url) == 200
        t0 = time.time()
        r = httpx.post(f"{url}/predict", json={"records": RECORDS})
        assert r.status_code == 500, r.text
        assert "non-finite" in _strict_json(r.text)["detail"]
        s = _strict_json(httpx.get(f"{url}/samples", params={"since": t0}).text)
        assert s["status"] == [500] and s["non_finite"] == [True] and s["mean_prediction"] == [None]
    finally:
        proc.kill()
        proc.wait()


def test_body_declared_over_the_limit_gets_413_before_it_is_sent(server: str):
    import socket

    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        # a gigabyte announced, nothing sent: the old server waited for the whole body
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
        )
        t0 = time.monotonic()
        answer = b""
        while chunk := sock.recv(4096):  # the server closes the connection after its answer
            answer += chunk
        assert time.monotonic() - t0 < 2.0
        text = answer.decode(errors="replace")
        assert text.startswith("HTTP/1.1 413"), text
        assert "over the limit of 8388608 bytes" in text


def test_streamed_body_over_the_limit_gets_413(server: str):
    chunk = b"x" * (1024 * 1024)

    def body():
        yield b'{"records": ["'
        for _ in range(20):  # 20 MiB, chunked: no Content-Length to refuse up front
            yield chunk
        yield b'"]}'

    r = httpx.post(f"{server}/predict", content=body(), headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 413, r.text
    assert "limit of 8388608 bytes" in r.json()["detail"]
    # the server still serves
    assert httpx.post(f"{server}/predict", json={"records": RECORDS}).status_code == 200


def test_boolean_strings_parse_by_meaning_and_unknown_ones_get_422(server: str):
    def predict(value: object) -> float:
        r = httpx.post(f"{server}/predict", json={"records": [dict(RECORDS[0], card_present=value)]})
        assert r.status_code == 200, (value, r.text)
        return r.json()["predictions"][0]

    false, true = predict(False), predict(True)
    assert false != true
    for v in ("false", "False", "0", "no", 0):
        assert predict(v) == false, v
    for v in ("true", "1", "yes", 1):
        assert predict(v) == true, v
    r = httpx.post(f"{server}/predict", json={"records": [RECORDS[0], dict(RECORDS[1], is_online="maybe")]})
    assert r.status_code == 422
    assert "records[1]" in r.json()["detail"] and "'is_online'" in r.json()["detail"]
    assert "'maybe'" in r.json()["detail"]
