"""The router: one request from a downstream connection to an upstream host and back.

:meth:`Exchange.run` takes a routed request whose host is already picked and whose
upstream head is already built, and

1. takes an idle pooled connection to the host, or gets one from the cluster's pool
   for the route's priority (:meth:`ConnPool.acquire`: connects, or waits in the
   pending queue beyond max_connections; a connect failure is Envoy's 503 ``UF``, a full
   queue 503 ``UO``), then attaches the request to it (the max_requests breaker of that
   priority), sends the head and whatever body bytes are already buffered;
2. streams the rest of the request body (:mod:`proxyd.worker.request_body`) in a
   second task while it waits for the response, so an upstream that answers early is
   heard and neither side can fill the other's buffers;
3. forwards the response head (edited, see :mod:`proxyd.protocol.http1_headers`) and
   streams the body through the connection's buffer with backpressure: nothing is read
   from one side before what was read has been written to the other.

A reused connection that fails before any response byte is retried once on a new
connection when the request had no body, if the max_retries (or retry_budget) breaker
allows. The route timeout (Envoy's, counted from the end of the request, also while the
request is pending) gives 504 ``UT`` before the response started, and a reset
downstream connection after. Everything here is sans-parsing: codecs live in
``proxyd.protocol``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import trio

from proxyd.errors import ProtocolError
from proxyd.protocol.http1 import (
    CRLF2,
    LAST_CHUNK,
    ChunkedDecoder,
    RequestHead,
    ResponseHead,
    chunk_header,
    response_has_body,
)
from proxyd.protocol.http1_headers import CONTINUE_100, local_reply, response_head
from proxyd.worker import io
from proxyd.worker.deadlines import INF, REQUEST, ROUTE, STREAM_IDLE
from proxyd.worker.pool import ConnectFailure, ConnPool, Overflow, UpstreamConnection
from proxyd.worker.request_body import DownstreamGone, framed, pump, send_request
from proxyd.worker.upstream import HostState

if TYPE_CHECKING:
    from proxyd.worker.downstream import DownstreamConnection
    from proxyd.worker.plan import ListenerPlan, RoutePlan

# A response body this small (and already received) goes out in one write with its head.
SMALL_BODY = 4096
RESET_BEFORE_HEADERS = "upstream connect error or disconnect/reset before headers. reset reason: "
CRLF = b"\r\n"
OVERLOADED = b"x-envoy-overloaded: true\r\n"


class UpstreamGone(Exception):
    """The upstream closed or broke the connection in the middle of a response."""


class Exchange:
    """One request forwarded upstream; ``run()`` is True when the downstream connection
    stays open."""

    __slots__ = (
        "dc",
        "plan",
        "h",
        "rp",
        "pool",
        "host",
        "head",
        "conn",
        "body_left",
        "decoder",
        "body_done",
        "body_sent",
        "pump_error",
        "t_sent",
        "request_deadline",
        "attached",
        "retrying",
    )

    def __init__(
        self,
        dc: DownstreamConnection,
        plan: ListenerPlan,
        h: RequestHead,
        rp: RoutePlan,
        host: HostState,
        head: bytes,
    ) -> None:
        self.dc = dc
        self.plan = plan
        self.h = h
        self.rp = rp
        # The route's pool (its priority's connections and circuit breakers).
        pool = rp.pool
        assert pool is not None
        self.pool: ConnPool = pool
        self.host = host
        self.head = head
        self.conn: UpstreamConnection | None = None
        self.body_left = 0
        self.decoder: ChunkedDecoder | None = None
        self.body_done = not h.has_body
        self.body_sent = False
        self.pump_error = ""
        self.t_sent = 0.0
        self.request_deadline = INF
        # Counted in upstream_rq_active (max_requests) once it has a connection; a retry
        # outstanding (max_retries) until its attempt gets a response or fails.
        self.attached = False
        self.retrying = False

    async def run(self) -> bool:
        dc = self.dc
        pool = self.pool
        cstats = pool.stats
        host = self.host
        hstats = host.stats
        host.active_requests += 1
        dc.upstream_host = host.label
        if self.body_done:
            self.arm_route()
        else:
            if self.plan.request_timeout != INF:
                self.request_deadline = time.monotonic() + self.plan.request_timeout
            dc.arm(REQUEST, min(self.plan.request_timeout, self.plan.stream_idle))
        try:
            h = self.h
            retried = False
            while True:
                # Envoy's upstream service time includes the wait for a connection.
                self.t_sent = time.monotonic()
                conn = pool.take_idle(host)
                reused = conn is not None
                if conn is None:
                    try:
                        # The request's deadline runs on while it is pending.
                        with trio.move_on_after(max(dc.deadline - self.t_sent, 0.0)):
                            conn = await pool.acquire(host)
                    except ConnectFailure as exc:
                        self.dc.flags = "UF"
                        cstats.count_response(503)
                        hstats.rq_error += 1
                        host.outcomes.connect_failed()
                        return await self._reply(503, RESET_BEFORE_HEADERS + exc.reason)
                    except Overflow:
                        return await self._overflow()
                    if conn is None:
                        dc.expired = dc.deadline_kind
                        raise trio.ClosedResourceError()
                if not self.attached:
                    if not pool.attach():
                        pool.put_back(conn)
                        return await self._overflow()
                    self.attached = True
                    cstats.rq_active += 1
                    hstats.rq_active += 1
                # Every attempt counts, as Envoy counts a retry.
                cstats.rq_total += 1
                hstats.rq_total += 1
                self.conn = conn
                self.dc.upstream_sock = conn.sock
                try:
                    if h.has_body:
                        await send_request(self, conn)
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
                    if not self.body_done:
                        return await self._duplex(conn)
                    r = await self._read_response_head(conn)
                if r is not None:
                    if self.retrying:
                        self.retrying = False
                        pool.retry_done(success=True)
                    return await self._relay(conn, r)
                # The connection died before any response byte (writing the head, or
                # closed by the upstream): a reused one is retried once on a new
                # connection when there is no body to resend.
                pool.destroy(conn)
                self.conn = None
                dc.upstream_sock = None
                if reused and not retried and not h.has_body:
                    retried = True
                    if pool.retry_allowed():
                        self.retrying = True
                        continue
                return await self._reset_before_headers("UC", "connection termination")
        except trio.ClosedResourceError:
            # The watchdog woke us: which timeout fired decides the answer.
            kind = dc.expired
            if kind == ROUTE:
                return await self._timed_out("UT", 504, "upstream request timeout")
            if kind == STREAM_IDLE:
                # Envoy: 504 once the request is complete (408 while it is not).
                return await self._timed_out("SI", 504, "stream timeout")
            if kind == REQUEST:
                self.body_done = False
                if time.monotonic() >= self.request_deadline:
                    return await self._timed_out("-", 408, "request timeout")
                return await self._timed_out("SI", 408, "stream timeout")
            dc.flags = "DC"
            return False
        except ProtocolError as exc:
            # A malformed request body (ours to answer) or response (the upstream's).
            if exc.status == 502:
                dc.flags = "UPE"
                cstats.count_response(502)
                hstats.rq_error += 1
                host.outcomes.reset()
                return await self._reply(502, RESET_BEFORE_HEADERS + "protocol error")
            dc.flags = "DPE"
            self.body_done = False
            return await self._reply(exc.status, "Bad Request")
        except DownstreamGone:
            dc.flags = "DC"
            return False
        except UpstreamGone:
            dc.flags = "UC"
            return False
        finally:
            dc.upstream_sock = None
            dc.deadline = INF
            host.active_requests -= 1
            if self.attached:
                pool.requests -= 1  # ResourceManager.detach(), inline
                cstats.rq_active -= 1
                hstats.rq_active -= 1
            if self.retrying:
                pool.retry_done(success=False)
            if self.conn is not None:
                pool.destroy(self.conn)
                self.conn = None

    def arm_route(self) -> None:
        """The request is complete: the route timeout runs from now (0 = none, and then
        only the stream idle timeout applies)."""
        timeout = self.rp.timeout_s
        if timeout:
            self.dc.arm(ROUTE, min(timeout, self.plan.stream_idle))
            if self.plan.stream_idle < timeout:
                self.dc.deadline_kind = STREAM_IDLE
        else:
            self.dc.arm(STREAM_IDLE, self.plan.stream_idle)

    # -- outcomes made here -------------------------------------------------------------

    async def _overflow(self) -> bool:
        """A circuit breaker tripped: Envoy's 503 ``UO`` with x-envoy-overloaded."""
        self.dc.flags = "UO"
        self.dc.upstream_host = None
        self.pool.stats.count_response(503)
        return await self._reply(503, RESET_BEFORE_HEADERS + "overflow", OVERLOADED)

    async def _reply(self, status: int, body: str, extra: bytes = b"") -> bool:
        dc = self.dc
        if dc.response_started:
            return False
        h = self.h
        keep = (
            h.keep_alive and self.body_done and not dc.worker.draining and not dc.listener_updated
        )
        dc.status = status
        data = local_reply(
            status,
            body,
            self.plan.server,
            close=not keep,
            head_request=h.method == "HEAD",
            extra=extra,
        )
        try:
            await io.send_all(dc.sock, data)
        except (OSError, trio.ClosedResourceError):
            return False
        dc.bytes_sent += len(data) - data.find(CRLF2) - 4
        return keep

    async def _timed_out(self, flag: str, status: int, body: str) -> bool:
        dc = self.dc
        cstats = self.pool.stats
        if flag == "UT":
            cstats.rq_timeout += 1
            if self.attached:  # not while pending: Envoy has no upstream host then
                self.host.stats.rq_timeout += 1
                self.host.stats.rq_error += 1
            if self.conn is not None and not dc.response_started:
                self.host.outcomes.timeout()  # connected, no response head yet
        dc.flags = flag
        if self.conn is not None:
            self.pool.destroy(self.conn)
            self.conn = None
        if dc.response_started:
            return False  # the client got a head already: all that is left is a reset
        if flag == "UT":
            cstats.count_response(status)
        return await self._reply(status, body)

    async def _reset_before_headers(self, flag: str, reason: str) -> bool:
        self.dc.flags = flag
        self.pool.stats.count_response(503)
        self.host.stats.rq_error += 1
        self.host.outcomes.reset()
        return await self._reply(503, RESET_BEFORE_HEADERS + reason)

    # -- the exchange -------------------------------------------------------------------

    async def _duplex(self, conn: UpstreamConnection) -> bool:
        """Stream the request body in a second task while waiting for the response."""
        dc = self.dc
        if self.h.expect_continue:
            try:
                await io.send_all(dc.sock, CONTINUE_100)
            except OSError:
                raise DownstreamGone() from None
        keep = False
        r: ResponseHead | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, self, conn, nursery.cancel_scope)
                r = await self._read_response_head(conn)
                if r is None:
                    nursery.cancel_scope.cancel()
                else:
                    keep = await self._relay(conn, r)
                    if not self.body_done:
                        # The upstream answered before the request ended: the rest of
                        # the body cannot be told from a next request, so the
                        # connection ends.
                        nursery.cancel_scope.cancel()
                        keep = False
        except BaseExceptionGroup as group:
            # Nursery errors come wrapped; the request path raises one at a time.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        error = self.pump_error
        if error == "DC":
            raise DownstreamGone()
        if error == "DPE":
            raise ProtocolError("malformed request body", 400)
        if error == "TIMEOUT":
            raise trio.ClosedResourceError()
        if r is None:
            return await self._reset_before_headers("UC", "connection termination")
        return keep

    # -- the response -------------------------------------------------------------------

    async def _read_response_head(self, conn: UpstreamConnection) -> ResponseHead | None:
        """The final response head; None when the upstream closed before sending one."""
        buf = conn.buf
        start = conn.start
        end = conn.end
        wanted = self.plan.response_wanted
        while True:
            if start < end:
                he = buf.find(CRLF2, start, end)
                if he >= 0:
                    r = conn.parser.parse(conn.view[start : he + 4], wanted)
                    start = he + 4
                    if 100 <= r.status < 200 and r.status != 101:
                        continue  # 100 Continue and other interim heads are not forwarded
                    conn.start = start
                    conn.end = end
                    if r.status == 101:
                        raise ProtocolError("unexpected 101 from upstream", 502)
                    return r
            if end == len(buf):
                if start == 0:
                    raise ProtocolError("upstream response head too large", 502)
                buf[: end - start] = buf[start:end]
                end -= start
                start = 0
            if start == end:
                # The upstream has to answer first: let the other connections run, then
                # read (under load the answer is usually there by then).
                await io.yield_now()
                if self.dc.expired:
                    raise trio.ClosedResourceError()
            try:
                n = conn.sock.recv_into(conn.view[end:])
            except BlockingIOError:
                n = await io.recv_into(conn.sock, conn.view[end:])
            except (ConnectionResetError, ConnectionAbortedError):
                n = 0
            if n == 0:
                return None
            end += n

    async def _relay(self, conn: UpstreamConnection, r: ResponseHead) -> bool:
        dc = self.dc
        h = self.h
        pool = self.pool
        status = r.status
        if status == 204 and (r.content_length > 0 or r.chunked):
            # A 204 that announces a body is refused, as Envoy's codec does.
            raise ProtocolError("204 response with a body", 502)
        service_ms = int((time.monotonic() - self.t_sent) * 1000)
        dc.service_ms = service_ms
        dc.status = status
        pool.stats.count_response(status)
        if status < 500:
            self.host.stats.rq_success += 1
        else:
            self.host.stats.rq_error += 1
        self.host.outcomes.response(status)
        if self.plan.response_wanted:
            dc.resp_headers = r.headers
        if not response_has_body(status, h.method == "HEAD"):
            mode = 0
        elif r.chunked:
            mode = 2
        elif r.content_length >= 0:
            mode = 1 if r.content_length else 0
        else:
            mode = 3  # until close, re-framed as chunked
        close = not h.keep_alive or not self.body_done or dc.worker.draining or dc.listener_updated
        out = response_head(r, self.plan.server, service_ms, mode >= 2, close)
        dsock = dc.sock
        start = conn.start
        end = conn.end
        view = conn.view
        dc.response_started = True
        try:
            if mode == 0:
                await io.send_all(dsock, out)
            elif mode == 1:
                left = r.content_length
                take = min(end - start, left)
                if take <= SMALL_BODY:
                    # One small write: copying a few KiB beats a scatter list.
                    data = out + view[start : start + take] if take else out
                    try:
                        sent = dsock.send(data)
                    except BlockingIOError:
                        sent = 0
                    if sent != len(data):
                        await io.send_all(dsock, memoryview(data)[sent:])
                else:
                    await io.send_parts(dsock, [out, view[start : start + take]])
                start += take
                left -= take
                dc.bytes_sent += take
                while left:
                    n = await self._recv_upstream(conn)
                    take = n if n < left else left
                    await io.send_all(dsock, view[:take])
                    dc.bytes_sent += take
                    left -= take
                    start = take
                    end = n
            else:
                start, end = await self._relay_chunked(conn, r, out, mode == 3)
        except OSError:
            raise DownstreamGone() from None
        conn.start = start
        conn.end = end
        self.conn = None
        pool.release(conn, r.keep_alive and mode != 3 and self.pump_error == "")
        return not close

    async def _recv_upstream(self, conn: UpstreamConnection, at: int = 0) -> int:
        n = await io.recv_into(conn.sock, conn.view[at : at + self.plan.buffer_limit])
        if n == 0:
            raise UpstreamGone()
        self._touch()
        return n

    def _touch(self) -> None:
        """Bytes moved: with no route timeout, the stream idle timer starts over."""
        dc = self.dc
        if dc.deadline_kind == STREAM_IDLE and self.plan.stream_idle != INF:
            dc.deadline = time.monotonic() + self.plan.stream_idle

    async def _relay_chunked(
        self, conn: UpstreamConnection, r: ResponseHead, out: bytes, until_close: bool
    ) -> tuple[int, int]:
        dc = self.dc
        dsock = dc.sock
        buf = conn.buf
        view = conn.view
        start = conn.start
        end = conn.end
        parts: list = [out]
        if until_close:
            if end > start:
                parts += [chunk_header(end - start), view[start:end], CRLF]
                dc.bytes_sent += end - start
            await io.send_parts(dsock, parts)
            limit = self.plan.buffer_limit
            while True:
                n = await io.recv_into(conn.sock, view[:limit])
                self._touch()
                if n == 0:
                    await io.send_all(dsock, LAST_CHUNK)
                    return 0, 0
                dc.bytes_sent += n
                await io.send_parts(dsock, [chunk_header(n), view[:n], CRLF])
        dec = ChunkedDecoder()
        try:
            while True:
                pieces, pos = dec.feed(buf, start, end)
                framed(view, pieces, parts)
                for _, k in pieces:
                    dc.bytes_sent += k
                if dec.done:
                    parts.append(LAST_CHUNK)
                if parts:
                    await io.send_parts(dsock, parts)
                    parts = []
                if dec.done:
                    return pos, end
                # Keep an unfinished chunk line, then read more behind it.
                if pos < end:
                    buf[: end - pos] = buf[pos:end]
                end -= pos
                start = 0
                if end >= len(buf):
                    raise UpstreamGone()
                end += await self._recv_upstream(conn, end)
        except ProtocolError:
            raise UpstreamGone() from None
