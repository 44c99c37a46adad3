"""TcpProxy ``tunneling_config``: a TCP proxy connection carried inside an HTTP/1.1
request to the cluster's host, as Envoy's ``TcpProxy::HttpUpstream`` does it.

When the upstream connection is made, proxyd writes ``CONNECT <hostname> HTTP/1.1``
(or, with ``use_post``, ``POST <post_path> HTTP/1.1`` with ``transfer-encoding:
chunked``) with ``host: <hostname>`` and the ``headers_to_add`` (evaluated as route
header mutations are, over the connection's access-log record), and reads the response
head before any byte of the client is read (the client's bytes wait in the kernel):

* a 2xx establishes the tunnel; bytes that came after the head are the upstream's
  first bytes to the client;
* any other status, a head that cannot be parsed or is too long, or the connection
  closing first fail this connect attempt (Envoy's ``tunnel_response:<status>`` as the
  upstream transport failure reason for a status); the TCP proxy then tries again up to
  ``max_connect_attempts``, as for a failed connect.

With CONNECT the bytes then flow raw both ways (the TCP proxy's own pumps). With POST
the client's bytes go up as chunks, the client's end of stream as the last chunk, and
the response body comes down by its framing (chunked, a content-length, or until the
upstream closes), as Envoy's HTTP/1 codec frames them.
"""

from __future__ import annotations

import socket
from typing import Any

from proxyd.epoch import TcpTunnel
from proxyd.errors import ProtocolError
from proxyd.protocol.header_mutations import apply_levels, compile_adds
from proxyd.protocol.header_values import ValueFormat, compile_value
from proxyd.protocol.http1_chunked import LAST_CHUNK, ChunkedDecoder, chunk_header
from proxyd.protocol.http1_response import ResponseHeadParser
from proxyd.worker import io

# The longest response head proxyd reads (Envoy's default max_response_headers_kb, 60).
MAX_HEAD = 60 * 1024
_HOST = frozenset({b"host"})


class TunnelFailed(Exception):
    """The upstream did not establish the tunnel; ``reason`` is the transport failure
    reason for the access log (None: the connection closed without a response)."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason or "closed")
        self.reason = reason


class TunnelPlan:
    """A TcpProxy's tunneling_config compiled for one epoch."""

    __slots__ = ("hostname", "use_post", "start", "levels", "needs_record")

    def __init__(self, t: TcpTunnel) -> None:
        self.hostname = compile_value(t.hostname)
        self.use_post = t.use_post
        self.start = b"POST " + t.post_path.encode("latin-1", "replace") if t.use_post else b""
        self.levels = compile_adds(t.headers)
        self.needs_record = isinstance(self.hostname, ValueFormat) or any(
            isinstance(a[1], ValueFormat) for _, adds in self.levels for a in adds
        )

    def request_head(self, rec: Any) -> bytes:
        """The request head for a connection whose access-log record is ``rec``."""
        host = self.hostname
        if isinstance(host, ValueFormat):
            host = host(rec).encode("latin-1", "replace")
        start = self.start or b"CONNECT " + host
        lines = [(b"host", b"host: " + host)]
        if self.use_post:
            lines.append((b"transfer-encoding", b"transfer-encoding: chunked"))
        if self.levels:
            lines = apply_levels(lines, self.levels, rec, _HOST)
        return b"\r\n".join([start + b" HTTP/1.1", *(ln[1] for ln in lines)]) + b"\r\n\r\n"

    def h2_headers(self, rec: Any) -> list[tuple[bytes, bytes]]:
        """The request's header block over HTTP/2 (Envoy's: CONNECT with :authority,
        or POST with :scheme http and :path), with the headers_to_add."""
        host = self.hostname
        if isinstance(host, ValueFormat):
            host = host(rec).encode("latin-1", "replace")
        if self.use_post:
            path = self.start[len(b"POST ") :]
            out = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", host), (b":path", path)]  # fmt: skip
        else:
            out = [(b":method", b"CONNECT"), (b":authority", host)]
        if self.levels:
            for name, line in apply_levels([], self.levels, rec, _HOST):
                out.append((name, line[len(name) + 2 :]))
        return out


class ResponseBody:
    """The POST tunnel's response body framing: ``feed`` turns received bytes into the
    bytes for the client and says when the body ended."""

    __slots__ = ("decoder", "remaining", "pending", "ended")

    def __init__(self, chunked: bool, content_length: int) -> None:
        self.decoder = ChunkedDecoder() if chunked else None
        # Chunked framing bytes the decoder has not taken yet (a split size line).
        self.pending = b""
        self.ended = False
        # -1: until the upstream closes.
        self.remaining = -1 if chunked else content_length

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        if self.decoder is not None:
            if self.pending:
                data = self.pending + data
            pieces, used = self.decoder.feed(data, 0, len(data))
            self.pending = data[used:] if not self.decoder.done else b""
            out = b"".join(data[o : o + n] for o, n in pieces)
            self.ended = self.decoder.done
            return out, self.ended
        if self.remaining < 0:
            return data, False
        n = min(self.remaining, len(data))
        self.remaining -= n
        self.ended = self.remaining == 0
        return data[:n], self.ended


async def establish(
    sock: socket.socket, plan: TunnelPlan, rec: Any
) -> tuple[bytes, ResponseBody | None]:
    """Send the tunnel's request on ``sock`` and read the response head: (what came
    after the head, for the client; the POST tunnel's body framing, None for CONNECT).
    Raises :class:`TunnelFailed`; OSError when the connection broke."""
    await io.send_all(sock, plan.request_head(rec))
    buf = bytearray()
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            await io.wait_readable(sock)
            continue
        if not data:
            raise TunnelFailed(None)
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buf) > MAX_HEAD:
            raise TunnelFailed(None)
    try:
        head = ResponseHeadParser().parse(memoryview(buf)[: end + 4], {})
    except ProtocolError:
        raise TunnelFailed(None) from None
    if not 200 <= head.status < 300:
        raise TunnelFailed(f"tunnel_response:{head.status}")
    rest = bytes(buf[end + 4 :])
    if not plan.use_post:
        return rest, None
    body = ResponseBody(head.chunked, head.content_length)
    try:
        first, _ = body.feed(rest)
    except ProtocolError:
        raise TunnelFailed(None) from None
    return first, body


def frame_chunk(data: memoryview | bytes) -> list[bytes | memoryview]:
    """One piece of the client's bytes as a chunk of the POST tunnel's request body."""
    return [chunk_header(len(data)), data, b"\r\n"]


__all__ = ["LAST_CHUNK", "ResponseBody", "TunnelFailed", "TunnelPlan", "establish", "frame_chunk"]
