"""Header edits on HTTP/1 heads, and local replies.

A head is never rebuilt from a header list: lines that must go are cut out of its bytes
(:func:`head_without`) and new lines are appended before the final CRLF. A request
head comes as :class:`~proxyd.protocol.http1.RequestHeadParser` wrote it (as Envoy
sends it), a response head as it arrived. What is cut and added follows Envoy's
connection manager:

* request (:class:`RequestHeaderPolicy`, compiled per HttpConnectionManager):
  hop-by-hop headers out; x-forwarded-for appended when ``use_remote_address``;
  x-forwarded-proto set; Envoy's internal x-envoy-* headers from an edge client
  dropped and x-envoy-external-address set; x-request-id generated; the route's
  x-envoy-expected-rq-timeout-ms;
* response (:func:`response_head`): hop-by-hop headers out, ``server`` overwritten,
  x-envoy-upstream-service-time added, re-framed as chunked when the upstream length
  is unknown, ``connection: close`` when the downstream connection ends;
* local replies (:func:`local_reply`): Envoy's status lines, bodies and headers.
"""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Callable
from email.utils import formatdate
from itertools import repeat

from proxyd.protocol.http1 import RequestHead, ResponseHead

REASONS = {
    100: "Continue",
    200: "OK",
    206: "Partial Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Payload Too Large",
    416: "Range Not Satisfiable",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

CONTINUE_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

# Envoy's router-control headers: the router consumes them, so they never reach the
# upstream (proxyd does not act on them). A request from outside (at the edge) also
# loses Envoy's other internal headers; other x-envoy-* headers pass (checked against
# Envoy 1.40).
ALWAYS_STRIPPED = frozenset(
    {
        b"x-envoy-internal",
        b"x-envoy-expected-rq-timeout-ms",
        b"x-envoy-hedge-on-per-try-timeout",
        b"x-envoy-is-timeout-retry",
        b"x-envoy-max-retries",
        b"x-envoy-retriable-header-names",
        b"x-envoy-retriable-status-codes",
        b"x-envoy-retry-grpc-on",
        b"x-envoy-retry-on",
        b"x-envoy-upstream-alt-stat-name",
        b"x-envoy-upstream-rq-per-try-timeout-ms",
        b"x-envoy-upstream-rq-timeout-alt-response",
        b"x-envoy-upstream-rq-timeout-ms",
    }
)
EDGE_STRIPPED = ALWAYS_STRIPPED | {
    b"x-envoy-decorator-operation",
    b"x-envoy-downstream-service-cluster",
    b"x-envoy-downstream-service-node",
    b"x-envoy-external-address",
    b"x-envoy-force-trace",
    b"x-envoy-ip-tags",
    b"x-envoy-original-path",
    b"x-envoy-original-url",
}


def head_without(raw: bytes, names: list[bytes]) -> bytes:
    """``raw`` without its final CRLF and without the header lines named in ``names``.

    ``names`` are lower case. The result ends with the CRLF of its last line, ready for
    more lines and the closing CRLF.
    """
    body = raw[:-2]
    if not names:
        return body
    low = body.lower()
    cuts: list[tuple[int, int]] = []
    for name in set(names):
        pat = b"\r\n" + name + b":"
        i = low.find(pat)
        while i >= 0:
            j = low.find(b"\r\n", i + 2)
            cuts.append((i, j))
            i = low.find(pat, j)
    if not cuts:
        return body
    cuts.sort()
    out = []
    pos = 0
    for i, j in cuts:
        out.append(body[pos:i])
        pos = j
    out.append(body[pos:])
    return b"".join(out)


# -- request ----------------------------------------------------------------------------


class RequestIdGenerator:
    """uuid4 strings, made 256 at a time from one getrandom call.

    ``next()`` gives ``(id, header_line)``: the id and its ready ``x-request-id`` line.

    A batch runs no Python code per id: each of the five groups of all 256 ids is
    cut from its own run of random bytes with ``bytes.hex(sep, n)`` (the version and
    variant bits set with one mask over a run read as one integer), and the groups
    are joined with ``map``.
    """

    __slots__ = ("_ids", "_lines")

    BATCH = 256
    # (bytes per group, mask, bits set) for the groups 8-4-4-4-12 hex digits long: the
    # third starts with the version (4), the fourth with the variant (10xx).
    _GROUPS = (
        (4, None, 0),
        (2, None, 0),
        (2, int.from_bytes(b"\x0f\xff" * BATCH, "big"), int.from_bytes(b"\x40\x00" * BATCH, "big")),
        (2, int.from_bytes(b"\x3f\xff" * BATCH, "big"), int.from_bytes(b"\x80\x00" * BATCH, "big")),
        (6, None, 0),
    )

    def __init__(self) -> None:
        self._ids: list[str] = []
        self._lines: list[bytes] = []

    def _refill(self) -> None:
        n = self.BATCH
        rand = os.urandom(16 * n)
        groups = []
        pos = 0
        for size, keep, bits in self._GROUPS:
            run = rand[pos : pos + size * n]
            pos += size * n
            if keep is not None:
                run = ((int.from_bytes(run, "big") & keep) | bits).to_bytes(size * n, "big")
            groups.append(run.hex(" ", size).split())
        self._ids = list(map("-".join, zip(*groups, strict=True)))
        ids = map(str.encode, self._ids)
        self._lines = list(map(b"".join, zip(repeat(b"x-request-id: "), ids, repeat(b"\r\n"))))

    def next(self) -> tuple[str, bytes]:
        ids = self._ids
        if not ids:
            self._refill()
            ids = self._ids
        return ids.pop(), self._lines.pop()


def _is_loopback(ip: str) -> bool:
    if ip.startswith("127.") or ip == "::1":
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def _xff_from_right(xff: bytes, skip: int) -> str:
    """The address ``skip`` places from the right of an x-forwarded-for list, or ""."""
    parts = [p.strip() for p in xff.split(b",")]
    if skip >= len(parts):
        return ""
    value = parts[len(parts) - 1 - skip].decode("latin-1")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return ""
    return value


class RequestHeaderPolicy:
    """The request header edits of one HttpConnectionManager, compiled once per epoch.

    ``apply(h, remote_ip, timeout_header)`` (the route's whole
    ``x-envoy-expected-rq-timeout-ms`` line, or b"") returns ``(upstream_head, request_id,
    trusted_address, xff)``: the head to send upstream, the x-request-id it carries,
    the client address Envoy would trust (``%DOWNSTREAM_REMOTE_ADDRESS%``) and the
    x-forwarded-for value sent upstream (b"" when none), the last three for the log.
    """

    __slots__ = (
        "use_remote_address",
        "trusted_hops",
        "generate_request_id",
        "local_address",
        "ids",
        "skip_xff_append",
        "preserve_external_request_id",
        "forced_xfp",
        "internal",
        "scheme_xfp",
    )

    def __init__(
        self,
        use_remote_address: bool,
        xff_num_trusted_hops: int,
        generate_request_id: bool,
        local_address: str,
        ids: RequestIdGenerator,
    ) -> None:
        self.use_remote_address = use_remote_address
        self.trusted_hops = xff_num_trusted_hops
        self.generate_request_id = generate_request_id
        self.local_address = local_address
        self.ids = ids
        # HttpConnectionManager.skip_xff_append and .preserve_external_request_id
        # (set by proxyd.worker.request_transforms).
        self.skip_xff_append = False
        self.preserve_external_request_id = False
        # scheme_header_transformation.scheme_to_overwrite: the x-forwarded-proto line
        # every request gets (b"": none forced).
        self.forced_xfp = b""
        # The line a request without a trusted x-forwarded-proto gets: the scheme of
        # the connection (https on a TLS filter chain).
        self.scheme_xfp = b"x-forwarded-proto: http\r\n"
        # internal_address_config: whether a client address is internal (None: no
        # address is, Envoy's default).
        self.internal: Callable[[str], bool] | None = None

    def apply(
        self,
        h: RequestHead,
        remote_ip: str,
        timeout_header: bytes,
        added: list[bytes] | None = None,
    ) -> tuple[bytes, str, str, bytes]:
        remove = h.remove
        add: list[bytes] = []
        hops = self.trusted_hops
        edge = self.use_remote_address
        xff = h.xff
        trusted = self.trusted_address(h, remote_ip) if xff else remote_ip
        if edge:
            if not self.skip_xff_append:
                hop = self.local_address if _is_loopback(remote_ip) else remote_ip
                if xff:
                    remove.append(b"x-forwarded-for")
                    xff = xff + b"," + hop.encode()
                else:
                    xff = hop.encode()
                add.append(b"x-forwarded-for: " + xff + b"\r\n")
        # Envoy's edge request: from outside, so its internal headers go.
        internal = self.internal is not None and self._internal(h, trusted)
        edge_request = edge and not internal
        # At the edge an untrusted client's x-forwarded-proto is overwritten; behind a
        # trusted hop (or off the edge) the one that came is kept (Envoy 1.40).
        forced = self.forced_xfp
        if forced or not h.xfp or (edge and hops == 0):
            if h.xfp:
                remove.append(b"x-forwarded-proto")
            add.append(forced or self.scheme_xfp)
        envoy_headers = h.envoy_headers
        if edge_request:
            for name in envoy_headers:
                if name in EDGE_STRIPPED:
                    remove.append(name)
            add.append(b"x-envoy-external-address: " + trusted.encode() + b"\r\n")
        elif envoy_headers:
            for name in envoy_headers:
                if name in ALWAYS_STRIPPED:
                    remove.append(name)
        if internal:
            add.append(b"x-envoy-internal: true\r\n")
        rid = h.request_id
        if self.generate_request_id and (
            (edge_request and not self.preserve_external_request_id) or not rid
        ):
            if rid:
                remove.append(b"x-request-id")
            ids = self.ids
            if ids._ids:  # (RequestIdGenerator.next, inline)
                request_id = ids._ids.pop()
                line = ids._lines.pop()
            else:
                request_id, line = ids.next()
            add.append(line)
        else:
            request_id = rid.decode("latin-1")
        if added:
            add.extend(added)  # filters' request header edits
        if timeout_header:
            add.append(timeout_header)  # Envoy's router adds it, after every filter
        if h.chunked:
            add.append(b"transfer-encoding: chunked\r\n")
        add.append(b"\r\n")
        raw = h.raw  # already origin form with one host line first (RequestHeadParser)
        head = head_without(raw, remove) if remove else raw[:-2]
        return head + b"".join(add), request_id, trusted, xff

    def trusted_address(self, h: RequestHead, remote_ip: str) -> str:
        """The client address Envoy trusts: the connection's peer, or the address
        xff_num_trusted_hops places from the right of x-forwarded-for."""
        xff = h.xff
        if not xff:
            return remote_ip
        hops = self.trusted_hops
        if self.use_remote_address:
            if hops > 0:
                return _xff_from_right(xff, hops - 1) or remote_ip
            return remote_ip
        return _xff_from_right(xff, hops) or remote_ip

    def _internal(self, h: RequestHead, trusted: str) -> bool:
        """A request is internal when it came without x-forwarded-for at the edge (off
        the edge: with exactly one address in it) from an internal address."""
        assert self.internal is not None
        if self.use_remote_address:
            return not h.xff and self.internal(trusted)
        return bool(h.xff) and b"," not in h.xff and self.internal(trusted)

    def is_internal(self, h: RequestHead, remote_ip: str) -> bool:
        """Envoy's isEnvoyInternalRequest for this request (internal_address_config)."""
        return self.internal is not None and self._internal(h, self.trusted_address(h, remote_ip))


# -- response ---------------------------------------------------------------------------


# The x-envoy-upstream-service-time lines of the common service times, made once
# (bytes % formatting costs more than the rest of writing the head).
_SERVICE_TIME_CACHED = 256
_SERVICE_TIME_LINES = [
    b"x-envoy-upstream-service-time: %d\r\n" % ms for ms in range(_SERVICE_TIME_CACHED)
]


def response_head(
    r: ResponseHead,
    server: bytes,
    service_time_ms: int,
    chunked: bool,
    close: bool,
    added: list[bytes] | None = None,
    body: bytes | memoryview | None = None,
) -> bytes:
    """The head to send downstream for upstream response ``r`` (and ``body`` after it,
    in the same bytes, when given).

    ``server`` is the full ``server: name\\r\\n`` line; ``chunked`` re-frames the body
    as chunked; ``close`` adds ``connection: close``.
    """
    raw = r.raw
    out: list[bytes | memoryview] = []
    pos = 0
    for i, j in r.cuts:
        out.append(raw[pos:i])
        pos = j
    out.append(raw[pos:-2])
    if raw[7] == 48 and raw[5] == 49:  # "HTTP/1.0" (llhttp checked the version)
        out[0] = b"HTTP/1.1" + out[0][8:]
    out.append(server)
    if 0 <= service_time_ms < _SERVICE_TIME_CACHED:
        out.append(_SERVICE_TIME_LINES[service_time_ms])
    elif service_time_ms >= 0:
        out.append(b"x-envoy-upstream-service-time: %d\r\n" % service_time_ms)
    # (-1: the line is in the head already, placed before the route's header mutations)
    if chunked:
        out.append(b"transfer-encoding: chunked\r\n")
    if close:
        out.append(b"connection: close\r\n")
    if not r.has_date:
        out.append(b"date: " + http_date() + b"\r\n")
    if added:
        out += added  # filters' response header edits
    out.append(b"\r\n")
    if body is not None:
        out.append(body)
    return b"".join(out)


# -- local replies ----------------------------------------------------------------------

_date_cache: list = [0, b""]


def http_date() -> bytes:
    """The IMF-fixdate of now, recomputed at most once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True).encode()
    return _date_cache[1]


def _has_content_type(extra: bytes) -> bool:
    return (b"\n" + extra.lower()).find(b"\ncontent-type:") >= 0


def local_reply(
    status: int,
    body: str | bytes,
    server: bytes,
    close: bool = False,
    head_request: bool = False,
    request_id: str = "",
    extra: bytes = b"",
    chunked: bool = False,
) -> bytes:
    """A complete response generated by the proxy, shaped as Envoy's.

    ``extra`` is header lines (each ending in CRLF) that go first, where Envoy puts
    them (``x-envoy-overloaded: true`` of a circuit breaker overflow, ``location``).

    With a body: content-length, content-type text/plain, date, server. Without one
    (Envoy's 404 for no route): date, server, content-length 0; no content-length for
    204 and 304, and "transfer-encoding: chunked" instead of it to a HEAD request (what
    Envoy's HTTP/1 codec writes for an empty local reply to HEAD). ``chunked``: the body
    goes as one chunk, without a content-length (a filter changed it, as Envoy's
    compressor does, and removed the length).
    """
    data = body if isinstance(body, bytes) else body.encode()
    out = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Unknown").encode()), extra]
    # A content-type among ``extra`` (an ext_authz denial's) replaces text/plain.
    ctype = b"" if extra and _has_content_type(extra) else b"content-type: text/plain\r\n"
    if data and chunked:
        out.append(b"transfer-encoding: chunked\r\n" + ctype)
        out.append(b"date: " + http_date() + b"\r\n" + server)
        data = b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
    elif data:
        out.append(b"content-length: %d\r\n" % len(data) + ctype)
        out.append(b"date: " + http_date() + b"\r\n" + server)
    elif status == 204 or status == 304:
        out.append(b"date: " + http_date() + b"\r\n" + server)
    elif head_request:
        out.append(b"date: " + http_date() + b"\r\n" + server + b"transfer-encoding: chunked\r\n")
    else:
        out.append(b"date: " + http_date() + b"\r\n" + server + b"content-length: 0\r\n")
    if close:
        out.append(b"connection: close\r\n")
    out.append(b"\r\n")
    if data and not head_request:
        out.append(data)
    return b"".join(out)


def server_line(name: str) -> bytes:
    return b"server: " + name.encode("latin-1") + b"\r\n"
