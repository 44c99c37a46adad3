"""HTTP/2 ⇄ HTTP/1.1 heads for the downstream HTTP/2 codec (no I/O here).

The worker's request path is built on HTTP/1.1 heads: a request head as Envoy writes it
upstream (:class:`proxyd.protocol.http1.RequestHead`, made by the worker's
``RequestHeadParser``), and a response head as it goes downstream
(:func:`proxyd.protocol.http1_headers.response_head`, ``local_reply``). An HTTP/2 stream
joins that path through two translations, so that routing, the filters, the router and
the access log see exactly what an HTTP/1.1 request would give them:

* :func:`request_head` makes the HTTP/1.1 head an HTTP/2 request's header block stands
  for (``:method :path HTTP/1.1``, ``:authority`` as the Host, the cookies joined, a
  body without content-length framed as chunked, as Envoy's HTTP/1 encoder frames it
  upstream); the worker's parser then reads it like any other head.
* :func:`response_headers` makes an HTTP/2 header block of a downstream HTTP/1.1 head:
  ``:status`` first, names lower case, the connection-specific lines (RFC 9113 §8.2.2)
  left out.

:class:`H2Plan` is a listener's HTTP/2 setup (codec_type and http2_protocol_options),
and :func:`local_settings` the SETTINGS it announces.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxyd.epoch import Http2Options
from proxyd.errors import ProtocolError

# RFC 9113 §3.4: what a prior-knowledge client sends first.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Connection-specific response lines that HTTP/2 forbids (RFC 9113 §8.2.2).
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
# Bytes no HTTP/1.1 head may carry in a name or value (they would split the line).
_FORBIDDEN = (b"\r", b"\n", b"\x00")


@dataclass(frozen=True, slots=True)
class H2Plan:
    """A listener's downstream HTTP/2: ``prior_knowledge`` (codec_type HTTP2: every
    plaintext connection is HTTP/2) or AUTO (the preface decides; over TLS, ALPN)."""

    prior_knowledge: bool
    options: Http2Options


class ExtendedConnectRefused(ProtocolError):
    """A ``:protocol`` request on a connection that did not announce
    SETTINGS_ENABLE_CONNECT_PROTOCOL: Envoy's codec closes the connection for it."""

    def __init__(self) -> None:
        super().__init__(":protocol without SETTINGS_ENABLE_CONNECT_PROTOCOL", 400)


def local_settings(options: Http2Options) -> dict[int, int]:
    """The SETTINGS proxyd announces, as Envoy announces them (h2.settings.SettingCodes
    values as keys, in Envoy's order): HEADER_TABLE_SIZE, ENABLE_CONNECT_PROTOCOL (1 with
    allow_connect), MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE."""
    return {
        0x1: 4096,
        0x8: 1 if options.allow_connect else 0,
        0x3: options.max_concurrent_streams,
        0x4: options.initial_stream_window_size,
    }


def preface_state(data: bytes | memoryview) -> bool | None:
    """True when ``data`` starts with the HTTP/2 preface, False when it cannot, None
    while it is a (short) beginning of it."""
    n = min(len(data), len(PREFACE))
    if bytes(data[:n]) != PREFACE[:n]:
        return False
    return True if n == len(PREFACE) else None


def request_head(
    headers: list[tuple[bytes, bytes]], end_stream: bool, allow_connect: bool = False
) -> tuple[bytes, bool]:
    """The HTTP/1.1 head of an HTTP/2 request, and whether it has a body.

    ``headers`` is the block as h2 decoded it (pseudo-headers first, h2 has checked
    their rules). An extended CONNECT (RFC 8441: ``:method CONNECT`` with ``:protocol``,
    taken with ``allow_connect``) stands for the upgrade request Envoy makes of it: a
    GET with ``connection: upgrade`` and ``upgrade: <protocol>`` and no body framing
    (what the client sends after it is the tunnel's); a plain CONNECT, the HTTP/1.1
    CONNECT to its ``:authority``. Raises :class:`ProtocolError`
    (400) for what an HTTP/1.1 head cannot carry: a missing ``:method``/``:path`` (or
    a CONNECT's ``:authority``), a CR, LF or NUL in a name or value;
    :class:`ExtendedConnectRefused` for a ``:protocol`` without ``allow_connect``.
    """
    method = path = authority = b""
    host = protocol = b""
    lines: list[bytes] = []
    cookies: list[bytes] = []
    length = False
    for name, value in headers:
        for bad in _FORBIDDEN:
            if bad in value or bad in name:
                raise ProtocolError("invalid header value", 400)
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":
                protocol = value
            continue  # :scheme: the connection's scheme is what Envoy forwards
        if name == b"host":
            host = value
            continue
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"content-length":
            length = True
        lines.append(name + b": " + value + b"\r\n")
    upgrade = b""
    authority = authority or host
    if protocol:
        if not allow_connect:
            raise ExtendedConnectRefused()
        if method == b"CONNECT" and path:
            method, upgrade = b"GET", protocol
    elif method == b"CONNECT" and not path and authority:
        # A plain CONNECT (RFC 9113 §8.5): the HTTP/1.1 CONNECT to the same authority
        # (routed by connect_matcher; what the client sends after it is the tunnel's).
        path = authority
    if not method or not path or method == b"CONNECT" and not authority:
        raise ProtocolError("missing required header: :method or :path", 400)
    out = [method, b" ", path, b" HTTP/1.1\r\n"]
    if authority:
        out.append(b"host: " + authority + b"\r\n")
    out.extend(lines)
    if cookies:
        out.append(b"cookie: " + b"; ".join(cookies) + b"\r\n")
    has_body = not end_stream
    if method == b"CONNECT":
        has_body = True  # the tunnel's bytes follow
    elif upgrade:
        out.append(b"connection: upgrade\r\nupgrade: " + upgrade + b"\r\n")
    elif has_body and not length:
        # A body of unknown length: chunked upstream, as Envoy's HTTP/1 encoder sends it.
        out.append(b"transfer-encoding: chunked\r\n")
    out.append(b"\r\n")
    return b"".join(out), has_body


def response_headers(head: bytes | memoryview) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 header block of a downstream HTTP/1.1 response head (the bytes up to
    and including its CRLF CRLF, or the whole head when the body follows)."""
    data = bytes(head)
    end = data.find(b"\r\n\r\n")
    if end >= 0:
        data = data[: end + 2]
    first = data.find(b"\r\n")
    status_line = data[:first]
    out: list[tuple[bytes, bytes]] = [(b":status", status_line[9:12])]
    for line in data[first + 2 :].split(b"\r\n"):
        if not line:
            continue
        colon = line.find(b":")
        name = line[:colon].strip().lower()
        if name in _CONNECTION_SPECIFIC:
            continue
        out.append((name, line[colon + 1 :].strip()))
    return out
