"""One downstream HTTP/1.1 connection: the codec and its connection manager.

:meth:`DownstreamConnection.serve` owns the connection from accept to close and never
lets an exception out: bad input gets its status (400, 426, 431, ...) and the
connection closes; an unexpected error is counted, logged once, and ends only this
connection.

For each request head it makes a :class:`~proxyd.worker.stream.Stream` and hands it to
the connection manager's steps (:mod:`proxyd.worker.manager`): route, filter chain,
router. The connection is the stream's :class:`~proxyd.worker.stream.DownstreamSink`:
it de-frames the request body (content-length or chunked) into data pieces on demand,
and frames the response (as it came, or re-chunked when its length is unknown).

Deadlines (:mod:`proxyd.worker.deadlines`): the connection has one
:class:`~proxyd.worker.deadlines.Deadline`, moved as the connection goes from idle to
reading a head to a request in flight. The request loop runs inside one cancel scope per
connection; a deadline that fires records its kind on the stream and cancels that scope,
and :meth:`DownstreamConnection.serve` then ends the stream as the kind says (408, 504,
or a quiet close) and goes on with the next request when the connection can.

The receive buffer is taken from the worker's :class:`BufferPool` when bytes are about
to arrive and given back while the connection waits idle, so an idle keep-alive
connection holds no buffer.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any, Protocol, cast

import structlog
import trio

from proxyd.errors import ProtocolError
from proxyd.protocol.h2_translate import preface_state
from proxyd.protocol.histogram import record
from proxyd.protocol.http1 import CRLF2, LAST_CHUNK, ResponseHead, chunk_header
from proxyd.protocol.http1_framing import BodyReader, ReceiveBuffer
from proxyd.protocol.http1_headers import (
    CONTINUE_100,
    REASONS,
    http_date,
    local_reply,
    response_head,
)
from proxyd.protocol.http1_request_line import (
    check_http10_request_line,
    check_request_line,
    check_request_start,
)
from proxyd.worker import accesslog_plan, io, manager
from proxyd.worker.buffers import BufferPool
from proxyd.worker.deadlines import INF, Deadline, DeadlineKind
from proxyd.worker.durations import ConnectionDurations
from proxyd.worker.h2_downstream import H2Session
from proxyd.worker.router import arm_request_phase
from proxyd.worker.stats import note_unexpected
from proxyd.worker.stream import DownstreamReset, ResponseFlag, Stream
from proxyd.worker.tls import TlsSocket
from proxyd.worker.tls import terminate as terminate_tls

if TYPE_CHECKING:
    from proxyd.protocol.h2_translate import H2Plan
    from proxyd.protocol.http1 import RequestHeadParser
    from proxyd.protocol.http1_options import Http1Format
    from proxyd.worker.deadlines import Timers
    from proxyd.worker.plan import ListenerPlan
    from proxyd.worker.stats import HttpStats, ListenerStats, NamedStats, StatsStore
    from proxyd.worker.tcp_proxy import TcpConnection, TcpListenerPlan

log = structlog.get_logger()

# Read on every request: a module constant is cheaper than the enum member (Python 3.11).
_IDLE = DeadlineKind.IDLE
CRLF = b"\r\n"
# max_stream_duration passed while a request head was arriving (Envoy's details and body).
DURATION_TIMEOUT = ProtocolError("max_duration_timeout", 408, "downstream duration timeout")


NO_BODY = BodyReader()
# _choose_h2: the connection closes (its idle timeout passed before a byte came).
_CLOSE = b"close"


class WorkerContext(Protocol):
    """What a connection uses of its worker (:class:`proxyd.worker.process.Worker`)."""

    timers: Timers
    buffers: BufferPool
    head_parser: RequestHeadParser
    stats: StatsStore
    plans: dict[str, ListenerPlan]
    connections: set[DownstreamConnection | TcpConnection]
    draining: bool

    def connection_closed(self) -> None: ...

    async def serve_tcp_chain(self, conn: DownstreamConnection, plan: TcpListenerPlan) -> None:
        """Serve ``conn``'s socket as a TCP proxy connection of ``plan`` (its chain)."""
        ...


