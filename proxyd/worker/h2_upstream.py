"""The router for a route whose cluster speaks HTTP/2 to its hosts.

A cluster with ``explicit_http_config.http2_protocol_options`` (or the deprecated
cluster-level ``http2_protocol_options``) has, beside its HTTP/1 pools (which the TCP
proxy keeps using), one :class:`~proxyd.worker.h2_pool.H2Pool` per routing priority
(``ClusterState.h2pools``), and the routes to it forward with :class:`H2Exchange`
(``RoutePlan.exchange``, chosen when the epoch is compiled: the HTTP/1 path is not
touched).

:class:`H2Exchange` is the router for one stream: the upstream head (HTTP/1.1 bytes,
as for an HTTP/1 cluster, with every edit of the connection manager, the filters and
the route) becomes a header block (:mod:`proxyd.protocol.h2_upstream`), the body goes
out within the peer's windows while the response is awaited, and the response goes to
the sink as the HTTP/1.1 head it stands for, its DATA acknowledged only once the sink
took it, and its trailers passed on to a downstream HTTP/2 stream
(:func:`end_with_trailers`). A stream reset before the response head is Envoy's 503
with the reset reason; one reset after it is reset downstream (HTTP/2) or ends the
client's connection (HTTP/1.1).
"""

from __future__ import annotations

import time
from typing import Any

import h2.exceptions
import trio

from proxyd.errors import ProtocolError
from proxyd.protocol.h2_upstream import request_headers, reset_reason, response_head, trailer_block
from proxyd.protocol.histogram import record
from proxyd.protocol.http1 import ResponseHead, response_has_body
from proxyd.worker.h2_pool import H2Conn, StreamGone, UpStream
from proxyd.worker.pool import UPSTREAM_BUFFER, ConnectFailure, Overflow
from proxyd.worker.router import (
    ENDINGS,
    RESET_BEFORE_HEADERS,
    Exchange,
    PumpEnd,
    track_cluster_stats,
)
from proxyd.worker.stream import (
    DownstreamReset,
    ResponseFlag,
    UpstreamProtocolError,
    UpstreamReset,
)


async def end_with_trailers(sink: Any, trailers: list[tuple[bytes, bytes]]) -> None:
    """End the response with ``trailers`` where the downstream can carry them (an
    HTTP/2 stream, through the filter chain); an HTTP/1.1 client gets the end of the
    body without them, as Envoy sends it by default."""
    send = getattr(sink, "send_trailers", None)
    if send is None:
        await sink.send_data([], True)
    else:
        await send(trailers)


def by_downstream_protocol(
    stream: Any, plan: Any, rp: Any, host: Any, head: bytes, timers: Any
) -> Exchange:
    """``RoutePlan.exchange`` for a cluster with use_downstream_protocol_config: a
    request that came over HTTP/2 goes to the host over HTTP/2, others over HTTP/1.1."""
    sink = stream.sink
    while not hasattr(sink, "protocol"):  # the filter chain, ResponseEdits: inward
        sink = sink.inner
    cls = H2Exchange if sink.protocol == "HTTP/2" else Exchange
    return cls(stream, plan, rp, host, head, timers)


def by_alpn(stream: Any, plan: Any, rp: Any, host: Any, head: bytes, timers: Any) -> Any:
    """``RoutePlan.exchange`` for an auto_config cluster: the host's requests go over
    the protocol ALPN chose on its first connection (:class:`AlpnProbe` finds it out)."""
    alpn = host.alpn
    if alpn == "h2":
        return H2Exchange(stream, plan, rp, host, head, timers)
    if alpn is not None:
        return Exchange(stream, plan, rp, host, head, timers)
    return AlpnProbe(stream, plan, rp, host, head, timers)


