"""An upstream that answers every request with 500 and counts them (outlier tests)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support import SHUTDOWN_POLL_S


class _Always500(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        return

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        server: Any = self.server
        with server.lock:
            server.requests += 1
        body = b"bad\n"
        self.send_response(500)
        self.send_header("x-upstream-name", "bad")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def always_500() -> Iterator[Any]:
    """A running server on 127.0.0.1: ``.server_address[1]`` is its port,
    ``.requests`` how many requests it answered."""
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Always500)
    server.daemon_threads = True
    server.requests = 0
    server.lock = threading.Lock()
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_S}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
