"""An upstream that fails as a request tells it to, attempt by attempt (retry tests).

A request carries ``x-script: 503,reset,200`` and a ``x-key``: the n-th request the
server sees for that key does the n-th step of the script (the last step repeats):

* a status (``200``, ``409``, ``503``, ...): answered with that status and a short body
  (``x-attempt: n`` tells the client which attempt answered); ``503+name=value`` adds
  response headers (``+`` between them);
* ``reset``: the connection is closed without a response;
* ``hang``: nothing is sent until the peer closes the connection (a per-try timeout),
  or 10 s pass;
* ``200@0.5``, ``reset@0.5``: the step after that many seconds (unless the peer
  closes first).

``.requests[key]`` counts the requests seen per key, ``.seen[key]`` keeps their headers
(lower-case names) and bodies.
"""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.support import SHUTDOWN_POLL_S


class _Scripted(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        return

    def _handle(self) -> None:
        server: Any = self.server
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        key = self.headers.get("x-key", "")
        script = [s.strip() for s in self.headers.get("x-script", "200").split(",")]
        with server.lock:
            n = server.requests.get(key, 0) + 1
            server.requests[key] = n
            server.seen.setdefault(key, []).append(
                ({k.lower(): v for k, v in self.headers.items()}, body)
            )
            server.changed.notify_all()
        step = script[min(n, len(script)) - 1]
        if "@" in step:
            step, _, delay = step.partition("@")
            if select.select([self.connection], [], [], float(delay))[0]:
                self.close_connection = True  # the peer closed (or sent more): no answer
                return
        if step == "reset":
            self.close_connection = True
            self.connection.close()
            return
        if step == "hang":
            self.close_connection = True
            select.select([self.connection], [], [], 10.0)
            return
        out = b"attempt %d\n" % n
        status, *extra = step.split("+")
        self.send_response(int(status))
        self.send_header("x-attempt", str(n))
        for pair in extra:  # "503+retry-after=1": response headers with the status
            name, _, value = pair.partition("=")
            self.send_header(name, value)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = _handle  # noqa: N815 - stdlib names


@contextmanager
def scripted_upstream() -> Iterator[Any]:
    """A running server on 127.0.0.1: ``.server_address[1]`` is its port."""
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.daemon_threads = True
    server.requests = {}
    server.seen = {}
    server.lock = threading.Lock()
    server.changed = threading.Condition(server.lock)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_S}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
