"""Loopback ports for the servers tests start, without handing a port on to a race.

`free_port()` binds port 0, closes the socket and hands the number on: another run on the same
machine may take that port before the server binds it. Where the server can take a bound socket
(uvicorn in-process: `listening_socket()`), nothing is handed on. Where it cannot (MLflow,
`airflow api-server`), the caller starts it on a fresh port again when its log says the port was
taken (`port_taken`), up to `BIND_ATTEMPTS` times.
"""

from __future__ import annotations

import re
import socket

BIND_ATTEMPTS = 3
# uvicorn: "[Errno 98] ... address already in use"; gunicorn: "Connection in use"
_TAKEN = re.compile(r"address already in use|connection in use|errno 98", re.IGNORECASE)


def listening_socket() -> socket.socket:
    """A socket bound to 127.0.0.1 on a port the kernel picked, kept open for the server to use."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def port_taken(log_text: str) -> bool:
    """Whether a server's log says it could not bind its port (start it on another one)."""
    return bool(_TAKEN.search(log_text))
