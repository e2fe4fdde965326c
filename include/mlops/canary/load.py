"""A bounded loopback load generator: replays holdout records through the router at a fixed rate.

Used where no real traffic exists (local profile, tests, benchmarks) so a canary step has
requests to judge; records what each request got back and which model version served it.

Each weight step is a graceful Caddy config reload, and a reload closes the idle keep-alive
connections of the old server. A request written onto such a connection at that instant is reset
before the server reads it (measured: 24 of 2,927 requests at 150 rps across 234 reloads). As
RFC 9112 section 9.3.1 allows for idempotent requests, and as Go's and browsers' HTTP clients do, a
prediction (a pure function of its input) that got no response at all is retried once on a new
connection; the retry is recorded in `attempts` so analysis and tests can see it.

Each request takes a record batch drawn at random (seeded), not the next one in a fixed cycle:
the router's round robin alternates upstreams in a fixed pattern too (S C S C at 50 %), and a
cycle of an even number of batches then sent the stable only the even batches and the canary
only the odd ones, so two identical models showed prediction drift (KS 0.39-0.41 seen in e2e).
Drawn independently of the routing, both sides see the same input distribution.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from include.mlops.errors import MlopsError

MAX_RPS = 500.0


@dataclass(frozen=True)
class RequestResult:
    started_at_unix: float
    status: int  # 0: no HTTP answer (connection refused/reset, timeout)
    latency_ms: float
    served_version: str | None
    error: str | None = None
    attempts: int = 1  # 2: the first try got no response (connection closed under it) and was retried


class LoadGenerator:
    """Open-loop-ish replay in one background thread; stops at duration_s, stop_event, or stop()."""

    def __init__(
        self,
        url: str,
        records: Sequence[dict[str, Any]],
        rps: float,
        *,
        duration_s: float | None = None,
        stop_event: threading.Event | None = None,
        batch_size: int = 1,
        timeout_s: float = 10.0,
        seed: int = 0,
    ) -> None:
        if not records:
            raise MlopsError("LoadGenerator needs at least one record to replay")
        if not 0 < rps <= MAX_RPS:
            raise MlopsError(f"LoadGenerator rps={rps} must be in (0, {MAX_RPS}]: it runs on loopback, beside servers")
        if duration_s is None and stop_event is None:
            raise MlopsError("LoadGenerator needs duration_s or stop_event: it must be bounded")
        self.url = url.rstrip("/") + "/predict"
        self.records = list(records)
        self.rps = rps
        self.duration_s = duration_s
        self.stop_event = stop_event or threading.Event()
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.seed = seed
        self._results: list[RequestResult] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> LoadGenerator:
        self._thread = threading.Thread(target=self._run, name="canary-load", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 15.0) -> list[RequestResult]:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self.results()

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def results(self) -> list[RequestResult]:
        with self._lock:
            return list(self._results)

    def _run(self) -> None:
        import httpx

        period = 1.0 / self.rps
        batches = [self.records[i : i + self.batch_size] for i in range(0, len(self.records), self.batch_size)]
        draw = random.Random(self.seed)
        t_end = None if self.duration_s is None else time.monotonic() + self.duration_s
        next_at = time.monotonic()
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self.stop_event.is_set() and (t_end is None or time.monotonic() < t_end):
                batch = draw.choice(batches)
                started = time.time()
                t0 = time.perf_counter()
                res = self._send(client, batch, started, t0)
                with self._lock:
                    self._results.append(res)
                next_at += period
                # when behind (slow answers) do not burst to catch up: restart the schedule from now
                delay = next_at - time.monotonic()
                if delay > 0:
                    self.stop_event.wait(delay)
                else:
                    next_at = time.monotonic()

    def _send(self, client: Any, batch: list[dict[str, Any]], started: float, t0: float) -> RequestResult:
        import httpx

        # errors where no byte of a response arrived: the server never handled the request
        unanswered = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError)
        attempts = 0
        while True:
            attempts += 1
            try:
                r = client.post(self.url, json={"records": batch})
                return RequestResult(
                    started,
                    r.status_code,
                    (time.perf_counter() - t0) * 1000,
                    r.headers.get("x-model-version"),
                    attempts=attempts,
                )
            except unanswered as exc:
                if attempts < 2:
                    continue
                error: Exception = exc
            except httpx.HTTPError as exc:  # timeouts: the server may have done the work; no retry
                error = exc
            return RequestResult(
                started,
                0,
                (time.perf_counter() - t0) * 1000,
                None,
                f"{type(error).__name__}: {error}",
                attempts=attempts,
            )