class AlpnProbe:
    """auto_config, a host whose protocol is not known yet: one TLS connection through
    the HTTP/1.1 pool tells (the ALPN the host chose, offered h2 and http/1.1 as Envoy
    offers them). An http/1.1 connection stays in that pool for the request; an h2 one
    is closed and the request goes to the HTTP/2 pool, which opens its own (one
    handshake more, once per host and worker). A failed connect leaves the protocol
    unknown: the request's exchange meets the failure and answers it as usual."""

    __slots__ = ("args",)

    def __init__(self, *args: Any) -> None:
        self.args = args

    async def run(self) -> bool:
        stream, plan, rp, host, head, timers = self.args
        if host.alpn is None:
            pool = rp.pool
            tls = host.tls
            key = tls.key_of(head) if tls is not None and tls.keyed else None
            try:
                uc = await pool.connect(host, key=key)
            except (ConnectFailure, Overflow):
                uc = None
            if uc is not None:
                chosen = getattr(uc.sock, "alpn", "")
                if host.alpn is None:
                    host.alpn = "h2" if chosen == "h2" else "http/1.1"
                if chosen != "h2" and host.alpn == "http/1.1":
                    pool.put_back(uc)  # the exchange takes it from the idle list
                else:
                    pool.destroy(uc)
        cls = H2Exchange if host.alpn == "h2" else Exchange
        result: bool = await cls(stream, plan, rp, host, head, timers).run()
        return result


