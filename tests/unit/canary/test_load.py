"""The load generator against a real loopback socket server that misbehaves on purpose."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from include.mlops.canary.load import LoadGenerator
from include.mlops.errors import MlopsError

OK = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-model-version: 7\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\n\r\n{}"  # one request per connection: no stale keep-alive in this server
)


class FlakyServer:
    """Answers HTTP/1.1 over raw sockets; the first `drop` connections are closed unanswered."""

    def __init__(self, drop: int) -> None:
        self.drop = drop
        self.connections = 0
        self.bodies: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(2.0)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                while len(body) < length and (chunk := conn.recv(4096)):
                    body += chunk
                if self.connections <= self.drop:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    continue  # close with RST, no response: what a reload race looks like
                self.bodies.append(body)
                conn.sendall(OK)


@pytest.fixture
def flaky() -> Iterator[FlakyServer]:
    servers: list[FlakyServer] = []

    def make(drop: int) -> FlakyServer:
        s = FlakyServer(drop)
        s.thread.start()
        servers.append(s)
        return s

    yield make  # type: ignore[misc]
    for s in servers:
        s.stop.set()
        s.thread.join(2)
        s.sock.close()


def _wait_for_results(load: LoadGenerator, n: int, timeout_s: float = 20.0) -> None:
    """Bounded wait for n results: on a loaded box the thread may start after a fixed 0.3 s wait."""
    deadline = time.monotonic() + timeout_s
    while len(load.results()) < n and time.monotonic() < deadline:
        time.sleep(0.02)


def test_a_request_reset_before_any_response_is_retried_once_and_recorded(flaky) -> None:
    server = flaky(drop=1)
    with LoadGenerator(server.url, [{"x": 1}], rps=50, stop_event=threading.Event()) as load:
        _wait_for_results(load, 3)
    results = load.stop()
    assert results and all(r.status == 200 for r in results)
    assert results[0].attempts == 2 and results[0].served_version == "7"
    assert all(r.attempts == 1 for r in results[1:])


def test_a_second_reset_is_reported_as_a_failure_not_retried_forever(flaky) -> None:
    server = flaky(drop=10_000)
    with LoadGenerator(server.url, [{"x": 1}], rps=20, stop_event=threading.Event()) as load:
        _wait_for_results(load, 3)
    results = load.stop()
    assert results and all(r.status == 0 and r.attempts == 2 for r in results)
    assert all(r.error and ("Error" in r.error) for r in results)
    assert server.connections == 2 * len(results)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"records": [], "rps": 1, "duration_s": 1}, "at least one record"),
        ({"records": [{"x": 1}], "rps": 0, "duration_s": 1}, "rps=0"),
        ({"records": [{"x": 1}], "rps": 10_000, "duration_s": 1}, "rps=10000"),
        ({"records": [{"x": 1}], "rps": 1}, "must be bounded"),
    ],
)
def test_unbounded_or_empty_load_is_refused(kwargs, message) -> None:
    with pytest.raises(MlopsError, match=message):
        LoadGenerator("http://127.0.0.1:9", **kwargs)


def test_records_reach_both_sides_of_an_alternating_router_alike(flaky) -> None:
    """A round robin at 50 % alternates S C S C: records drawn in a fixed cycle of an even length
    would reach the stable only at even positions and the canary only at odd ones, and identical
    models would then 'drift'. Here every other request is one side; each must see both kinds."""
    import json

    server = flaky(drop=0)
    records = [{"i": k} for k in range(10)]
    with LoadGenerator(server.url, records, rps=200, stop_event=threading.Event()) as load:
        _wait_for_results(load, 60)
    load.stop()
    ids = [json.loads(b)["records"][0]["i"] for b in server.bodies]
    assert len(ids) >= 40
    for side in (ids[0::2], ids[1::2]):
        assert {i % 2 for i in side} == {0, 1}, side
        assert len(set(side)) >= 6  # most of the 10 records, not a fixed half of them
