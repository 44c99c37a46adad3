"""The HTTP filter chain of one stream: a sink around the codec's sink.

When a route has filters (``RoutePlan.filters``, compiled per epoch), the connection
manager makes a :class:`FilterChain` for the stream and makes it the stream's sink: the
decoder filters run on the request head first (:meth:`FilterChain.decode_headers`), then
on every body piece the router pulls (:meth:`FilterChain.take_buffered_body`,
:meth:`FilterChain.recv_body`); the encoder filters run, in reverse order, on what the
router (or a filter's local reply) sends back. The router sits at the end and cannot tell
the chain from the codec. A route whose chain is only the router gets no
:class:`FilterChain` at all.

Semantics follow Envoy's filter manager (see :mod:`proxyd.filters.api`): a filter that
returns ``STOP`` on the head gets the body as it arrives (through the filters before it)
and the head goes on when it returns ``CONTINUE``; ``STOP_AND_BUFFER`` keeps data in the
chain, bounded by the listener's buffer limit (413 beyond, as Envoy answers); a
:class:`~proxyd.filters.api.LocalReply` answers the stream and passes through the
encoder filters. Limits of this version: request trailers are not surfaced by the
HTTP/1 codec (``on_request_trailers`` is not called).

Body data passes the filters as one ``bytearray`` per piece, which a filter may change
in place (the compressor and decompressor filters do). Response header names a filter
removed (``Stream.response_removed``) are cut from the upstream's head here; without a
``content-length`` the body goes out chunked.
"""

from __future__ import annotations

from functools import cache
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NoReturn, cast

from proxyd.filters.api import (
    CONTINUE,
    GRPC_WEB_STATE,
    FilterFactory,
    FilterResponse,
    FilterStream,
    HttpFilter,
    LocalReply,
    Result,
)
from proxyd.protocol.http1 import ResponseHead, response_has_body
from proxyd.protocol.http1_headers import REASONS
from proxyd.worker.stream import DownstreamSink, LocalReplied, ResponseFlag, Stream

if TYPE_CHECKING:
    from proxyd.worker.stats import HttpStats

PAYLOAD_TOO_LARGE = LocalReply(413, "Payload Too Large", details="request_payload_too_large")


class _Response:
    """What encoder filters see of a response head (a ResponseView): ``r`` is the
    upstream's head (None for a local reply), ``service_ms`` the service time that goes
    with it (-1: none)."""

    __slots__ = ("status", "headers", "r", "service_ms", "stream", "body")

    def __init__(
        self,
        status: int,
        headers: Any,
        r: ResponseHead | None = None,
        service_ms: int = -1,
        stream: Stream | None = None,
        body: bytes = b"",
    ) -> None:
        self.status = status
        self.headers = headers
        self.r = r
        self.service_ms = service_ms
        self.stream = stream
        # A local reply's body (b"" for an upstream's response, whose body follows).
        self.body = body

    def header_lines(self) -> list[tuple[str, str]]:
        r = self.r
        if r is None:
            lines = list(self.headers.items())
        else:
            lines = head_lines(r)
            if self.service_ms >= 0:
                lines.append(("x-envoy-upstream-service-time", str(self.service_ms)))
        stream = self.stream
        if stream is not None:
            removed = stream.response_removed
            if removed:
                gone = {n.decode("latin-1") for n in removed}
                lines = [(n, v) for n, v in lines if n not in gone]
            for line in stream.response_added or ():
                name, _, value = line.decode("latin-1").partition(":")
                lines.append((name, value.strip()))
        return lines


