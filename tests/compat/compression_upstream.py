"""An upstream whose response the request describes, for the compression compat tests.

Request headers say what to answer (all optional):

* ``x-status``: the status (default 200); ``x-type``: content-type ("-" for none,
  default ``text/plain``); ``x-size``: body length (default 1000; the body is
  :func:`body` of that size); ``x-chunks``: send the body chunked in that many pieces
  (else with a content-length); ``x-encode``: compress the body with ``gzip``, ``br``
  or ``zstd`` and say so in content-encoding (``x-encode-label`` overrides the label);
  ``x-h-<name>``: a response header ``<name>`` with that value (``x-h-etag``,
  ``x-h-cache-control``, ``x-h-vary``, ...).

Every response tells what the upstream received: ``x-got-accept-encoding``,
``x-got-content-encoding``, ``x-got-content-length``, ``x-got-te``, and
``x-got-body`` (the SHA-256 of the request body after undoing its content-encoding, or
"undecodable").
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import brotli
import zstandard

from tests.support import SHUTDOWN_POLL_S


def body(size: int) -> bytes:
    """A compressible body of ``size`` bytes (text with a counter, so it is not trivial)."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += b"line %06d: the quick brown fox jumps over the lazy dog\n" % i
        i += 1
    return bytes(out[:size])


def encode(data: bytes, coding: str) -> bytes:
    if coding == "gzip":
        return gzip.compress(data, mtime=0)
    if coding == "br":
        return bytes(brotli.compress(data))
    if coding == "zstd":
        return bytes(zstandard.ZstdCompressor().compress(data))
    return data


def decode(data: bytes, coding: str | None) -> bytes:
    """``data`` with content-encoding ``coding`` undone (streaming readers, so a body made
    of flushed pieces decodes whole)."""
    if not coding:
        return data
    if coding == "gzip":
        return gzip.decompress(data)
    if coding == "br":
        return bytes(brotli.decompress(data))
    if coding == "zstd":
        return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    raise ValueError(f"unknown content-encoding {coding!r}")


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("transfer-encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(handler.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += handler.rfile.read(size)
            handler.rfile.readline()
    length = int(handler.headers.get("content-length") or 0)
    return handler.rfile.read(length) if length else b""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        return

    def setup(self) -> None:
        super().setup()
        import socket

        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _answer(self) -> None:
        h = self.headers
        raw = _read_body(self)
        try:
            got = hashlib.sha256(decode(raw, h.get("content-encoding"))).hexdigest()
        except Exception:  # noqa: BLE001 - any failure to decode is reported as such
            got = "undecodable"
        status = int(h.get("x-status", "200"))
        data = body(int(h.get("x-size", "1000")))
        coding = h.get("x-encode")
        if coding:
            data = encode(data, coding)
        self.send_response(status)
        ctype = h.get("x-type", "text/plain")
        if ctype != "-":
            self.send_header("content-type", ctype)
        if coding:
            self.send_header("content-encoding", h.get("x-encode-label", coding))
        for name, value in h.items():
            if name.lower().startswith("x-h-"):
                self.send_header(name[4:], value)
        self.send_header("x-got-accept-encoding", ",".join(h.get_all("accept-encoding") or ["-"]))
        self.send_header("x-got-content-encoding", h.get("content-encoding", "-"))
        self.send_header("x-got-content-length", h.get("content-length", "-"))
        self.send_header("x-got-te", h.get("transfer-encoding", "-"))
        self.send_header("x-got-body", got)
        no_body = self.command == "HEAD" or status in (204, 304) or status < 200
        chunks = int(h.get("x-chunks", "0"))
        if chunks and not no_body:
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            step = max(1, -(-len(data) // chunks))
            for i in range(0, len(data), step):
                piece = data[i : i + step]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        if status not in (204, 304) and status >= 200:
            self.send_header("content-length", str(len(data)))
        self.end_headers()
        if not no_body:
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_HEAD = _answer


class CompressionUpstream:
    """``with CompressionUpstream() as up:`` serves on ``up.port`` (loopback)."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": SHUTDOWN_POLL_S}
        )

    def __enter__(self) -> CompressionUpstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
