"""A scripted upstream for the cache filter's compat tests.

Each request's path says what to answer (the query is the script, so every case is its
own cache key):

* ``cc=...``: a ``cache-control`` line; ``age=...``, ``etag=...``, ``lm=...`` (last-modified),
  ``vary=...``, ``expires=...`` (seconds from now, may be negative), ``date=...``
  (seconds from now, may be negative; ``none``: no date line), ``status=...``;
* ``body=...``: the body (else ``body of <path>``, with the request's count in it so a
  client can tell a cached answer from a fresh one);
* ``delay=S``: the answer waits S seconds;
* ``chunked=1``: the body goes chunked, in two chunks;
* ``revalidate=304``: a request carrying ``if-none-match`` / ``if-modified-since`` is
  answered 304 (with the same validators and cache-control).

It records every request (path and the few header lines a cache sends upstream), so a
test counts what reached the upstream.
"""

from __future__ import annotations

import email.utils
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

SEEN_HEADERS = (
    "if-none-match",
    "if-modified-since",
    "cache-control",
    "x-variant",
    "accept-language",
)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def do_POST(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        self._answer(True)

    def _answer(self, with_body: bool) -> None:
        server: CacheUpstream = self.server.owner  # type: ignore[attr-defined]
        seen = {h: self.headers[h] for h in SEEN_HEADERS if self.headers[h] is not None}
        count = server.record(self.command, self.path, seen)
        q = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        if "delay" in q:
            time.sleep(float(q["delay"]))
        status = int(q.get("status", "200"))
        conditional = "if-none-match" in seen or "if-modified-since" in seen
        if q.get("revalidate") == "304" and conditional:
            status = 304
        now = time.time()
        lines: list[tuple[str, str]] = []
        date = q.get("date", "0")
        if date != "none":
            lines.append(("date", email.utils.formatdate(now + int(date), usegmt=True)))
        for key, name in (
            ("cc", "cache-control"),
            ("cc2", "cache-control"),
            ("etag", "etag"),
            ("vary", "vary"),
            ("age", "age"),
        ):
            if key in q:
                lines.append((name, q[key]))
        if "lm" in q:
            lines.append(("last-modified", email.utils.formatdate(now + int(q["lm"]), usegmt=True)))
        if "expires" in q:
            lines.append(("expires", email.utils.formatdate(now + int(q["expires"]), usegmt=True)))
        variant = self.headers.get("x-variant", "")
        body = q.get("body", f"body {count} of {urlsplit(self.path).path} {variant}").encode()
        self.send_response_only(status)
        for name, value in lines:
            self.send_header(name, value)
        self.send_header("x-upstream-count", str(count))
        if status in (204, 304):
            self.end_headers()
            return
        self.send_header("content-type", "text/plain")
        if q.get("chunked"):
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            if with_body:
                half = len(body) // 2
                for piece in (body[:half], body[half:]):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)


class CacheUpstream:
    """``with CacheUpstream() as up:``; ``up.port``, ``up.requests`` (method, path,
    headers seen), ``up.count(path)``, ``up.clear()``."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.owner = self  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def record(self, method: str, path: str, seen: dict[str, str]) -> int:
        with self._lock:
            self.requests.append((method, path, seen))
            return sum(1 for _, p, _ in self.requests if p == path)

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for _, p, _ in self.requests if p == path)

    def last(self, path: str) -> dict[str, str]:
        with self._lock:
            for _, p, seen in reversed(self.requests):
                if p == path:
                    return seen
        return {}

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def __enter__(self) -> CacheUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
