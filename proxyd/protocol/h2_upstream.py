"""HTTP/1.1 ⇄ HTTP/2 heads for HTTP/2 upstreams (no I/O here).

The worker's request path builds the upstream request as an HTTP/1.1 head (the bytes an
HTTP/1 codec would write, with the connection manager's and the route's edits). A
cluster that speaks HTTP/2 to its hosts (``explicit_http_config.http2_protocol_options``)
sends the same request as an HTTP/2 header block, and its hosts' HTTP/2 responses go
back through the sinks as the HTTP/1.1 heads they stand for, so the filters, the
downstream codecs and the access log cannot tell:

* :func:`request_headers`: ``:method``, ``:scheme``, ``:authority`` (the Host),
  ``:path``, then the other lines with lower-case names; the connection-specific lines
  (RFC 9113 §8.2.2: ``connection`` and the lines it names, ``keep-alive``,
  ``proxy-connection``, ``transfer-encoding``, ``upgrade``) are left out, and ``te`` is
  kept only as ``te: trailers``, as Envoy's HTTP/2 codec sends it.
* :func:`response_head`: the HTTP/1.1 head of an HTTP/2 response header block (the
  status line with its standard reason phrase); the worker's response head parser then
  reads it like an HTTP/1.1 upstream's.
* :func:`trailer_block`: response trailers as a header block for a downstream HTTP/2
  stream (pseudo-headers and connection-specific lines left out).

Envoy's reset reasons and the body of its 503 for a stream reset before the response
started are here too (:func:`reset_reason`).
"""

from __future__ import annotations

from http import HTTPStatus

from proxyd.errors import ProtocolError

# RFC 9113 §7 error codes.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
REFUSED_STREAM = 0x7
CANCEL = 0x8

_CONNECTION_SPECIFIC = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"http2-settings",
    )
)
_FORBIDDEN = (b"\r", b"\n", b"\x00")
_REASONS = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def request_headers(head: bytes | memoryview, scheme: bytes) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 header block of an upstream HTTP/1.1 request head (its bytes up to
    and including the blank line). Raises :class:`ProtocolError` (400) for a head
    without a request line or with a line HTTP/2 cannot carry."""
    data = bytes(head)
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        data = data[:end]
    lines = data.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise ProtocolError("malformed request line", 400)
    method, path, _ = parts
    authority = b""
    out: list[tuple[bytes, bytes]] = []
    named: list[bytes] = []  # names the connection line lists
    for line in lines[1:]:
        colon = line.find(b":")
        if colon <= 0:
            raise ProtocolError("malformed header line", 400)
        name = line[:colon].strip().lower()
        value = line[colon + 1 :].strip()
        if name == b"host":
            if not authority:
                authority = value
            continue
        if name == b"connection":
            named += (t.strip().lower() for t in value.split(b",") if t.strip())
            continue
        if name in _CONNECTION_SPECIFIC:
            continue
        if name == b"te":
            if value.lower() != b"trailers":
                continue
            value = b"trailers"
        out.append((name, value))
    if named:
        out = [(n, v) for n, v in out if n not in named or n == b"te"]
    first = [(b":method", method), (b":scheme", scheme), (b":authority", authority)]
    if not authority:
        first.pop()
    first.append((b":path", path))
    return first + out


def response_head(headers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """(status, the HTTP/1.1 head) of an HTTP/2 response header block as h2 decoded
    it (``:status`` checked by h2). Raises :class:`ProtocolError` (502) for a value an
    HTTP/1.1 head cannot carry."""
    status = 0
    out = [b""]
    for name, value in headers:
        if name == b":status":
            if not value.isdigit() or len(value) != 3:
                raise ProtocolError("invalid :status", 502)
            status = int(value)
            continue
        if name[:1] == b":":
            continue
        for bad in _FORBIDDEN:
            if bad in value or bad in name:
                raise ProtocolError("invalid response header", 502)
        out.append(name + b": " + value + b"\r\n")
    if not status:
        raise ProtocolError("missing :status", 502)
    out[0] = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))
    out.append(b"\r\n")
    return status, b"".join(out)


def trailer_block(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Response trailers as they go to an HTTP/2 client."""
    return [(n, v) for n, v in headers if n[:1] != b":" and n not in _CONNECTION_SPECIFIC]


# Envoy's reset reasons (StreamResetReason), as its 503 body and its response code
# details print them.
def reset_reason(code: int | None) -> tuple[str, str]:
    """(the 503 body's reason, the details' reason) of a stream reset by the upstream
    with RST_STREAM ``code`` (None: the connection went away)."""
    if code is None:
        return "connection termination", "connection_termination"
    if code == REFUSED_STREAM:
        return "remote refused stream reset", "remote_refused_stream_reset"
    return "remote reset", "remote_reset"
