"""The HTTP filter interface, as Envoy's connection manager has it.

A filter is a small object per stream (:class:`HttpFilter`), made by a
:class:`FilterFactory` that was compiled once per epoch and per route from the filter's
config and the route's ``typed_per_filter_config``. The chain
(:mod:`proxyd.worker.filter_chain`) calls the decoder side in configuration order:

* ``on_request_headers(stream, end_stream)``, then ``on_request_data(stream, data,
  end_stream)`` for each body piece, then ``on_request_trailers(stream)``;

and the encoder side in reverse order:

* ``on_response_headers(stream, response, end_stream)``, ``on_response_data(stream,
  data, end_stream)``.

Body ``data`` is a ``bytearray`` the filter may change in place (Envoy's filters drain
and refill the buffer they are given): what it holds when the filter returns goes on.
A filter that changes a body's length removes the ``content-length`` header
(``stream.remove_response_header`` / ``stream.set_request_chunked``), and the body then
goes out chunked, as Envoy's codec frames a body without a length.

Each returns a :class:`FilterStatus` or a :class:`LocalReply`:

* ``CONTINUE``: what it was given goes on to the next filter;
* ``STOP`` (headers): the headers wait here; the filter is given the body as it comes
  and continues the stream by returning ``CONTINUE`` from ``on_request_data``;
* ``STOP_AND_BUFFER`` (data): the chain keeps this data (up to the listener's buffer
  limit, else 413 as Envoy answers) and calls the filter again with more; the kept data
  goes on, as one piece, when the filter returns ``CONTINUE``;
* a :class:`LocalReply`: the stream is answered here and the router never sees it;
  the reply passes through the encoder filters in reverse order, as a reply made by
  Envoy's ``sendLocalReply`` does.

A filter that must await something (a fault delay, an authorization call) simply awaits
inside its method: the chain awaits it, and the stream's deadlines still apply.
The filter modules import nothing from ``proxyd.worker``: what they see of a stream is
:class:`FilterStream`.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class FilterStatus(enum.Enum):
    CONTINUE = "continue"
    STOP = "stop"
    STOP_AND_BUFFER = "stop_and_buffer"


# The filter_state key the gRPC-Web filter sets on its streams: the chain then answers a
# filter's local reply with its HTTP status (the filter adds the gRPC headers).
GRPC_WEB_STATE = "envoy.filters.http.grpc_web"

CONTINUE = FilterStatus.CONTINUE
STOP = FilterStatus.STOP
STOP_AND_BUFFER = FilterStatus.STOP_AND_BUFFER


@dataclass(frozen=True, slots=True)
class LocalReply:
    """Answer the stream here. ``flag`` is Envoy's response flag (e.g. "FI");
    ``headers`` are added to the reply; ``grpc_status`` answers a gRPC request the
    gRPC way (HTTP 200 with ``grpc-status``/``grpc-message``) when set."""

    status: int
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    flag: str = ""
    details: str = ""
    grpc_status: int | None = None


@dataclass(frozen=True, slots=True)
class FilterResponse:
    """Answer the stream with a whole response the filter has (a cache hit: Envoy's
    ``encodeHeaders`` / ``encodeData`` from a decoder filter), not a local reply: the
    ``headers`` lines go out as they are (no content-type or body of the proxy's own),
    and the response passes the encoder filters as an upstream response does. From
    ``on_response_headers`` it replaces the upstream's response (whose body is then
    dropped) and passes the encoder filters after this one. The body of a response to
    HEAD, and of 204 and 304, is not sent."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    details: str = ""


Result = FilterStatus | LocalReply | FilterResponse


class RequestView(Protocol):
    """The request head as filters see it. ``headers`` holds the headers the active
    filters (and routing and logging) asked for, lower-case names, repeated values
    joined with ","."""

    method: str
    path: str
    host: str
    content_length: int
    chunked: bool
    headers: dict[str, str]

    @property
    def has_body(self) -> bool: ...


