"""One request and its response: the stream, and the interface the router works on.

A :class:`Stream` holds everything that belongs to one request — its head, whether the
request body has all arrived, the response's state, the byte counts, the upstream host,
the timings and the response flags the access log prints — so nothing about a request
lives on the connection it happens to use. HTTP/1 has one stream at a time per
connection; HTTP/2 has many (:mod:`proxyd.worker.h2_downstream`).

The router never touches a socket of the downstream side. It talks to the stream's
:class:`DownstreamSink`: the request body as data pieces with backpressure (nothing more
is read from the client until the router asked for it), and the response as a head,
data pieces, or a local reply. The HTTP/1 connection (:mod:`proxyd.worker.downstream`)
is one sink; the HTTP filter chain (:mod:`proxyd.worker.filter_chain`) is another, which
wraps the codec's and runs the filters on what passes through; an HTTP/2 stream
(:class:`proxyd.worker.h2_stream.H2Stream`) is a third. The router cannot tell them
apart.

How a stream ends early is a typed exception (:class:`StreamError` and its subclasses)
or, for a deadline, the :class:`~proxyd.worker.deadlines.DeadlineKind` recorded in
``Stream.timed_out``; a local failure is told from an upstream one by its type, never by
reading a status code back.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Protocol

from proxyd.errors import ProxydError
from proxyd.worker.deadlines import INF

if TYPE_CHECKING:
    from proxyd.protocol.http1 import RequestHead, ResponseHead
    from proxyd.worker.deadlines import Deadline, DeadlineKind, Timers
    from proxyd.worker.durations import ConnectionDurations
    from proxyd.worker.plan import RoutePlan
    from proxyd.worker.tracing import SpanState


class BodyMode(enum.Enum):
    """How a message body is framed on the wire it arrived on."""

    NONE = "none"  # no body (HEAD, 204, 304, 1xx, or a length of 0)
    LENGTH = "content-length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"  # an HTTP/1 response without a length: until EOF


class ResponseFlag(enum.Enum):
    """Envoy's response flags (``%RESPONSE_FLAGS%``), the ones proxyd sets."""

    NONE = "-"
    NO_ROUTE = "NR"
    NO_CLUSTER = "NC"
    NO_HEALTHY_UPSTREAM = "UH"
    UPSTREAM_CONNECTION_FAILURE = "UF"
    UPSTREAM_CONNECTION_TERMINATION = "UC"
    UPSTREAM_REMOTE_RESET = "UR"  # an HTTP/2 upstream reset the stream (RST_STREAM)
    UPSTREAM_OVERFLOW = "UO"
    UPSTREAM_REQUEST_TIMEOUT = "UT"
    UPSTREAM_PROTOCOL_ERROR = "UPE"
    STREAM_IDLE_TIMEOUT = "SI"
    DOWNSTREAM_CONNECTION_TERMINATION = "DC"
    DOWNSTREAM_REMOTE_RESET = "DR"  # an HTTP/2 client reset its stream (RST_STREAM)
    DOWNSTREAM_PROTOCOL_ERROR = "DPE"
    FAULT_INJECTED = "FI"
    DELAY_INJECTED = "DI"
    OVERLOAD_MANAGER = "OM"


# -- how a stream ends early -------------------------------------------------------------


class StreamError(ProxydError):
    """A stream could not complete; the subclass says which side failed and how."""


class DownstreamReset(StreamError):
    """The client closed or reset its connection while the request was in flight."""