class H2Streaming:
    """What both HTTP/2 routers do with one upstream stream (a mixin without state of
    its own: the classes below hold ``h2pool``, ``h2conn`` and ``up``)."""

    __slots__ = ()
    # (declared by the classes that use it)
    pump_end: PumpEnd | None
    pump_error: ProtocolError | None
    up: UpStream | None
    h2conn: H2Conn | None

    async def _open_stream(self: Any, conn: H2Conn, head: bytes, pieces: list) -> UpStream:
        """The request's header block on a new stream of ``conn``, and the body
        pieces already here; StreamGone when the connection could not take it."""
        stream = self.stream
        complete = stream.request_complete
        end = complete and not any(len(p) for p in pieces) and not request_trailers(self.sink)
        scheme = b"http" if conn.host.tls is None else b"https"
        up = self.up = conn.open_stream(request_headers(head, scheme), end)
        try:
            if not end and (pieces or complete):
                await self._send_body(conn, up, pieces, complete)
            else:
                await conn.flush()
        except StreamGone:
            pass  # the response side tells what became of it
        return up

    async def _send_body(self: Any, conn: H2Conn, up: UpStream, pieces: list, last: bool) -> None:
        c = conn.h2
        for p in pieces:
            view = memoryview(p)
            while view:
                n = await conn.window(up, len(view))
                try:
                    c.send_data(up.sid, bytes(view[:n]))
                except h2.exceptions.ProtocolError:
                    raise StreamGone() from None
                view = view[n:]
                await conn.flush()
        if last:
            trailers = request_trailers(self.sink)
            try:
                if trailers:
                    c.send_headers(up.sid, trailers, end_stream=True)
                else:
                    c.end_stream(up.sid)
            except h2.exceptions.ProtocolError:
                raise StreamGone() from None
            up.closed_out = True
            await conn.flush()

    async def _pump_h2(self: Any, conn: H2Conn, up: UpStream, cancel: trio.CancelScope) -> None:
        """The rest of the request body, from the sink to the stream."""
        stream = self.stream
        sink = self.sink
        try:
            while not stream.request_complete:
                pieces = await sink.recv_body()
                await self._send_body(conn, up, pieces, stream.request_complete)
        except DownstreamReset:
            self.pump_end = PumpEnd.DOWNSTREAM_RESET
            cancel.cancel()
            return
        except ProtocolError as exc:
            self.pump_end = PumpEnd.BAD_REQUEST_BODY
            self.pump_error = exc
            cancel.cancel()
            return
        except StreamGone:
            self.pump_end = PumpEnd.UPSTREAM_STOPPED_READING
            return
        self.arm_route()

    async def _duplex_h2(self: Any, conn: H2Conn, up: UpStream, continued: bool = False) -> bool:
        """The response, while the rest of the request body streams up (``continued``:
        the client got its 100 Continue already)."""
        stream = self.stream
        h = stream.head
        assert h is not None
        if h.expect_continue and not continued:
            await self.sink.send_continue()
        result = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_h2, conn, up, nursery.cancel_scope)
                r = await self._response_head(conn, up)
                if r is None:
                    nursery.cancel_scope.cancel()
                    result = await self._reset_before(up)
                else:
                    result = await self._relay_h2(conn, up, r)
                    if not stream.request_complete:
                        nursery.cancel_scope.cancel()  # answered: the rest is not wanted
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        if self.pump_end is PumpEnd.DOWNSTREAM_RESET:
            raise DownstreamReset()
        if self.pump_end is PumpEnd.BAD_REQUEST_BODY:
            assert self.pump_error is not None
            raise self.pump_error
        return result

    async def _response_head(self: Any, conn: H2Conn, up: UpStream) -> ResponseHead | None:
        """The response head; None when the stream was reset (or its connection went
        away) before one."""
        while up.headers is None:
            if up.gone:
                return None
            await up.wait()
        try:
            _, raw = response_head(up.headers)
            if len(raw) > UPSTREAM_BUFFER:  # as an HTTP/1.1 upstream's head over 64 KiB
                raise UpstreamProtocolError("response headers too large")
            return conn.parser.parse(raw, self.plan.response_wanted)
        except ProtocolError as exc:
            raise UpstreamProtocolError(exc.reason) from None

    async def _relay_h2(self: Any, conn: H2Conn, up: UpStream, r: ResponseHead) -> bool:
        """The response to the sink: DATA acknowledged once the sink took it, the
        trailers passed on (:func:`end_with_trailers`)."""
        stream = self.stream
        sink = self.sink
        h = stream.head
        assert h is not None
        pool = self.pool
        status = r.status
        now = time.monotonic()
        service_ms = int((now - self.t_sent) * 1000)
        stream.service_ms = service_ms
        stream.status = status
        pool.stats.count_response(status)
        if status < 500:
            self.host.stats.rq_success += 1
        else:
            self.host.stats.rq_error += 1
        self.host.outcomes.response(status)
        if self.plan.response_wanted:
            stream.resp_headers = r.headers
        body = response_has_body(status, h.method == "HEAD")
        length = r.content_length if body else 0
        pieces, n = _take(up)
        ended = up.ended and up.trailers is None
        await sink.send_headers(r, service_ms, length, pieces if body else [], ended)
        conn.ack(up, n)
        try:
            while True:
                if up.data:
                    pieces, n = _take(up)
                    if body:
                        ended = up.ended and up.trailers is None
                        await sink.send_data(pieces, ended)
                        self._touch()
                    # (else a HEAD's, 204's or 304's DATA is dropped)
                    conn.ack(up, n)  # only now: what the sink took, the host may resend
                    continue
                if up.ended:
                    break
                if up.gone:
                    reason, detail = reset_reason(up.reset_code)
                    if up.reset_code is not None:
                        stream.flags = ResponseFlag.UPSTREAM_REMOTE_RESET
                    stream.details = f"upstream_reset_after_response_started{{{detail}}}"
                    raise UpstreamReset(reason)
                await conn.flush()  # the window the sink freed
                if up.data or up.ended or up.gone:
                    continue  # it came while flushing (notify found no waiter)
                await up.wait()
        except StreamGone:
            raise UpstreamReset("connection termination") from None
        if not ended:
            if up.trailers is not None:
                await end_with_trailers(sink, trailer_block(up.trailers))
            else:
                await sink.send_data([], True)
        now = time.monotonic()
        if self.t_done:
            record(pool.stats.h_rq_time, int((now - self.t_done) * 1000))
            if pool.stats.tracked:
                track_cluster_stats(self, r, now)
        return True

    async def _reset_before(self: Any, up: UpStream) -> bool:
        """The stream was reset (or its connection went away) before a response
        head: Envoy's 503 with the reset reason."""
        stream = self.stream
        reason, detail = reset_reason(up.reset_code)
        stream.flags = (
            ResponseFlag.UPSTREAM_CONNECTION_TERMINATION
            if up.reset_code is None
            else ResponseFlag.UPSTREAM_REMOTE_RESET
        )
        stream.details = f"upstream_reset_before_response_started{{{detail}}}"
        self.pool.stats.count_response(503)
        self.host.stats.rq_error += 1
        self.host.outcomes.reset()
        return await self._reply(503, RESET_BEFORE_HEADERS + reason)

    async def _end_stream(self: Any) -> None:
        """The exchange is done with its stream: reset when unfinished, its slot
        freed, and what that wrote flushed."""
        conn = self.h2conn
        if conn is None:
            return
        self.h2conn = None
        up, self.up = self.up, None
        if up is None:
            self.pool.stream_done(conn)
            return
        conn.finish(up, reset=True)
        if not conn.closed:
            with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                try:
                    await conn.flush()
                except StreamGone:
                    pass  # the connection broke: its reader ends it