class ResponseView(Protocol):
    status: int
    headers: Mapping[str, str]

    def header_lines(self) -> list[tuple[str, str]]:
        """Every response header line as it goes downstream (lower-case names, in order,
        without the hop-by-hop ones, with ``x-envoy-upstream-service-time``), for a
        filter that keeps the whole head (the cache); costs a scan of the head."""
        ...


class FilterStream(Protocol):
    """What a filter may read and change of its stream."""

    head: RequestView
    route_name: str | None
    upstream_cluster: str | None
    upstream_host: str | None
    """The host the router chose (``ip:port``, as ``%UPSTREAM_HOST%``), once it has."""
    override_host: tuple[str, bool] | None
    """(address, strict): the host the router's selection takes first when the cluster
    has it and may use it (a stateful session; strict: no other host)."""

    def set_request_header(self, name: str, value: str) -> None:
        """Replace (or add) a request header on its way upstream."""
        ...

    def remove_request_header(self, name: str) -> None: ...

    def add_request_header(self, name: str, value: str) -> None:
        """Add a request header line, keeping those the request has of that name."""
        ...

    def set_request_path(self, path: str) -> None:
        """Replace the request's path (with its query) on its way upstream; the route
        stays the one the old path chose."""
        ...

    def downstream_addresses(self) -> tuple[str, str, str, int]:
        """(the client address the connection manager trusts (x-forwarded-for and
        xff_num_trusted_hops, Envoy's downstream remote address), the connection's peer
        address, and the local address and port the connection came to)."""
        ...

    def downstream_peer_port(self) -> int:
        """The port of the connection's peer (0 on a Unix socket)."""
        ...

    def downstream_tls(self) -> Any:
        """The connection's TLS session (``sni``, ``peer``: the verified client
        certificate as ``ssl.getpeercert()`` gives it, or None), None on plaintext."""
        ...

    def set_request_length(self, length: int) -> None:
        """The request body goes upstream with this content-length (no chunking)."""
        ...

    filter_state: dict[str, object] | None
    """Per-stream state the filters share (Envoy's ``StreamInfo::FilterState``);
    None until a filter sets it."""

    def set_request_chunked(self) -> None:
        """The request body goes upstream chunked, without its content-length (a filter
        that changes the body's length)."""
        ...

    def set_response_header(self, name: str, value: str) -> None:
        """Replace (or add) a response header on its way downstream."""
        ...

    def add_response_header(self, name: str, value: str) -> None:
        """Add a response header line, keeping those the response has of that name."""
        ...

    def remove_response_header(self, name: str) -> None:
        """Remove a response header (the upstream's, or one a filter set); removing
        ``content-length`` makes the body go out chunked."""
        ...

    def set_buffer_limit(self, limit: int) -> None:
        """How much request body the chain may keep for this stream (Envoy's
        ``setDecoderBufferLimit``); beyond it the stream is answered 413."""
        ...

    def set_flag(self, flag: str) -> None:
        """Add Envoy's response flag ``flag`` (e.g. "DI") for the access log."""
        ...

    def set_details(self, details: str) -> None:
        """Set the stream's response code details (``%RESPONSE_CODE_DETAILS%``), e.g. a
        filter's own for a response that still comes from the upstream."""
        ...

    def request_header_lines(self) -> list[tuple[str, str]]:
        """Every request header as it stands (lower-case names, one pair per line, in
        order, with the filters' changes), for a filter that must see them all
        (ext_authz); costs a parse of the head, so only such filters call it."""
        ...


class HttpFilter:
    """Base class of a per-stream filter: every hook continues unless overridden."""

    __slots__ = ()

    async def on_request_headers(self, stream: FilterStream, end_stream: bool) -> Result:
        return CONTINUE

    async def on_request_data(
        self, stream: FilterStream, data: bytearray, end_stream: bool
    ) -> Result:
        return CONTINUE

    async def on_request_trailers(self, stream: FilterStream) -> Result:
        return CONTINUE

    async def on_response_headers(
        self, stream: FilterStream, response: ResponseView, end_stream: bool
    ) -> Result:
        return CONTINUE

    async def on_response_data(
        self, stream: FilterStream, data: bytearray, end_stream: bool
    ) -> Result:
        return CONTINUE

    async def on_response_trailers(
        self, stream: FilterStream, trailers: list[tuple[bytes, bytes]], data: bytearray
    ) -> Result:
        """The response ends with ``trailers`` (an HTTP/2 upstream's): a filter may
        change them in place (clear them: none go out) and add to ``data``, body bytes
        that go out before the end (through the data encoders, as Envoy's
        ``addEncodedData``)."""
        return CONTINUE

    def on_stream_complete(self, stream: FilterStream) -> None:
        """The stream ended (whichever way): release what the filter holds."""


