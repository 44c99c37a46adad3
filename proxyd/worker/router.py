"""The router, the terminal filter: one stream to an upstream host and back.

:meth:`Exchange.run` takes a routed stream whose host is already picked and whose
upstream head is already built, and

1. takes an idle pooled connection to the host, or gets one from the cluster's pool
   for the route's priority (:meth:`ConnPool.acquire`: connects, or waits in the
   pending queue beyond max_connections; a connect failure is Envoy's 503 ``UF``, a full
   queue 503 ``UO``), then attaches the request to it (the max_requests breaker of that
   priority), sends the head and the request body pieces the stream already has;
2. streams the rest of the request body (pieces from the stream's sink, framed for the
   upstream) in a second task while it waits for the response, so an upstream that
   answers early is heard and neither side can fill the other's buffers;
3. hands the response head and body pieces to the stream's sink with backpressure:
   nothing more is read from the upstream before what was read has been written.

The router never touches the downstream connection: it works on the stream's
:class:`~proxyd.worker.stream.DownstreamSink`, so it cannot tell the HTTP/1 codec from
the filter chain or an HTTP/2 stream.

A reused connection that fails before any response byte is retried once on a new
connection when the request had no body, if the max_retries (or retry_budget) breaker
allows. Deadlines are the stream's (:mod:`proxyd.worker.deadlines`): the route timeout
(Envoy's, counted from the end of the request, also while the request is pending) is
armed here; when one fires, the stream's cancel scope ends the exchange wherever it
waits, :meth:`Exchange._deadline_fired` does the upstream side's bookkeeping, and the
connection manager answers the client.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any

import trio

from proxyd.errors import ProtocolError
from proxyd.protocol.header_sizes import request_map_size, response_map_size
from proxyd.protocol.histogram import record
from proxyd.protocol.http1 import LAST_CHUNK, ResponseHead, chunk_header
from proxyd.protocol.http1_framing import BodyReader
from proxyd.worker import io
from proxyd.worker.deadlines import INF, Deadline, DeadlineKind, Timers
from proxyd.worker.outcomes import NO_LOG
from proxyd.worker.pool import ConnectFailure, ConnPool, Overflow, UpstreamConnection
from proxyd.worker.stream import (
    BodyMode,
    DownstreamReset,
    LocalReplied,
    ResponseFlag,
    Stream,
    UpstreamProtocolError,
    UpstreamReset,
)
from proxyd.worker.upstream import HostState

if TYPE_CHECKING:
    from proxyd.worker.plan import ListenerPlan, RoutePlan

RESET_BEFORE_HEADERS = "upstream connect error or disconnect/reset before headers. reset reason: "

# Enum members read on every request, as module constants: under Python 3.11 reading
# ``BodyMode.NONE`` costs several times a global's lookup.
_NO_BODY = BodyMode.NONE
_LENGTH = BodyMode.LENGTH
_CHUNKED = BodyMode.CHUNKED
_UNTIL_CLOSE = BodyMode.UNTIL_CLOSE
_ROUTE = DeadlineKind.ROUTE
_STREAM_IDLE = DeadlineKind.STREAM_IDLE
CRLF = b"\r\n"
OVERLOADED = b"x-envoy-overloaded: true\r\n"


# What ends an exchange without an upstream response to relay (Exchange._ended_by).
ENDINGS = (UpstreamProtocolError, ProtocolError, DownstreamReset, UpstreamReset, LocalReplied)
# Flags an attempt set that an upstream reset does not replace (a per-try timeout, an
# HTTP/2 stream the upstream reset).
KEPT_ON_RESET = (ResponseFlag.UPSTREAM_REQUEST_TIMEOUT, ResponseFlag.UPSTREAM_REMOTE_RESET)


class PumpEnd(enum.Enum):
    """How the request body pump stopped early."""

    DOWNSTREAM_RESET = "downstream reset"
    BAD_REQUEST_BODY = "bad request body"
    UPSTREAM_STOPPED_READING = "upstream stopped reading"


def arm_request_phase(stream: Stream, stream_idle: float, timers: Timers, d: Deadline) -> None:
    """The request body is still arriving: request_timeout (from the start of the
    request) or the stream idle timeout (``stream_idle``: the route's idle_timeout, else
    the connection manager's; from the last activity), whichever is first."""
    idle_at = timers.now() + stream_idle if stream_idle != INF else INF
    req_at = stream.request_deadline
    if req_at <= idle_at:
        timers.set_at(d, DeadlineKind.REQUEST, req_at)
    else:
        timers.set_at(d, DeadlineKind.STREAM_IDLE, idle_at)


def frame_request(parts: list, pieces: list, chunked: bool, last: bool) -> None:
    """Request body pieces as the upstream gets them (chunked: re-framed)."""
    if chunked:
        for p in pieces:
            n = len(p)
            if n:
                parts.append(chunk_header(n))
                parts.append(p)
                parts.append(CRLF)
        if last:
            parts.append(LAST_CHUNK)
    else:
        parts.extend(pieces)


class Exchange:
    """One stream forwarded upstream; ``run()`` is False when the downstream connection
    cannot carry another request."""

    __slots__ = (
        "stream",
        "sink",
        "plan",
        "rp",
        "pool",
        "host",
        "head",
        "conn",
        "timers",
        "deadline",
        "pump_end",
        "pump_error",
        "t_sent",
        "t_done",
        "attached",
        "retrying",
        "chunked_up",
    )

    def __init__(
        self,
        stream: Stream,
        plan: ListenerPlan,
        rp: RoutePlan,
        host: HostState,
        head: bytes,
        deadline: tuple[Timers, Deadline],
    ) -> None:
        self.stream = stream
        self.sink = stream.sink
        self.plan = plan
        self.rp = rp
        # The route's pool (its priority's connections and circuit breakers).
        pool = rp.pool
        assert pool is not None
        self.pool: ConnPool = pool
        self.host = host
        self.head = head
        self.conn: UpstreamConnection | None = None
        self.timers, self.deadline = deadline
        self.pump_end: PumpEnd | None = None
        self.pump_error: ProtocolError | None = None
        self.t_sent = 0.0
        self.t_done = 0.0  # when the request was complete (upstream_rq_time's start)
        # Counted in upstream_rq_active (max_requests) once it has a connection; a retry
        # outstanding (max_retries) until its attempt gets a response or fails.
        self.attached = False
        self.retrying = False
        h = stream.head
        assert h is not None
        self.chunked_up = h.chunked

    async def run(self) -> bool:
        stream = self.stream
        pool = self.pool
        cstats = pool.stats
        host = self.host
        hstats = host.stats
        host.active_requests += 1
        stream.upstream_host = host.label
        h = stream.head
        assert h is not None
        has_body = h.has_body
        if stream.request_complete:  # (arm_start's common case)
            self.arm_route()
        else:
            self.arm_start()
        try:
            retried = False
            # A TLS cluster: auto_sni / auto_san_validation key its connections by the
            # request's Host; the access log reads the session.
            tls = host.tls
            key = tls.key_of(self.head) if tls is not None and tls.keyed else None
            # A complete request goes out now: arm_route's clock reading serves (0: the
            # request is still arriving).
            t_sent = self.t_done
            while True:
                # Envoy's upstream service time includes the wait for a connection.
                self.t_sent = t_sent or time.monotonic()
                t_sent = 0.0
                if h.upgrade and h.upgrade == "connect" and self.rp.connect_terminate:
                    conn = None  # a terminated CONNECT gets a connection of its own
                else:
                    conn = pool.take_idle(host, key, self.t_sent)
                reused = conn is not None
                if conn is None:
                    try:
                        conn = await pool.acquire(host, key)
                    except ConnectFailure as exc:
                        stream.flags = ResponseFlag.UPSTREAM_CONNECTION_FAILURE
                        cstats.count_response(503)
                        hstats.rq_error += 1
                        host.outcomes.connect_failed()
                        return await self._reply(503, RESET_BEFORE_HEADERS + exc.reason)
                    except Overflow:
                        return await self._overflow()
                if not self.attached:
                    # (pool.attach(), inline: max_requests of the route's priority)
                    if pool.requests >= pool.cb_max_requests:
                        pool.counters.rq_active_overflow += 1
                        pool.put_back(conn)
                        return await self._overflow()
                    pool.requests += 1
                    self.attached = True
                    cstats.rq_active += 1
                    hstats.rq_active += 1
                # Every attempt counts, as Envoy counts a retry.
                cstats.rq_total += 1
                hstats.rq_total += 1
                self.conn = conn
                if h.upgrade and h.upgrade == "connect" and self.rp.connect_terminate:
                    return await self._connect_terminated(conn)
                if tls is not None:
                    stream.upstream_tls = conn.sock
                r: ResponseHead | None
                try:
                    if has_body:
                        await self._send_request_start(conn)
                    else:
                        head = self.head
                        try:
                            sent = conn.sock.send(head)
                        except BlockingIOError:
                            sent = 0
                        if sent != len(head):
                            await io.send_all(conn.sock, memoryview(head)[sent:])
                except OSError:
                    r = None
                else:
                    if not stream.request_complete:
                        return await self._duplex(conn)
                    r = await self._read_response_head(conn)
                if r is not None:
                    if self.retrying:
                        self.retrying = False
                        pool.retry_done(success=True)
                    if r.status == 101 or (h.upgrade == "connect" and 200 <= r.status < 300):
                        return await self._tunnel(conn, r)
                    return await self._relay(conn, r)
                # The connection died before any response byte (writing the head, or
                # closed by the upstream): a reused one is retried once on a new
                # connection when there is no body to resend.
                pool.destroy(conn)
                self.conn = None
                if reused and not retried and not has_body:
                    retried = True
                    if pool.retry_allowed():
                        self.retrying = True
                        continue
                return await self._reset_before_headers("connection termination")
        except trio.Cancelled:
            self._deadline_fired()
            raise
        except ENDINGS as exc:
            return await self._ended_by(exc)
        finally:
            host.active_requests -= 1
            if cstats.tracked and self.t_sent and "budgets" in cstats.tracked:
                record_try_budget(self, time.monotonic())  # an attempt that failed
            if self.attached:
                pool.requests -= 1  # ResourceManager.detach(), inline
                cstats.rq_active -= 1
                hstats.rq_active -= 1
            if self.retrying:
                pool.retry_done(success=False)
            if self.conn is not None:
                pool.destroy(self.conn)
                self.conn = None

    async def _ended_by(self, exc: Exception) -> bool:
        """An exchange (any of the routers': plain, retrying, hedging, HTTP/2) ended by
        one of ENDINGS: Envoy's response flag, and the reply when one is still owed."""
        stream = self.stream
        if isinstance(exc, UpstreamProtocolError):
            stream.flags = ResponseFlag.UPSTREAM_PROTOCOL_ERROR
            self.pool.stats.count_response(502)
            self.host.stats.rq_error += 1
            self.host.outcomes.reset()
            return await self._reply(502, RESET_BEFORE_HEADERS + "protocol error")
        if isinstance(exc, ProtocolError):  # a malformed request body: ours to answer
            stream.flags = ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR
            return await self._reply(exc.status, "Bad Request")
        if isinstance(exc, DownstreamReset):
            stream.flags = ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION
        elif isinstance(exc, UpstreamReset) and stream.flags not in KEPT_ON_RESET:
            stream.flags = ResponseFlag.UPSTREAM_CONNECTION_TERMINATION
        return False  # (LocalReplied: a filter answered, its reply went out already)

    def arm_start(self) -> None:
        """The stream's first deadline: the route timeout when the request is all here,
        else the request phase's (request_timeout, stream idle)."""
        stream = self.stream
        if stream.request_complete:
            self.arm_route()
        else:
            if self.plan.request_timeout != INF:
                stream.request_deadline = self.timers.now() + self.plan.request_timeout
            arm_request_phase(stream, self.rp.stream_idle, self.timers, self.deadline)

    def arm_route(self) -> None:
        """The request is complete: the route timeout runs from now (0 = none, and then
        only the stream idle timeout applies)."""
        self.t_done = time.monotonic()
        timeout = self.rp.timeout_s
        stream_idle = self.rp.stream_idle
        if timeout and timeout <= stream_idle:
            self.timers.set(self.deadline, _ROUTE, timeout)
        else:
            self.timers.set(self.deadline, _STREAM_IDLE, stream_idle)

    def _deadline_fired(self) -> None:
        """A deadline ended the exchange: the upstream side's stats and outcomes."""
        stream = self.stream
        if stream.timed_out is DeadlineKind.ROUTE:
            cstats = self.pool.stats
            cstats.rq_timeout += 1
            if self.attached:  # not while pending: Envoy has no upstream host then
                self.host.stats.rq_timeout += 1
                self.host.stats.rq_error += 1
            if self.conn is not None and not stream.response_started:
                self.host.outcomes.timeout()  # connected, no response head yet
            if not stream.response_started:
                cstats.count_response(504)
            if "budgets" in cstats.tracked:
                record_budget(self, time.monotonic())

    # -- outcomes made here -------------------------------------------------------------

    async def _overflow(self) -> bool:
        """A circuit breaker tripped: Envoy's 503 ``UO`` with x-envoy-overloaded."""
        self.stream.flags = ResponseFlag.UPSTREAM_OVERFLOW
        self.stream.upstream_host = None
        self.pool.stats.count_response(503)
        return await self._reply(503, RESET_BEFORE_HEADERS + "overflow", OVERLOADED)

    async def _reply(self, status: int, body: str, extra: bytes = b"") -> bool:
        if self.stream.response_started:
            return False
        try:
            await self.sink.send_local_reply(status, body, extra)
        except DownstreamReset:
            return False
        return True

    async def _reset_before_headers(self, reason: str) -> bool:
        self.stream.flags = ResponseFlag.UPSTREAM_CONNECTION_TERMINATION
        self.pool.stats.count_response(503)
        self.host.stats.rq_error += 1
        self.host.outcomes.reset()
        return await self._reply(503, RESET_BEFORE_HEADERS + reason)

    # -- the request --------------------------------------------------------------------

    async def _send_request_start(self, conn: UpstreamConnection) -> None:
        """The head and the body pieces the stream already has, in one write."""
        stream = self.stream
        pieces = self.sink.take_buffered_body()
        if not pieces and not stream.request_complete:
            await io.send_all(conn.sock, self.head)
            return
        parts: list = [self.head]
        frame_request(parts, pieces, self.chunked_up, stream.request_complete)
        await io.send_parts(conn.sock, parts)
        if stream.request_complete:
            self.arm_route()

    async def _pump(self, conn: UpstreamConnection, cancel: trio.CancelScope) -> None:
        """The rest of the request body, from the sink to the upstream."""
        stream = self.stream
        sink = self.sink
        usock = conn.sock
        chunked = self.chunked_up
        try:
            while not stream.request_complete:
                pieces = await sink.recv_body()
                parts: list = []
                frame_request(parts, pieces, chunked, stream.request_complete)
                if parts:
                    await io.send_parts(usock, parts)
        except DownstreamReset:
            self.pump_end = PumpEnd.DOWNSTREAM_RESET
            cancel.cancel()
            return
        except ProtocolError as exc:
            self.pump_end = PumpEnd.BAD_REQUEST_BODY
            self.pump_error = exc
            cancel.cancel()
            return
        except OSError:
            # The upstream stopped reading; its response (or its close) tells the rest.
            self.pump_end = PumpEnd.UPSTREAM_STOPPED_READING
            return
        self.arm_route()

    async def _duplex(self, conn: UpstreamConnection) -> bool:
        """Stream the request body in a second task while waiting for the response."""
        h = self.stream.head
        assert h is not None
        if h.expect_continue:
            await self.sink.send_continue()
        keep = False
        r: ResponseHead | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, conn, nursery.cancel_scope)
                r = await self._read_response_head(conn)
                if r is None:
                    nursery.cancel_scope.cancel()
                else:
                    keep = await self._relay(conn, r)
                    if not self.stream.request_complete:
                        # The upstream answered before the request ended: the rest of
                        # the body cannot be told from a next request, so the
                        # connection ends (the sink said "connection: close").
                        nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Nursery errors come wrapped; the request path raises one at a time (a
            # deadline cancels both tasks: one Cancelled goes on for the scope).
            raise group.exceptions[0] from None
        end = self.pump_end
        if end is PumpEnd.DOWNSTREAM_RESET:
            raise DownstreamReset()
        if end is PumpEnd.BAD_REQUEST_BODY:
            assert self.pump_error is not None
            raise self.pump_error
        if r is None:
            return await self._reset_before_headers("connection termination")
        return keep

    # -- the response -------------------------------------------------------------------

    async def _read_response_head(self, conn: UpstreamConnection) -> ResponseHead | None:
        """The final response head; None when the upstream closed before sending one."""
        rb = conn.rb
        wanted = self.plan.response_wanted
        recv = conn.sock.recv_into
        waited = False
        while True:
            if rb.start != rb.end:
                try:
                    head = rb.next_head()
                except ProtocolError as exc:
                    raise UpstreamProtocolError(exc.reason) from None
                if head is not None:
                    try:
                        r = conn.parser.parse(head, wanted)
                    except ProtocolError as exc:
                        raise UpstreamProtocolError(exc.reason) from None
                    if 100 <= r.status < 200 and r.status != 101:
                        continue  # 100 Continue and other interim heads are not forwarded
                    if r.status == 101 and not self.stream.head.upgrade:  # type: ignore[union-attr]
                        raise UpstreamProtocolError("unexpected 101 from upstream")
                    return r
            elif not waited:
                # The upstream has to answer first: let the other connections run, then
                # read (under load the answer is usually there by then).
                await io.yield_now()
            n = rb.receive(recv)
            if n < 0:
                await io.wait_readable(conn.sock)
                waited = True
                continue
            waited = False
            if n == 0:
                return None

    async def _relay(self, conn: UpstreamConnection, r: ResponseHead) -> bool:
        stream = self.stream
        sink = self.sink
        h = stream.head
        assert h is not None
        pool = self.pool
        status = r.status
        if status == 204 and (r.content_length > 0 or r.chunked):
            # A 204 that announces a body is refused, as Envoy's codec does.
            raise UpstreamProtocolError("204 response with a body")
        now = time.monotonic()  # also the response's end when the body came with the head
        service_ms = int((now - self.t_sent) * 1000)
        stream.service_ms = service_ms
        stream.status = status
        pool.stats.count_response(status)
        host = self.host
        if status < 500:
            host.stats.rq_success += 1
        else:
            host.stats.rq_error += 1
        if host.outcomes is not NO_LOG:  # outlier detection
            host.outcomes.response(status)
        if self.plan.response_wanted:
            stream.resp_headers = r.headers
        # (response_has_body, inline: HEAD, 1xx, 204 and 304 have none)
        if status < 200 or status == 204 or status == 304 or h.method == "HEAD":
            mode = _NO_BODY
        elif r.chunked:
            mode = _CHUNKED
        elif r.content_length >= 0:
            mode = _LENGTH if r.content_length else _NO_BODY
        else:
            mode = _UNTIL_CLOSE  # re-framed as chunked downstream
        rb = conn.rb
        if mode is _NO_BODY:
            await sink.send_headers(r, service_ms, 0, [], True)
        elif mode is _LENGTH and rb.end - rb.start >= r.content_length:
            # The whole body came with the head (the common small response).
            start = rb.start
            rb.start = end = start + r.content_length
            await sink.send_headers(r, service_ms, r.content_length, [rb.view[start:end]], True)
        else:
            if mode is _LENGTH:
                body = BodyReader(r.content_length)
                length = r.content_length
            else:
                body = BodyReader(chunked=mode is _CHUNKED, until_close=mode is _UNTIL_CLOSE)
                length = -1
            try:
                pieces = body.read(rb)
                await sink.send_headers(r, service_ms, length, pieces, body.done)
                limit = self.rp.read_limit  # the listener's and cluster's, the lesser
                while not body.done:
                    room = rb.space(min(limit, body.left) if mode is _LENGTH else limit)
                    n = await io.recv_into(conn.sock, room)
                    if n == 0:
                        if mode is _UNTIL_CLOSE:
                            body.end_of_stream()
                            await sink.send_data([], True)
                            break
                        raise UpstreamReset()
                    rb.commit(n)
                    self._touch()
                    pieces = body.read(rb)
                    if pieces or body.done:
                        await sink.send_data(pieces, body.done)
                now = time.monotonic()
            except ProtocolError:
                raise UpstreamReset("bad chunk framing") from None
        self.conn = None
        pool.release(
            conn,
            r.keep_alive and mode is not _UNTIL_CLOSE and self.pump_end is None,
            now,
        )
        t_done = self.t_done
        if t_done:  # Envoy times a response only when its request was complete
            cstats = pool.stats
            ms = int((now - t_done) * 1000)  # upstream_rq_time
            bins = cstats.h_rq_time
            if 0 <= ms < 100:  # histogram.record, inline for the common case
                bins[ms] = bins.get(ms, 0) + 1
            else:
                record(bins, ms)
            if cstats.tracked:
                track_cluster_stats(self, r, now)
        return True

    async def _tunnel(self, conn: UpstreamConnection, r: ResponseHead) -> bool:
        """The upstream took the upgrade (101): the client gets the 101, then bytes go
        both ways unchanged until either side closes; both connections then close (the
        upstream one is never pooled again). The route timeout ends with the 101; the
        stream idle timeout (the route's idle_timeout, else the connection manager's
        stream_idle_timeout) runs from each write."""
        stream = self.stream
        down: Any = stream.connection  # the DownstreamConnection (manager._exchange)
        assert down is not None
        service_ms = int((time.monotonic() - self.t_sent) * 1000)
        stream.service_ms = service_ms
        stream.status = 101
        self.pool.stats.count_response(101)
        self.host.stats.rq_success += 1
        self.host.outcomes.response(101)
        if self.plan.response_wanted:
            stream.resp_headers = r.headers
        h = stream.head
        assert h is not None
        # (Envoy's 2xx to a CONNECT has no x-envoy-upstream-service-time.)
        await down.send_upgrade_response(r, -1 if h.upgrade == "connect" else service_ms, h.upgrade)
        return await self._tunnel_bytes(conn, down)

    async def _connect_terminated(self, conn: UpstreamConnection) -> bool:
        """A CONNECT this route terminates (connect_config): the TCP connection to the
        host is up, so the client gets Envoy's 200 and the bytes are tunneled."""
        stream = self.stream
        down: Any = stream.connection  # the DownstreamConnection (manager._exchange)
        assert down is not None
        service_ms = int((time.monotonic() - self.t_sent) * 1000)
        stream.service_ms = service_ms
        stream.status = 200
        self.pool.stats.count_response(200)
        self.host.stats.rq_success += 1
        self.host.outcomes.response(200)
        await down.send_connect_established()
        return await self._tunnel_bytes(conn, down)

    async def _tunnel_bytes(self, conn: UpstreamConnection, down: Any) -> bool:
        """Bytes both ways between the client and ``conn`` until either side closes."""
        stream = self.stream
        stream.close_connection = True
        self.timers.set(self.deadline, _STREAM_IDLE, self.rp.stream_idle)
        rb = conn.rb
        from_upstream = bytes(rb.view[rb.start : rb.end])
        rb.start = rb.end
        if down.multiplexed:  # an HTTP/2 stream: DATA frames (proxyd.worker.h2_downstream)
            await down.tunnel(conn.sock, from_upstream, self._touch)
            return False
        try:
            async with trio.open_nursery() as nursery:
                cancel = nursery.cancel_scope
                nursery.start_soon(
                    self._copy, conn.sock, down.tunnel_socket(), from_upstream, cancel, True
                )
                nursery.start_soon(
                    self._copy,
                    down.tunnel_socket(),
                    conn.sock,
                    down.tunnel_buffered(),
                    cancel,
                    False,
                )
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        return False

    async def _copy(
        self, src: Any, dst: Any, first: bytes, cancel: trio.CancelScope, downstream: bool
    ) -> None:
        """One direction of a tunnel: ``first`` (what was read already), then what
        ``src`` sends, until it closes or either side fails; then the tunnel ends."""
        stream = self.stream
        buf = memoryview(bytearray(16384))
        try:
            if first:
                await io.send_all(dst, first)
            while True:
                n = await io.recv_into(src, buf)
                if n == 0:
                    break
                await io.send_all(dst, buf[:n])
                if downstream:
                    stream.bytes_sent += n
                else:
                    stream.bytes_received += n
                self._touch()
        except OSError:
            pass
        cancel.cancel()

    def _touch(self) -> None:
        """Bytes moved: with no route timeout, the stream idle timer starts over."""
        d = self.deadline
        if d.kind is _STREAM_IDLE and self.rp.stream_idle != INF:
            self.timers.set(d, _STREAM_IDLE, self.rp.stream_idle)


def track_cluster_stats(x: Exchange, r: ResponseHead, now: float) -> None:
    """A response completed on a cluster with ``track_cluster_stats``: its timeout
    budget use (percent of the route timeout, and of the per-try timeout, 0 when there
    is none) and the request's and response's sizes (header map sizes as Envoy counts
    them, body bytes as the stream moved them)."""
    cstats = x.pool.stats
    if "budgets" in cstats.tracked:
        record_budget(x, now)
        record_try_budget(x, now)
    if "sizes" in cstats.tracked:
        stream = x.stream
        # :scheme is the downstream's (https behind TLS termination), as Envoy keeps it
        size, count = request_map_size(x.head, tls=x.plan.tls is not None)
        record(cstats.h_rq_headers_size, size)
        record(cstats.h_rq_headers_count, count)
        record(cstats.h_rq_body_size, stream.bytes_received)
        size, count = response_map_size(r.raw)
        record(cstats.h_rs_headers_size, size)
        record(cstats.h_rs_headers_count, count)
        record(cstats.h_rs_body_size, stream.bytes_sent)


def record_budget(x: Exchange, now: float) -> None:
    """``upstream_rq_timeout_budget_percent_used``: the time since the request was
    complete, in whole percent of the route timeout (0 without one), as Envoy records it
    when a response completes or a timeout ends the request."""
    timeout_ms = int(x.rp.timeout_s * 1000)
    used_ms = int((now - x.t_done) * 1000) if x.t_done else 0
    record(x.pool.stats.h_budget, used_ms * 100 // timeout_ms if timeout_ms else 0)


def record_try_budget(x: Exchange, now: float) -> None:
    """``upstream_rq_timeout_budget_per_try_percent_used``: one attempt's time in whole
    percent of the per-try timeout (0 without one), as Envoy records it at the end of
    every attempt; ``x.t_sent`` is cleared so the attempt is recorded once."""
    per_try_ms = int(getattr(x, "per_try_s", 0.0) * 1000)
    try_ms = int((now - x.t_sent) * 1000)
    record(x.pool.stats.h_budget_per_try, try_ms * 100 // per_try_ms if per_try_ms else 0)
    x.t_sent = 0.0