class DownstreamConnection:
    """The HTTP/1.1 codec of one client connection, and the sink of its streams."""

    __slots__ = (
        "worker",
        "timers",
        "listener_name",
        "sock",
        "remote_ip",
        "remote",
        "local",
        "rb",
        "idle",
        "deadline",
        "scope",
        "stream",
        "plan",
        "listener_updated",
        "generation",
        "closing",
        "durations",
        "ended_by",
        # request body state of the current stream
        "body",
        "continue_sent",
        "chunked_out",
        # TLS termination: the established session (None on a plaintext connection).
        "tls",
        "tls_http_stats",
        # The HTTP/2 session when the connection speaks HTTP/2 (proxyd.worker.h2_downstream).
        "h2",
    )

    # Read by the access log (%PROTOCOL%).
    protocol = "HTTP/1.1"
    # One stream at a time: a tunnel is the socket itself (proxyd.worker.router).
    multiplexed = False

    def __init__(
        self, worker: WorkerContext, listener_name: str, sock: socket.socket, peer: tuple
    ) -> None:
        self.worker = worker
        self.timers = worker.timers
        self.listener_name = listener_name
        self.sock = sock
        self.remote_ip = peer[0]
        self.remote = f"{peer[0]}:{peer[1]}" if ":" not in peer[0] else f"[{peer[0]}]:{peer[1]}"
        self.local = ""  # asked of the socket only when the access log wants it
        buffers = worker.buffers
        self.rb = ReceiveBuffer(
            60 * 1024,
            allocate=buffers.take,
            free=buffers.give,
            check_first_line=check_request_line,
            check_line_start=check_request_start,
        )
        self.idle = False
        self.deadline = Deadline(self.deadline_passed)
        self.scope: trio.CancelScope | None = None
        self.stream: Stream | None = None
        self.plan: ListenerPlan | None = None
        # The listener's config changed since this connection was accepted: its
        # responses say "connection: close" (Envoy drains an updated listener).
        self.listener_updated = False
        self.generation: object = None  # the listener config it was accepted under
        self.closing = False
        # max_connection_duration / max_stream_duration (None: the listener has none).
        self.durations: ConnectionDurations | None = None
        self.ended_by = _IDLE  # the kind of the last deadline that fired
        self.body = NO_BODY
        self.continue_sent = False
        self.chunked_out = False
        self.tls: TlsSocket | None = None
        self.tls_http_stats: NamedStats | None = None
        self.h2: H2Session | None = None

    # -- deadlines --------------------------------------------------------------------

    def deadline_passed(self, d: Deadline) -> None:
        """A deadline of the connection's (or of its durations') fired."""
        self.ended_by = d.kind
        stream = self.stream
        if stream is not None:
            stream.timed_out = d.kind
        if self.scope is not None:
            self.scope.cancel()

    def set_deadline(self, kind: DeadlineKind, seconds: float) -> None:
        self.worker.timers.set(self.deadline, kind, seconds)

    # -- life cycle -------------------------------------------------------------------

    async def serve(self, plan: ListenerPlan) -> None:
        if plan.chooser is not None:  # a listener with several filter chains
            try:
                chosen = await plan.chooser.choose(self.sock)
            except Exception as exc:  # a bug: counted, logged once, only this connection
                note_unexpected(self.worker.stats, exc, "filter chain choice")
                chosen = None
            if chosen is None:  # no chain for it: closed before anything counted it
                io.close(self.sock)
                self.worker.connections.discard(self)
                self.worker.connection_closed()
                return
            if chosen.is_tcp:  # a TCP proxy chain: a TCP proxy connection from here on
                self.worker.connections.discard(self)
                await self.worker.serve_tcp_chain(self, cast("TcpListenerPlan", chosen))
                return
            plan = cast("ListenerPlan", chosen)
            self.listener_name = chosen.key
        lstats = plan.listener_stats
        hstats = plan.http_stats
        opened = time.monotonic()  # downstream_cx_length_ms
        lstats.cx_total += 1
        lstats.cx_active += 1
        hstats.cx_total += 1
        hstats.cx_active += 1
        worker = self.worker
        worker.connections.add(self)
        self.generation = plan.generation
        self.plan = plan
        if plan.access.connection_logs:
            accesslog_plan.connection_opened(self, plan)
        if plan.durations:
            self.durations = ConnectionDurations(self, plan)
        if plan.http1 is not None and plan.http1.accept_http_10:
            # (A listener update closes the connection after its response, so the
            # plan it was accepted under decides for all its requests.)
            self.rb.check_first_line = check_http10_request_line
        try:
            if plan.tls is not None and not await terminate_tls(self, plan.tls):
                return  # the handshake failed (the finally below logs and counts)
            if plan.network_rbac is not None and not await plan.network_rbac.admit(
                self.sock, self.tls
            ):
                return  # a network RBAC filter denied the connection
            if plan.h2 is not None:
                # HTTP/2 may come (codec_type AUTO or HTTP2): decided once, here.
                initial = await self._choose_h2(plan, plan.h2)
                if initial is not None:
                    if initial is not _CLOSE:
                        self.h2 = H2Session(self, plan, plan.h2)
                        await self.h2.serve(initial)
                    return
            # The request loop lives here rather than in a helper: every await level
            # is paid again at each wait of every request. It runs in one cancel scope
            # until a deadline cancels it; then the stream is ended and a new scope
            # carries on.
            closed = False
            while not closed:
                with trio.CancelScope() as scope:
                    self.scope = scope
                    while True:
                        # A listener that left the epoch keeps its last plan for the
                        # requests of the connections it still has; they close after
                        # their response.
                        plan = worker.plans.get(self.listener_name) or plan
                        try:
                            rb = self.rb
                            if rb.start == rb.end:
                                # Idle (the common case, inline: _read_head's first
                                # steps): the client sends once it has read our last
                                # answer; let the other connections run first, by then
                                # it often has.
                                self.idle = True
                                worker.timers.set(self.deadline, _IDLE, plan.idle_timeout)
                                await io.yield_now()
                                n = rb.receive(self.sock.recv_into)
                                if n > 0:
                                    self.idle = False
                                    rb.max_head = plan.max_head
                                    head = rb.next_head()
                                    if head is None:
                                        head = await self._read_head(plan)
                                elif n < 0:
                                    head = await self._read_head(plan, idle=True)
                                else:
                                    head = None
                            else:
                                head = await self._read_head(plan)
                            if head is None:
                                closed = True
                                break
                            # The head is here: the request belongs to the epoch in
                            # place now.
                            current = worker.plans.get(self.listener_name)
                            if current is not None:
                                plan = current
                            if current is None or current.generation is not self.generation:
                                # Updated or removed since the connection was accepted:
                                # this response says "connection: close" (Envoy drains
                                # the listener).
                                self.listener_updated = True
                            self.plan = plan
                            h = worker.head_parser.parse(
                                head, plan.request_wanted, plan.max_headers, plan.http1
                            )
                        except ProtocolError as exc:
                            await self._reject(plan, exc)
                            closed = True
                            break
                        stream = Stream(h, self)
                        self.stream = stream
                        if self.durations is not None:
                            self.durations.stream_started()
                        self.body = (
                            BodyReader(h.content_length, h.chunked) if h.has_body else NO_BODY
                        )
                        self.continue_sent = False
                        self.chunked_out = False
                        keep = await manager.handle(stream, plan, self)
                        manager.finish(stream, plan, self)
                        self.stream = None
                        if self.durations is not None:
                            self.durations.stream_ended()
                        # An idle connection keeps nothing of the request it served
                        # (this frame's locals live while it waits for the next one).
                        del stream, h, head
                        if not keep or self.closing:
                            closed = True
                            break
                        if self.rb.end != self.rb.start:
                            # A pipelined request is already here: let other tasks run
                            # first.
                            await io.checkpoint()
                self.scope = None
                if scope.cancelled_caught:
                    # A deadline fired: end what it belongs to, then go on if we may.
                    closed = not await self._after_deadline()
                    plan = self.plan or plan
        except Exception as exc:  # a bug: counted, logged once, only this connection ends
            note_unexpected(worker.stats, exc, "downstream connection")
        finally:
            if accesslog_plan.OPEN:
                accesslog_plan.connection_closed(self)
            self._closed(lstats, hstats, opened)

    def _closed(self, lstats: ListenerStats, hstats: HttpStats, opened: float) -> None:
        worker = self.worker
        worker.timers.clear(self.deadline)
        if self.durations is not None:
            self.durations.close()
        worker.connections.discard(self)
        io.close(self.sock)
        self.rb.start = self.rb.end
        self.rb.release()
        lstats.cx_active -= 1
        hstats.cx_active -= 1
        hstats.cx_destroy += 1
        length_ms = int((time.monotonic() - opened) * 1000)
        record(lstats.h_cx_length_ms, length_ms)
        record(hstats.h_cx_length_ms, length_ms)
        if self.tls_http_stats is not None:
            self.tls_http_stats.gauge_add("downstream_cx_ssl_active", -1)
        worker.connection_closed()

    async def _after_deadline(self) -> bool:
        """The connection's deadline fired; True when the connection goes on."""
        stream = self.stream
        kind = self.ended_by
        plan = self.plan
        assert plan is not None
        if stream is None:
            if kind is DeadlineKind.REQUEST_HEADERS or kind is DeadlineKind.REQUEST:
                plan.http_stats.rq_timeout += 1
                await self._reject(plan, ProtocolError("request header timeout", 408))
            elif kind is DeadlineKind.STREAM_DURATION:  # a head was still arriving
                await self._reject(plan, DURATION_TIMEOUT)
            return False  # idle_timeout or drain: close quietly, as Envoy does
        keep = await manager.finish_after_deadline(stream, plan, self)
        self.stream = None
        if self.durations is not None:
            self.durations.stream_ended()
        return keep and not self.closing

    # -- HTTP/2 -------------------------------------------------------------------------

    async def _choose_h2(self, plan: ListenerPlan, h2plan: H2Plan) -> bytes | None:
        """The bytes that start an HTTP/2 connection (``b""``: none yet), None when it
        is HTTP/1.1 (what arrived stays in the receive buffer), or ``_CLOSE`` when the
        idle timeout passed before anything came. codec_type HTTP2 is HTTP/2 always;
        AUTO is HTTP/2 when TLS chose ``h2`` by ALPN, or on plaintext when the client
        starts with the HTTP/2 preface (prior knowledge)."""
        if h2plan.prior_knowledge:
            return b""
        if self.tls is not None:
            return b"" if self.tls.alpn == "h2" else None
        rb = self.rb
        sock = self.sock
        # The client's first bytes are usually on their way: let others run first, and
        # when they are here decide without arming anything.
        await io.yield_now()
        n = rb.receive(sock.recv_into)
        state = preface_state(rb.view[rb.start : rb.end]) if n > 0 else None
        if state is None and n != 0:
            with trio.CancelScope() as scope:
                self.scope = scope
                self.idle = True
                self.set_deadline(_IDLE, plan.idle_timeout)
                while True:
                    n = rb.receive(sock.recv_into)
                    if n < 0:
                        await io.wait_readable(sock)
                        continue
                    if n == 0:
                        break  # closed: the request loop sees the end of stream too
                    state = preface_state(rb.view[rb.start : rb.end])
                    if state is not None:
                        break
            self.scope = None
            self.idle = False
            if scope.cancelled_caught:
                return _CLOSE
        if not state:
            return None
        initial = bytes(rb.view[rb.start : rb.end])
        rb.start = rb.end
        rb.release()
        self.worker.timers.clear(self.deadline)
        return initial

    # -- request head -------------------------------------------------------------------

    async def _read_head(self, plan: ListenerPlan, idle: bool = False) -> memoryview | None:
        """Wait for a complete head (the view is valid until the next read), or None
        when the connection should close. ``idle``: the connection is idle, its idle
        deadline set, and a read after the first yield found nothing (serve's inline
        start)."""
        rb = self.rb
        rb.max_head = plan.max_head
        sock = self.sock
        recv = sock.recv_into
        timers = self.worker.timers
        head_armed = False
        waited = False
        if idle:
            # Idle for real: the buffer goes back until bytes arrive.
            rb.release()
            await io.wait_readable(sock)
            waited = True
        while True:
            if rb.start != rb.end:
                head = rb.next_head()
                if head is not None:
                    return head
            if rb.start != rb.end:
                # Part of a head (next_head skipped any empty lines before it).
                if not head_armed:
                    head_armed = True
                    if self.durations is not None:
                        self.durations.head_started()
                    timers.set(
                        self.deadline,
                        DeadlineKind.REQUEST_HEADERS,
                        min(plan.headers_timeout, plan.request_timeout),
                    )
                n = rb.receive(recv)
                if n < 0:
                    await io.wait_readable(sock)
                    continue
            else:
                if not waited:
                    self.idle = True
                    timers.set(self.deadline, _IDLE, plan.idle_timeout)
                    # Nothing yet: the client sends once it has read our last answer.
                    # Let the other connections run first; by then it often has.
                    await io.yield_now()
                n = rb.receive(recv)
                if n < 0:
                    # Idle for real: the buffer goes back until bytes arrive.
                    rb.release()
                    await io.wait_readable(sock)
                    waited = True
                    continue
                self.idle = False
                waited = False
            if n == 0:
                return None  # closed (or reset) before a complete head: nothing to answer

    async def _reject(self, plan: ListenerPlan, exc: ProtocolError) -> None:
        """Answer a request that could not be parsed, log it, and let the caller close."""
        status = exc.status
        stats = plan.http_stats
        stats.rq_total += 1
        stats.by_class[status // 100] += 1
        if status == 400 or status == 501:
            stats.cx_protocol_error += 1
        # Envoy's codec errors answer with the reason phrase as the body, unless the
        # error says otherwise (a missing Host, a fragment: an empty body).
        if exc.body is not None:
            body = exc.body
        elif status == 408:
            body = exc.reason
        elif exc.reason == "missing host":
            body = ""
        else:
            body = REASONS.get(status, "")
        stream = Stream(None, self)
        stream.status = status
        stream.details = exc.reason
        if status in (400, 426, 431, 501):
            stream.flags = ResponseFlag.DOWNSTREAM_PROTOCOL_ERROR
        self.closing = True
        t_wall, t0 = manager.clock_now(plan)
        data = local_reply(status, body, plan.reject_headers, close=True)
        if plan.http1 is not None:
            data = plan.http1.downstream_head(data, exc.http10, False)
        try:
            await io.send_all(self.sock, data)
            stream.bytes_sent += len(data) - data.find(CRLF2) - 4
        except (OSError, trio.ClosedResourceError):
            pass  # the client is gone; nothing left to tell it
        if plan.logs:
            stream.t_wall, stream.t0 = t_wall, t0
            manager.write_log(stream, plan, self)

    # -- the sink: request body ---------------------------------------------------------

    def take_buffered_body(self) -> list[memoryview]:
        stream = self.stream
        assert stream is not None
        if stream.request_complete:
            return []
        body = self.body
        pieces = body.read(self.rb)
        for p in pieces:
            stream.bytes_received += len(p)
        if body.done:
            stream.request_complete = True
        return pieces

    async def recv_body(self) -> list[memoryview]:
        stream = self.stream
        assert stream is not None
        if stream.request_complete:
            return []
        plan = self.plan
        assert plan is not None
        body = self.body
        rb = self.rb
        limit = plan.buffer_limit
        while True:
            # Never more in flight than the listener's per_connection_buffer_limit_bytes.
            room = rb.space(min(limit, body.left) if body.decoder is None else limit)
            n = await io.recv_into(self.sock, room)
            if n == 0:
                raise DownstreamReset()
            rb.commit(n)
            rp = stream.route_plan
            idle = plan.stream_idle if rp is None else rp.stream_idle
            if idle != INF and not stream.request_complete:
                # Activity: the stream idle timer starts over (request_timeout does not).
                arm_request_phase(stream, idle, self.worker.timers, self.deadline)
            pieces = body.read(rb)
            for p in pieces:
                stream.bytes_received += len(p)
            if body.done:
                stream.request_complete = True
            if pieces or body.done:
                return pieces

    async def send_continue(self) -> None:
        if self.continue_sent:
            return
        self.continue_sent = True
        try:
            await io.send_all(self.sock, CONTINUE_100)
        except OSError:
            raise DownstreamReset() from None

    # -- the sink: response -------------------------------------------------------------

    def wants_close(self) -> bool:
        stream = self.stream
        h = stream.head if stream is not None else None
        return (
            h is None
            or not h.keep_alive
            or (stream is not None and (not stream.request_complete or stream.close_connection))
            or self.worker.draining
            or self.listener_updated
        )

    async def send_headers(
        self, r: ResponseHead, service_ms: int, length: int, first: list, end_stream: bool
    ) -> None:
        stream = self.stream
        plan = self.plan
        assert stream is not None and plan is not None
        h = stream.head
        # (wants_close, inline)
        close = (
            h is None
            or not h.keep_alive
            or not stream.request_complete
            or stream.close_connection
            or self.worker.draining
            or self.listener_updated
        )
        chunked = length < 0
        http1 = plan.http1
        if http1 is not None:
            return await self._send_headers_http1(
                http1, r, service_ms, close, chunked, first, end_stream
            )
        # (_start_response, inline)
        if close:
            self.closing = True
        self.chunked_out = chunked
        rp = stream.route_plan
        if rp is not None and rp.mutations is not None:
            r, service_ms = rp.mutations.on_response(r, stream, self, service_ms)
        stream.response_started = True
        server = plan.server
        try:
            if not first:
                out = response_head(r, server, service_ms, chunked, close, stream.response_added)
                if chunked and end_stream:
                    out += LAST_CHUNK
                await io.send_all(self.sock, out)
                return
            if not chunked and len(first) == 1 and len(first[0]) <= SMALL_BODY:
                # One small write: copying a few KiB beats a scatter list.
                piece = first[0]
                stream.bytes_sent += len(piece)
                data = response_head(
                    r, server, service_ms, False, close, stream.response_added, piece
                )
                try:
                    sent = self.sock.send(data)
                except BlockingIOError:
                    sent = 0
                if sent != len(data):
                    await io.send_all(self.sock, memoryview(data)[sent:])
                return
            parts: list = [
                response_head(r, server, service_ms, chunked, close, stream.response_added)
            ]
            self._frame(first, end_stream, parts)
            await io.send_parts(self.sock, parts)
        except OSError:
            raise DownstreamReset() from None

    def _start_response(
        self, stream: Stream, r: ResponseHead, service_ms: int, close: bool, chunked: bool
    ) -> tuple[ResponseHead, int]:
        """The response is going out: how it is framed and whether the connection ends
        after it, and the route's response header mutations applied."""
        if close:
            self.closing = True
        self.chunked_out = chunked
        rp = stream.route_plan
        if rp is not None and rp.mutations is not None:
            r, service_ms = rp.mutations.on_response(r, stream, self, service_ms)
        stream.response_started = True
        return r, service_ms

    async def _send_headers_http1(
        self,
        http1: Http1Format,
        r: ResponseHead,
        service_ms: int,
        close: bool,
        chunked: bool,
        first: list,
        end_stream: bool,
    ) -> None:
        """:meth:`send_headers` on a listener with http_protocol_options."""
        stream = self.stream
        assert stream is not None and self.plan is not None and stream.head is not None
        http10 = stream.head.http10
        if http10 and chunked:
            # HTTP/1.0 has no chunked framing: the body ends with the connection.
            chunked = False
            close = True
        r, service_ms = self._start_response(stream, r, service_ms, close, chunked)
        out = response_head(r, self.plan.server, service_ms, chunked, close, stream.response_added)
        # A cluster with preserve_case writes its responses' names (Envoy's response
        # carries the cluster's formatter, which wins over the listener's format).
        rp = stream.route_plan
        preserved = (
            rp is not None
            and rp.cluster is not None
            and rp.cluster.cluster.header_key_format == "preserve_case"
        )
        parts: list = [http1.downstream_head(out, http10, not close, proper=not preserved)]
        if first:
            self._frame(first, end_stream, parts)
        elif chunked and end_stream:
            parts.append(LAST_CHUNK)
        try:
            await io.send_parts(self.sock, parts)
        except OSError:
            raise DownstreamReset() from None

    async def send_data(self, parts: list, end_stream: bool) -> None:
        out: list = []
        self._frame(parts, end_stream, out)
        if not out:
            return
        try:
            if len(out) == 1:
                await io.send_all(self.sock, out[0])
            else:
                await io.send_parts(self.sock, out)
        except OSError:
            raise DownstreamReset() from None

    def _frame(self, parts: list, end_stream: bool, out: list) -> None:
        stream = self.stream
        assert stream is not None
        if self.chunked_out:
            for p in parts:
                n = len(p)
                if n:
                    stream.bytes_sent += n
                    out.append(chunk_header(n))
                    out.append(p)
                    out.append(CRLF)
            if end_stream:
                out.append(LAST_CHUNK)
        else:
            for p in parts:
                stream.bytes_sent += len(p)
                out.append(p)

    # -- an upgraded connection (websocket): proxyd.worker.router.Exchange._tunnel --------

    async def send_upgrade_response(self, r: ResponseHead, service_ms: int, upgrade: str) -> None:
        """The upstream's 101, with its connection and upgrade lines (which a response
        head otherwise loses as hop-by-hop)."""
        stream = self.stream
        assert stream is not None and self.plan is not None
        r, service_ms = self._start_response(stream, r, service_ms, False, False)
        self.closing = True  # no request follows a tunnel on this connection
        added = list(stream.response_added or ())
        if upgrade != "connect":  # (a CONNECT's 2xx has no upgrade lines)
            added.append(b"connection: upgrade\r\nupgrade: " + upgrade.encode("latin-1") + b"\r\n")
        out = response_head(r, self.plan.server, service_ms, False, False, added)
        try:
            await io.send_all(self.sock, out)
        except OSError:
            raise DownstreamReset() from None

    async def send_connect_established(self) -> None:
        """The 200 of a CONNECT proxyd terminates, as Envoy writes it."""
        stream = self.stream
        assert stream is not None and self.plan is not None
        stream.response_started = True
        self.closing = True
        head = b"HTTP/1.1 200 OK\r\n" + self.plan.server + b"date: " + http_date() + b"\r\n\r\n"
        try:
            await io.send_all(self.sock, head)
        except OSError:
            raise DownstreamReset() from None

    def tunnel_socket(self) -> Any:
        return self.sock

    def tunnel_buffered(self) -> bytes:
        """What the client sent after the upgrade request's head (already read)."""
        rb = self.rb
        data = bytes(rb.view[rb.start : rb.end])
        rb.start = rb.end
        return data

    async def send_local_reply(
        self, status: int, body: str | bytes, extra: bytes = b"", chunked: bool = False
    ) -> None:
        stream = self.stream
        assert stream is not None and self.plan is not None
        if stream.response_started:
            raise DownstreamReset()  # a head went out already: all that is left is a reset
        close = self.wants_close()
        h = stream.head
        http1 = self.plan.http1
        if http1 is not None and h is not None and h.http10:
            close = True  # Envoy closes after a local reply to HTTP/1.0, keep-alive or not
        if close:
            self.closing = True
        stream.status = status
        stream.response_started = True
        if stream.response_added:
            extra += b"".join(stream.response_added)
        data = local_reply(
            status,
            body,
            self.plan.server,
            close=close,
            head_request=h is not None and h.method == "HEAD",
            extra=extra,
            chunked=chunked and not (h is not None and h.http10),
        )
        rp = stream.route_plan
        if rp is not None and rp.mutations is not None:
            data = rp.mutations.on_local_reply(data, stream, self)
        if http1 is not None and h is not None:
            data = http1.downstream_head(data, h.http10, not close)
        try:
            await io.send_all(self.sock, data)
        except (OSError, trio.ClosedResourceError):
            self.closing = True
            raise DownstreamReset() from None
        if not (h is not None and h.method == "HEAD"):
            stream.bytes_sent += len(data) - data.find(CRLF2) - 4

    def local_address(self) -> str:
        if not self.local:
            try:
                local = self.sock.getsockname()
                self.local = f"{local[0]}:{local[1]}"
            except OSError:
                self.local = "-"
        return self.local


# A response body this small (and already received) goes out in one write with its head.
SMALL_BODY = 4096