class StatsScope(Protocol):
    """A stat scope the worker gives a filter factory (``http.<prefix>.<filter>.``):
    counters and gauges by Envoy's suffix."""

    def inc(self, name: str, by: int = 1) -> None: ...

    def gauge_add(self, name: str, by: int) -> None: ...

    def value(self, name: str) -> int:
        """A gauge's (else a counter's) value in this worker, 0 when never touched: the
        fault filter's ``max_active_faults`` reads its ``active_faults`` gauge."""
        ...

    def root(self, prefix: str) -> StatsScope:
        """A scope at the top of the stat names, under ``prefix`` (Envoy's filters whose
        stats are not under ``http.<stat_prefix>.``, e.g. ``<p>.http_local_rate_limit.``)."""
        ...


class CallFailed(Exception):
    """A side call (:class:`AsyncClient`) got no answer: no such cluster, no healthy
    host, connect failure, reset, timeout, or a broken response."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """An HTTP side call's response: status, header lines (lower-case names, in
    order), body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class AsyncClient(Protocol):
    """Calls a filter makes to a cluster of the epoch (Envoy's async client), through
    the worker's own upstream pools; each raises :class:`CallFailed` when there is no
    answer within ``timeout_s``."""

    async def http_call(
        self, cluster: str, head: bytes, body: bytes, timeout_s: float
    ) -> HttpAnswer:
        """``head`` is a whole HTTP/1.1 request head (CRLF CRLF ended)."""
        ...

    async def grpc_call(
        self,
        cluster: str,
        authority: str,
        method: str,
        message: bytes,
        timeout_s: float,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> tuple[int, bytes]:
        """(grpc-status, the response message: b"" when none came)."""
        ...


@dataclass(frozen=True, slots=True)
class EpochFacts:
    """What a filter may know of its epoch beyond its config, given (as ``facts=``) to
    a factory whose class sets ``takes_epoch_facts``: the bootstrap's ``node.cluster``
    and, per cluster, (hosts, hosts able to take traffic: healthy and not ejected).

    ``http_get(cluster, authority, path, timeout_s, retry=None)`` GETs ``path`` from a
    host of a cluster of the epoch and returns (status, body), raising an exception for
    a fetch that failed (:mod:`proxyd.worker.cluster_fetch`); None outside a worker.
    ``client`` makes calls to the epoch's clusters (:class:`AsyncClient`, ext_authz's
    HTTP checks and unary gRPC calls); None outside a worker."""

    node_cluster: str = ""
    membership: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    http_get: Callable[..., Awaitable[tuple[int, bytes]]] | None = None
    client: AsyncClient | None = None


class FilterFactory(Protocol):
    """Compiled once per epoch and route: makes a filter per stream.

    ``wanted_headers`` are the lower-case request header names the filter reads from
    ``stream.head.headers``; a factory may also have ``response_headers``, the response
    header names its ``on_response_headers`` reads from ``response.headers`` (optional:
    the plan reads it with ``getattr``, so filters that read none need not say so);
    ``encodes`` / ``decodes`` say which sides it has, so the chain skips the other."""

    name: str
    wanted_headers: frozenset[str]
    decodes: bool
    encodes: bool

    def create(self) -> HttpFilter: ...


class FactoryMaker(Protocol):
    """``filter.Factory``'s constructor: the filter's plain config from the epoch, the
    route's plain per-route config (None when the route has none), its stats, and the
    epoch's runtime (``proxyd.protocol.runtime.Snapshot``)."""

    def __call__(
        self, name: str, config: Any, per_route: Any, stats: StatsScope, runtime: Any = ...
    ) -> FilterFactory: ...
