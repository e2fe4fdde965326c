"""A real HTTP reverse proxy that answers chosen paths with a server error, for fault injection.

It stands where a load balancer or gateway stands in front of MLflow: requests to every other
path go through to the real server unchanged; a path listed in ``failing`` gets the status an
overloaded gateway sends (503 by default), so a client sees a real 5xx over a real socket.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FaultProxy:
    url: str
    failing: set[str] = field(default_factory=set)  # path suffixes answered with `status`
    status: int = 503
    failed: list[str] = field(default_factory=list)  # paths that got the injected error


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    """Serve on a free 127.0.0.1 port, forwarding to `upstream` except the proxy's failing paths."""
    state = FaultProxy(url="")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _forward(self) -> None:
            path = self.path.split("?", 1)[0]
            if any(path.endswith(suffix) for suffix in state.failing):
                state.failed.append(path)
                body = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "injected by fault proxy"}'
                self.send_response(state.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in {"host", "content-length"}}
            req = urllib.request.Request(upstream + self.path, data=data, headers=headers, method=self.command)
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    status, payload, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
            except urllib.error.HTTPError as e:
                status, payload, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
            self.send_response(status)
            if ctype:
                self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