def request_trailers(sink: Any) -> list[tuple[bytes, bytes]] | None:
    """The request trailers an HTTP/2 client sent (the codec's sink, under the filter
    chain), as they go upstream (pseudo-headers and connection-specific lines out)."""
    while not hasattr(sink, "protocol"):  # the filter chain, ResponseEdits: inward
        sink = sink.inner
    trailers = getattr(sink, "request_trailers", None)
    return trailer_block(trailers) if trailers else None


def _take(up: UpStream) -> tuple[list, int]:
    pieces = up.data
    n = up.data_len
    up.data = []
    up.data_len = 0
    return pieces, n


class H2Exchange(H2Streaming, Exchange):
    """The router for a route whose cluster speaks HTTP/2 (see the module's
    docstring); the outcomes, stats and deadlines are :class:`Exchange`'s."""

    __slots__ = ("h2pool", "up", "h2conn")

    async def run(self) -> bool:
        stream = self.stream
        cluster = self.rp.cluster
        assert cluster is not None
        pool = self.h2pool = cluster.h2pools[self.pool.priority]
        self.pool = pool
        self.up = None
        self.h2conn = None
        cstats = pool.stats
        host = self.host
        hstats = host.stats
        host.active_requests += 1
        stream.upstream_host = host.label
        self.arm_start()
        try:
            # auto_sni / auto_san_validation: connections kept apart by the Host.
            tls = host.tls
            key = tls.key_of(self.head) if tls is not None and tls.keyed else None
            self.t_sent = self.t_done or time.monotonic()
            pieces = self.sink.take_buffered_body()
            while True:
                try:
                    conn = await pool.acquire_stream(host, key)
                except ConnectFailure as exc:
                    stream.flags = ResponseFlag.UPSTREAM_CONNECTION_FAILURE
                    cstats.count_response(503)
                    hstats.rq_error += 1
                    host.outcomes.connect_failed()
                    return await self._reply(503, RESET_BEFORE_HEADERS + exc.reason)
                except Overflow:
                    return await self._overflow()
                if not self.attached:
                    if not pool.attach():
                        pool.stream_done(conn)
                        return await self._overflow()
                    self.attached = True
                    cstats.rq_active += 1
                    hstats.rq_active += 1
                self.h2conn = conn
                try:
                    up = await self._open_stream(conn, self.head, pieces)
                except StreamGone:
                    self.h2conn = None
                    pool.stream_done(conn)
                    continue  # GOAWAY or the peer's limit meanwhile: another connection
                break
            cstats.rq_total += 1
            hstats.rq_total += 1
            self.conn = conn.uc  # (Exchange._deadline_fired reads whether it has one)
            if tls is not None:
                stream.upstream_tls = conn.sock
            if not stream.request_complete:
                return await self._duplex_h2(conn, up)
            self.arm_route()
            r = await self._response_head(conn, up)
            if r is None:
                return await self._reset_before(up)
            return await self._relay_h2(conn, up, r)
        except trio.Cancelled:
            self._deadline_fired()
            raise
        except ENDINGS as exc:
            return await self._ended_by(exc)
        finally:
            host.active_requests -= 1
            self.conn = None
            if self.attached:
                pool.requests -= 1
                cstats.rq_active -= 1
                hstats.rq_active -= 1
            await self._end_stream()