class UpstreamReset(StreamError):
    """The upstream closed or reset its connection; ``before_headers`` when no response
    head had come yet (then the client may still get a 503)."""

    def __init__(self, reason: str = "connection termination", before_headers: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.before_headers = before_headers


class UpstreamProtocolError(StreamError):
    """The upstream's response broke HTTP (Envoy's 502 ``UPE``)."""


class LocalReplied(StreamError):
    """A filter answered the stream while the router was running (its reply, or a
    reset when a response had started, went out already)."""


# Read for every stream: a module constant is cheaper than the enum member (Python 3.11).
_NO_FLAG = ResponseFlag.NONE


# -- the stream --------------------------------------------------------------------------


class Stream:
    """One request/response exchange; the HTTP/1 codec makes one per request."""

    __slots__ = (
        "head",
        "sink",
        "request_complete",
        "response_started",
        "status",
        "flags",
        "bytes_sent",
        "upstream_host",
        "upstream_cluster",
        "service_ms",
        "resp_headers",
        "route_name",
        "route_plan",
        "request_id",
        "trusted_address",
        "xff",
        "t_wall",
        "t0",
        "timed_out",
        "request_added",
        "response_added",
        "close_connection",
        # proxyd.worker.tracing.SpanState, set (and read) only on a listener with
        # tracing: left unset here so that other requests pay nothing for it.
        "trace",
        # What a plain proxied request never sets lives here when set; until then
        # the class attributes below are the defaults (one store less each a request).
        "__dict__",
    )

    # Defaults of what only some streams set (see the assignments in __init__'s
    # comments). Mutable ones are never mutated in place: each is replaced on write.
    # Envoy's %RESPONSE_CODE_DETAILS%-like reason for a local reply ("" when none).
    details = ""
    bytes_received = 0
    # The TLS session to a TLS cluster's host (worker.tls.TlsSocket) for the access
    # log's UPSTREAM_TLS_* operators; None to a plaintext cluster.
    upstream_tls: Any = None
    # Per-filter state a filter keeps for the access log or stats (name -> value).
    filter_state: dict[str, object] | None = None
    # Response flags set by filters (Envoy prints every flag, comma-separated).
    extra_flags: list[str] | None = None
    # Names (lower case) whose lines a filter removed or replaced in the response head.
    response_removed: list[bytes] | None = None
    # request_timeout: when the whole request must have arrived (trio's clock).
    request_deadline = INF
    # A filter's buffer limit for this stream (0: the listener's).
    buffer_limit = 0
    # A retried request's attempts and the host of each (0 / None: no retry policy;
    # the access log then counts the one attempt a picked host means).
    attempts = 0
    hosts_tried: list[str] | None = None
    # The connection, for filters that read its addresses (set when the route has
    # filters; None otherwise).
    connection: Connection | None = None
    # The request's hash when its route hashes (RouteAction.hash_policy), for the
    # hosts of its retries (None: no hash policy, or none gave a hash).
    lb_hash: int | None = None
    # The host a stateful session named, (address, strict), which host selection
    # takes first (proxyd.filters.stateful_session.override); None: none.
    override_host: tuple[str, bool] | None = None

    trace: SpanState  # see __slots__: only on a listener with tracing

    def __init__(self, head: RequestHead | None, sink: DownstreamSink) -> None:
        self.head = head
        self.sink = sink
        # The request body has all been delivered to the router (or there is none).
        self.request_complete = head is None or not head.has_body
        self.response_started = False
        self.status = 0
        self.flags = _NO_FLAG
        self.bytes_sent = 0
        self.upstream_host: str | None = None
        self.upstream_cluster: str | None = None
        self.service_ms: int | None = None
        self.resp_headers: dict[str, str] | None = None
        self.route_name: str | None = None
        self.route_plan: RoutePlan | None = None
        self.request_id = ""
        self.trusted_address = ""
        self.xff = b""
        self.t_wall = 0.0
        self.t0 = 0.0
        # Which deadline ended this stream, when one did (set by the deadline's fire).
        self.timed_out: DeadlineKind | None = None
        # Header lines filters add to the request / response (each ending in CRLF).
        self.request_added: list[bytes] | None = None
        self.response_added: list[bytes] | None = None
        # The connection must close after this stream (e.g. a filter answered before
        # the request body was read).
        self.close_connection = False
        # (details, bytes_received, upstream_tls, filter_state, extra_flags,
        # response_removed, request_deadline, buffer_limit, attempts, hosts_tried,
        # connection, lb_hash, override_host: the class defaults above until set.)

    def flag_text(self) -> str:
        """%RESPONSE_FLAGS%: every flag set, comma-separated, or "-"."""
        extra = self.extra_flags
        if not extra:
            return self.flags.value
        flags = list(extra)
        if self.flags is not _NO_FLAG:
            flags.append(self.flags.value)
        return ",".join(flags)

    # -- what filters may change (proxyd.filters.api.FilterStream) --------------------

    def set_request_header(self, name: str, value: str) -> None:
        h = self.head
        assert h is not None
        lname = name.lower()
        h.remove.append(lname.encode("latin-1"))
        if self.request_added is None:
            self.request_added = []
        line = lname.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n"
        self.request_added = [
            x for x in self.request_added if not x.startswith(lname.encode("latin-1") + b":")
        ]
        self.request_added.append(line)
        h.headers[lname] = value

    def remove_request_header(self, name: str) -> None:
        h = self.head
        assert h is not None
        lname = name.lower()
        h.remove.append(lname.encode("latin-1"))
        if self.request_added:
            prefix = lname.encode("latin-1") + b":"
            self.request_added = [x for x in self.request_added if not x.startswith(prefix)]
        h.headers.pop(lname, None)

    def add_request_header(self, name: str, value: str) -> None:
        h = self.head
        assert h is not None
        lname = name.lower()
        if self.request_added is None:
            self.request_added = []
        self.request_added.append(
            lname.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n"
        )
        old = h.headers.get(lname)
        h.headers[lname] = value if old is None else f"{old},{value}"

    def set_request_path(self, path: str) -> None:
        h = self.head
        assert h is not None
        raw = h.raw
        h.path = path
        h.raw = (
            h.method.encode("ascii")
            + b" "
            + path.encode("latin-1")
            + raw[raw.find(b" HTTP/1.1\r\n") :]
        )

    def downstream_addresses(self) -> tuple[str, str, str, int]:
        conn = self.connection
        assert conn is not None
        local = conn.local_address()
        ip, _, port = local.rpartition(":")
        return (
            self.trusted_address or conn.remote_ip,
            conn.remote_ip,
            ip.strip("[]"),
            int(port) if port.isdigit() else 0,
        )

    def downstream_peer_port(self) -> int:
        conn = self.connection
        assert conn is not None
        port = conn.remote.rpartition(":")[2]
        return int(port) if port.isdigit() else 0

    def downstream_tls(self) -> Any:
        conn = self.connection
        return conn.tls if conn is not None else None

    def set_request_length(self, length: int) -> None:
        h = self.head
        assert h is not None
        h.chunked = False
        h.content_length = length
        h.has_body = length > 0
        self.set_request_header("content-length", str(length))

    def set_response_header(self, name: str, value: str) -> None:
        lname = name.lower().encode("latin-1")
        if self.response_added is None:
            self.response_added = []
        else:
            prefix = lname + b":"
            self.response_added = [x for x in self.response_added if not x.startswith(prefix)]
        # The response's own lines of this name go (FilterChain.send_headers cuts them).
        if self.response_removed is None:
            self.response_removed = []
        if lname not in self.response_removed:
            self.response_removed.append(lname)
        self.response_added.append(lname + b": " + value.encode("latin-1") + b"\r\n")

    def add_response_header(self, name: str, value: str) -> None:
        line = name.lower().encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n"
        if self.response_added is None:
            self.response_added = [line]
        else:
            self.response_added.append(line)

    def remove_response_header(self, name: str) -> None:
        lname = name.lower().encode("latin-1")
        if self.response_removed is None:
            self.response_removed = []
        if lname not in self.response_removed:
            self.response_removed.append(lname)
        if self.response_added:
            prefix = lname + b":"
            self.response_added = [x for x in self.response_added if not x.startswith(prefix)]

    def set_request_chunked(self) -> None:
        h = self.head
        assert h is not None
        h.chunked = True
        h.content_length = -1
        h.has_body = True
        self.remove_request_header("content-length")  # transfer-encoding is added back

    def set_buffer_limit(self, limit: int) -> None:
        self.buffer_limit = limit

    def set_details(self, details: str) -> None:
        self.details = details

    def set_flag(self, flag: str) -> None:
        if self.extra_flags is None:
            self.extra_flags = []
        if flag not in self.extra_flags:
            self.extra_flags.append(flag)

    def request_header_lines(self) -> list[tuple[str, str]]:
        h = self.head
        assert h is not None
        raw = h.raw
        end = raw.find(b"\r\n\r\n")
        removed = set(h.remove)
        out = []
        for line in raw[: end if end >= 0 else len(raw)].split(b"\r\n")[1:]:
            i = line.find(b":")
            if i <= 0:
                continue
            name = line[:i].lower()
            if name in removed:
                continue
            out.append((name.decode("latin-1"), line[i + 1 :].strip().decode("latin-1")))
        for line in self.request_added or ():
            i = line.find(b":")
            out.append((line[:i].decode("latin-1"), line[i + 1 :].strip().decode("latin-1")))
        return out


class DownstreamSink(Protocol):
    """What the router (and the filters) may do with a stream's downstream side.

    Body data travels as lists of buffer views (one list per read, already de-framed);
    a view is valid only until the next call on the same sink. An empty list from
    :meth:`recv_body` means the request body is complete (``stream.request_complete``).
    """

    def take_buffered_body(self) -> list[memoryview]:
        """Request body bytes that arrived with the head, without waiting."""
        ...

    async def recv_body(self) -> list[memoryview]:
        """The next request body pieces, waiting for the client; ``[]`` at the end.
        Raises :class:`DownstreamReset` or ``ProtocolError`` (bad framing)."""
        ...

    async def send_continue(self) -> None:
        """Answer ``Expect: 100-continue`` (when the client asked for it)."""
        ...

    async def send_headers(
        self, r: ResponseHead, service_ms: int, length: int, first: list, end_stream: bool
    ) -> None:
        """The response head (``length`` is the body length, -1 when unknown), with the
        first body pieces; ``end_stream`` when nothing follows."""
        ...

    async def send_data(self, parts: list, end_stream: bool) -> None:
        """More response body pieces; ``end_stream`` ends the response."""
        ...

    async def send_local_reply(
        self, status: int, body: str | bytes, extra: bytes = b"", chunked: bool = False
    ) -> None:
        """A response made by the proxy (Envoy's shape); ``extra`` is header lines;
        ``chunked``: the body goes chunked, without a content-length."""
        ...

    def wants_close(self) -> bool:
        """The connection cannot carry another request after this one."""
        ...


class Connection(Protocol):
    """What the connection manager (:mod:`proxyd.worker.manager`) needs of the
    connection a stream came on, whatever its codec: the client's address, the
    deadline the stream's timeouts move, and the worker's timers."""

    remote_ip: str
    remote: str
    deadline: Deadline
    timers: Timers
    durations: ConnectionDurations | None
    # The TLS session (proxyd.worker.tls.TlsSocket), None on a plaintext connection.
    tls: Any
    # %PROTOCOL%: "HTTP/1.1" or "HTTP/2".
    protocol: str

    def local_address(self) -> str: ...