def head_lines(r: ResponseHead) -> list[tuple[str, str]]:
    """The header lines of response head ``r`` but those cut from it (hop-by-hop),
    as (lower-case name, value)."""
    raw = r.raw
    cuts = r.cuts
    if cuts:
        pieces = []
        pos = 0
        for i, j in cuts:
            pieces.append(raw[pos:i])
            pos = j
        pieces.append(raw[pos:])
        raw = b"".join(pieces)
    out = []
    for line in raw.split(b"\r\n")[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        out.append((name.decode("latin-1").lower(), value.strip(b" \t").decode("latin-1")))
    return out


def _reason(status: int) -> bytes:
    """The reason phrase Envoy's codec writes for ``status``."""
    reason = REASONS.get(status)
    if reason is None:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
    return reason.encode()


def response_head_of(status: int, lines: tuple[tuple[str, str], ...]) -> ResponseHead:
    """A response head made of a filter's header lines (a FilterResponse)."""
    r = ResponseHead()
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))]
    headers = r.headers
    for name, value in lines:
        parts.append(name.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n")
        if name == "date":
            r.has_date = True
        old = headers.get(name)
        headers[name] = value if old is None else old + "," + value
    parts.append(b"\r\n")
    r.raw = b"".join(parts)
    r.status = status
    return r


# Envoy's Grpc::Utility::httpToGrpcStatus, for local replies to gRPC requests.
HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def local_reply_of(reply: LocalReply, grpc_request: bool) -> tuple[int, str, bytes]:
    """A filter's LocalReply as (status, body, extra header lines). A gRPC request is
    answered the gRPC way, as Envoy's sendLocalReply does: HTTP 200 with grpc-status
    (the reply's own, or its HTTP status mapped) and the body as grpc-message."""
    extra = b"".join(
        n.lower().encode("latin-1") + b": " + v.encode("latin-1") + b"\r\n"
        for n, v in reply.headers
    )
    if grpc_request:
        code = reply.grpc_status
        if code is None:
            code = HTTP_TO_GRPC.get(reply.status, 2)
        extra += b"content-type: application/grpc\r\ngrpc-status: %d\r\n" % code
        if reply.body:
            extra += b"grpc-message: " + reply.body.encode("latin-1") + b"\r\n"
        return 200, "", extra
    return reply.status, reply.body, extra


def cut_lines(r: ResponseHead, names: list[bytes]) -> None:
    """Leave the lines named ``names`` (lower case) out of response head ``r``: a filter
    replaced them (``FilterStream.set_response_header``)."""
    low = r.raw.lower()
    cuts = set(r.cuts)
    for name in names:
        needle = b"\r\n" + name + b":"
        i = low.find(needle)
        while i >= 0:
            j = low.find(b"\r\n", i + 2)
            cuts.add((i, j))
            i = low.find(needle, j)
        r.headers.pop(name.decode("latin-1"), None)
    r.cuts = sorted(cuts)


def without_lines(extra: bytes, names: list[bytes]) -> bytes:
    """Header lines ``extra`` (each ending in CRLF) without those named ``names``."""
    kept = [ln for ln in extra.split(b"\r\n") if ln and ln[: ln.find(b":")].lower() not in names]
    return b"".join(ln + b"\r\n" for ln in kept)


@cache
def _overrides(cls: type, hook: str) -> bool:
    """The filter class has its own ``hook`` (found once per class, not per stream)."""
    return getattr(cls, hook) is not getattr(HttpFilter, hook)


class FilterChain:
    """One stream's decoder and encoder filters around the codec's sink."""

    __slots__ = (
        "stream",
        "fs",
        "inner",
        "filters",
        "decoders",
        "data_decoders",
        "encoders",
        "data_encoders",
        "trailer_encoders",
        "limit",
        "kept",
        "pending",
        "ready",
        "first_taken",
        "http_stats",
        "replaced",
    )

    def __init__(
        self,
        stream: Stream,
        inner: DownstreamSink,
        factories: tuple[FilterFactory, ...],
        limit: int,
        http_stats: HttpStats | None = None,
    ) -> None:
        self.stream = stream
        # What the filters see of the stream (proxyd.filters.api.FilterStream).
        self.fs = cast(FilterStream, stream)
        self.inner = inner
        # One pass (this runs for every stream of a route with filters).
        filters: list[HttpFilter] = []
        decoders: list[HttpFilter] = []
        encoders: list[HttpFilter] = []
        self.filters = filters
        self.decoders = decoders
        self.encoders = encoders
        data_decoders = data_encoders = False
        for fac in factories:
            f = fac.create()
            filters.append(f)
            cls: type = type(f)
            if fac.decodes:
                decoders.append(f)
                data_decoders = data_decoders or _overrides(cls, "on_request_data")
            if fac.encodes:
                encoders.append(f)
                data_encoders = data_encoders or _overrides(cls, "on_response_data")
        encoders.reverse()
        self.data_decoders = data_decoders
        self.data_encoders = data_encoders
        # Encoders that see response trailers (on_response_trailers), in encoding order.
        self.trailer_encoders = [
            f for f in encoders if _overrides(cast(type, type(f)), "on_response_trailers")
        ]
        self.limit = limit
        # Data a filter keeps (STOP_AND_BUFFER), by its index in decoders.
        self.kept: dict[int, bytearray] = {}
        # Body that came out of the filters before the router asked: (data, from index).
        self.pending: list[tuple[bytes, int]] = []
        # Body that passed every filter before the router started, for the router.
        self.ready: list[bytes] = []
        self.first_taken = False
        self.http_stats = http_stats
        # A filter replaced the upstream's response (FilterResponse from an encoder):
        # the rest of the upstream's body is dropped.
        self.replaced = False

    # -- decoding -----------------------------------------------------------------------

    async def decode_headers(self) -> LocalReply | FilterResponse | None:
        """Run the decoder filters on the request head; a reply to answer with."""
        stream = self.stream
        decoders = self.decoders
        i = 0
        while i < len(decoders):
            res = await decoders[i].on_request_headers(
                self.fs, stream.request_complete and not self.pending
            )
            if isinstance(res, (LocalReply, FilterResponse)):
                return res
            i += 1
            if res is CONTINUE or stream.request_complete:
                continue
            # The head waits at filter i-1: the body goes through filters [0, i) until
            # data comes out of filter i-1 (it continued), or the body ends. What
            # arrives meanwhile is held, up to the stream's buffer limit. A client that
            # waits for 100-continue is told to send it (Envoy's connection manager
            # answers Expect itself, before its filters).
            h = stream.head
            if h is not None and h.expect_continue:
                await self.inner.send_continue()
            held = 0
            while True:
                pieces = await self._next_pieces()
                data = b"".join(pieces) if len(pieces) != 1 else bytes(pieces[0])
                held += len(data)
                if held > (stream.buffer_limit or self.limit):
                    return self._too_large()
                out = await self._run_data(data, self.stream.request_complete, 0, i)
                if isinstance(out, LocalReply):
                    return out
                if out is not None:
                    self.pending.append((out, i))
                    break
                if stream.request_complete:
                    break
        # Every filter has the head: what came out of a stopped filter passes the rest.
        n = len(decoders)
        while self.pending:
            data, at = self.pending.pop(0)
            out = await self._run_data(data, stream.request_complete and not self.pending, at, n)
            if isinstance(out, LocalReply):
                return out
            if out is not None:
                self.ready.append(out)
        return None

    async def _next_pieces(self) -> list[memoryview]:
        if not self.first_taken:
            self.first_taken = True
            pieces = self.inner.take_buffered_body()
            if pieces or self.stream.request_complete:
                return pieces
        return await self.inner.recv_body()

    async def _run_data(
        self, piece: bytes, end: bool, lo: int, hi: int
    ) -> bytes | LocalReply | None:
        """``piece`` through decoders[lo:hi]: what comes out, or None while kept."""
        decoders = self.decoders
        data = bytearray(piece)  # filters may change it in place
        for j in range(lo, hi):
            res: Result = await decoders[j].on_request_data(self.fs, data, end)
            if isinstance(res, LocalReply):
                return res
            kept = self.kept.get(j)
            if res is CONTINUE:
                if kept is not None:
                    kept += data
                    data = kept
                    del self.kept[j]
                continue
            # STOP / STOP_AND_BUFFER: the chain keeps it until the filter continues.
            if kept is None:
                kept = self.kept[j] = bytearray()
            kept += data
            if sum(len(k) for k in self.kept.values()) > (self.stream.buffer_limit or self.limit):
                return self._too_large()
            if end:
                # Nothing more will come: what the filter kept goes on.
                data = kept
                del self.kept[j]
                continue
            return None
        return bytes(data)

    def _too_large(self) -> LocalReply:
        """A filter's buffer overflowed: Envoy's connection manager answers 413, counts
        it, and closes the connection (the rest of the body is not read)."""
        if self.http_stats is not None:
            self.http_stats.rq_too_large += 1
        self.stream.close_connection = True
        return PAYLOAD_TOO_LARGE

    def take_buffered_body(self) -> list[memoryview]:
        if self.ready:
            out = [memoryview(b) for b in self.ready]
            self.ready = []
            return out
        if self.pending:
            return []  # recv_body delivers it (it may still have filters to pass)
        if not self.data_decoders:
            self.first_taken = True
            return self.inner.take_buffered_body()
        return []

    async def recv_body(self) -> list[memoryview]:
        n = len(self.decoders)
        if self.ready:
            return self.take_buffered_body()
        while True:
            if self.pending:
                data, at = self.pending.pop(0)
                out = await self._run_data(data, self.stream.request_complete, at, n)
                if isinstance(out, LocalReply):
                    await self._reply_mid_stream(out)
                if out is not None:
                    return [memoryview(out)]
                continue
            if self.stream.request_complete and self.first_taken:
                return []
            pieces = await self._next_pieces()
            if not self.data_decoders:
                return pieces
            data = b"".join(pieces)
            if not data and not self.stream.request_complete:
                continue
            out = await self._run_data(data, self.stream.request_complete, 0, n)
            if isinstance(out, LocalReply):
                await self._reply_mid_stream(out)
            if out is not None:
                return [memoryview(out)]
            if self.stream.request_complete:
                return []

    async def _reply_mid_stream(self, reply: LocalReply) -> NoReturn:
        self.stream.close_connection = True  # the rest of the request cannot be read
        await self.send_filter_reply(reply)
        raise LocalReplied(reply.details or str(reply.status))

    async def send_continue(self) -> None:
        await self.inner.send_continue()

    def wants_close(self) -> bool:
        return self.inner.wants_close()

    # -- encoding -----------------------------------------------------------------------

    async def _encode_headers(
        self,
        status: int,
        headers: Any,
        end_stream: bool,
        r: ResponseHead | None = None,
        service_ms: int = -1,
        start: int = 0,
        body: bytes = b"",
    ) -> LocalReply | tuple[int, FilterResponse] | None:
        """The encoder filters from ``start`` on a response head: a LocalReply, or
        (index of the filter, its FilterResponse) to send instead, or None."""
        view = _Response(status, headers, r, service_ms, self.stream, body)
        encoders = self.encoders
        for k in range(start, len(encoders)):
            res = await encoders[k].on_response_headers(self.fs, view, end_stream)
            if isinstance(res, LocalReply):
                return res
            if isinstance(res, FilterResponse):
                return k, res
        return None

    async def _encode_data(self, parts: list, end_stream: bool, start: int = 0) -> list:
        if not self.data_encoders:
            return parts
        data = bytearray().join(parts)  # filters may change it in place
        for f in self.encoders[start:] if start else self.encoders:
            res = await f.on_response_data(self.fs, data, end_stream)
            if isinstance(res, LocalReply):
                raise LocalReplied(res.details or str(res.status))  # too late to answer
        return [data] if data else []

    async def send_headers(
        self, r: ResponseHead, service_ms: int, length: int, first: list, end_stream: bool
    ) -> None:
        head_ends = end_stream and not first
        reply = await self._encode_headers(r.status, r.headers, head_ends, r, service_ms)
        if isinstance(reply, tuple):
            self.replaced = True
            await self.send_response(reply[1], reply[0] + 1)
            return
        if reply is not None:
            await self._reply_mid_stream(reply)
        removed = self.stream.response_removed
        if removed:
            cut_lines(r, removed)
            if b"content-length" in removed and not head_ends:
                length = -1  # a filter changes the body's length: it goes out chunked
        if first:
            first = await self._encode_data(first, end_stream)
        await self.inner.send_headers(r, service_ms, length, first, end_stream)

    async def send_data(self, parts: list, end_stream: bool) -> None:
        if self.replaced:
            return
        parts = await self._encode_data(parts, end_stream)
        await self.inner.send_data(parts, end_stream)

    async def send_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """The response ends with trailers (an HTTP/2 upstream's): the data
        encoders end first; a codec that cannot carry trailers ends the body."""
        extra = bytearray()
        if self.trailer_encoders:
            trailers = list(trailers)
            for f in self.trailer_encoders:
                await f.on_response_trailers(self.fs, trailers, extra)
        first = [extra] if extra else []
        parts = await self._encode_data(first, True) if self.data_encoders else first
        send = getattr(self.inner, "send_trailers", None) if trailers else None
        if send is None:
            await self.inner.send_data(parts, True)
            return
        if parts:
            await self.inner.send_data(parts, False)
        await send(trailers)

    async def send_local_reply(
        self, status: int, body: str | bytes, extra: bytes = b"", chunked: bool = False
    ) -> None:
        data = body.encode() if isinstance(body, str) else body
        # The head the filters see, as Envoy's sendLocalReply makes it: a body brings its
        # content-length and content-type; without one the codec adds the length later.
        headers = {"content-length": str(len(data)), "content-type": "text/plain"} if data else {}
        reply = await self._encode_headers(status, headers, not data, body=data)
        if isinstance(reply, tuple):
            await self.send_response(reply[1], reply[0] + 1)
            return
        if reply is not None:
            await self.send_filter_reply(reply, encode=False)
            return
        removed = self.stream.response_removed
        if extra and removed:
            extra = without_lines(extra, removed)
        if data and removed and b"content-length" in removed:
            # A filter transforms the body (compression): the reply carries the result,
            # chunked, as Envoy's codec frames a body whose length was removed.
            data = b"".join(bytes(p) for p in await self._encode_data([data], True))
            body = data
            chunked = True
        if chunked:
            await self.inner.send_local_reply(status, body, extra, chunked=True)
        else:
            await self.inner.send_local_reply(status, body, extra)

    async def send_response(self, resp: FilterResponse, start: int = 0) -> None:
        """Answer with a filter's whole response (a cache hit), through the encoder
        filters from ``start``, as an upstream response goes."""
        stream = self.stream
        if resp.details:
            stream.details = resp.details
        h = stream.head
        status = resp.status
        r = response_head_of(status, resp.headers)
        body = resp.body
        if (h is not None and h.method == "HEAD") or not response_has_body(status, False):
            body = b""
        reply = await self._encode_headers(status, r.headers, not body, r, -1, start)
        if isinstance(reply, LocalReply):
            await self._reply_mid_stream(reply)
        stream.status = status
        if stream.resp_headers is None:
            stream.resp_headers = r.headers
        length = len(body)
        removed = stream.response_removed
        if removed:
            cut_lines(r, removed)
            if b"content-length" in removed and body:
                length = -1
        first: list = [body] if body else []
        if first:
            first = await self._encode_data(first, True, start)
        await self.inner.send_headers(r, -1, length, first, True)

    async def send_filter_reply(
        self, reply: LocalReply | FilterResponse, encode: bool = True
    ) -> None:
        """Answer with a filter's local reply, through the encoder filters."""
        if isinstance(reply, FilterResponse):
            await self.send_response(reply)
            return
        stream = self.stream
        if reply.flag:
            stream.set_flag(reply.flag)
        if reply.details:
            stream.details = reply.details
        if reply is PAYLOAD_TOO_LARGE and stream.flags is ResponseFlag.NONE:
            stream.details = reply.details
        h = stream.head
        grpc = h is not None and h.headers.get("content-type", "").startswith("application/grpc")
        if grpc and stream.filter_state and GRPC_WEB_STATE in stream.filter_state:
            grpc = False  # gRPC-Web: the filter answers with the HTTP status kept
        status, body, extra = local_reply_of(reply, grpc)
        if encode:
            await self.send_local_reply(status, body, extra)
        else:
            await self.inner.send_local_reply(status, body, extra)

    def complete(self) -> None:
        for f in self.filters:
            f.on_stream_complete(self.fs)
