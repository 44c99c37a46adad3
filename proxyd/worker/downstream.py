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
from typing import TYPE_CHECKING

import structlog
import trio

from proxyd.errors import ProtocolError
from proxyd.protocol.http1 import (
    CRLF2,
    LAST_CHUNK,
    ChunkedDecoder,
    ResponseHead,
    chunk_header,
    find_head_end,
    skip_leading_crlf,
)
from proxyd.protocol.http1_headers import CONTINUE_100, REASONS, local_reply, response_head
from proxyd.worker import io, manager
from proxyd.worker.deadlines import INF, Deadline, DeadlineKind
from proxyd.worker.router import arm_request_phase
from proxyd.worker.stream import DownstreamReset, ResponseFlag, Stream

if TYPE_CHECKING:
    from proxyd.worker.plan import ListenerPlan
    from proxyd.worker.process import Worker

log = structlog.get_logger()

INITIAL_BUFFER = 16 * 1024
CRLF = b"\r\n"


class BufferPool:
    """Receive buffers of one size, reused across the connections of a worker."""

    __slots__ = ("size", "_free", "limit")

    def __init__(self, size: int = INITIAL_BUFFER, limit: int = 256) -> None:
        self.size = size
        self.limit = limit
        self._free: list[tuple[bytearray, memoryview]] = []

    def take(self) -> tuple[bytearray, memoryview]:
        if self._free:
            return self._free.pop()
        buf = bytearray(self.size)
        return buf, memoryview(buf)

    def give(self, buf: bytearray, view: memoryview) -> None:
        if len(buf) == self.size and len(self._free) < self.limit:
            self._free.append((buf, view))


_EMPTY = bytearray()
_EMPTY_VIEW = memoryview(_EMPTY)


class DownstreamConnection:
    """The HTTP/1.1 codec of one client connection, and the sink of its streams."""

    __slots__ = (
        "worker",
        "listener_name",
        "sock",
        "remote_ip",
        "remote",
        "local",
        "buf",
        "view",
        "start",
        "end",
        "idle",
        "deadline",
        "scope",
        "stream",
        "plan",
        "listener_updated",
        "generation",
        "closing",
        # request body state of the current stream
        "body_left",
        "decoder",
        "continue_sent",
        "chunked_out",
    )

    def __init__(
        self, worker: Worker, listener_name: str, sock: socket.socket, peer: tuple
    ) -> None:
        self.worker = worker
        self.listener_name = listener_name
        self.sock = sock
        self.remote_ip = peer[0]
        self.remote = f"{peer[0]}:{peer[1]}" if ":" not in peer[0] else f"[{peer[0]}]:{peer[1]}"
        self.local = ""  # asked of the socket only when the access log wants it
        self.buf = _EMPTY
        self.view = _EMPTY_VIEW
        self.start = 0
        self.end = 0
        self.idle = False
        self.deadline = Deadline(self._deadline_passed)
        self.scope: trio.CancelScope | None = None
        self.stream: Stream | None = None
        self.plan: ListenerPlan | None = None
        # The listener's config changed since this connection was accepted: its
        # responses say "connection: close" (Envoy drains an updated listener).
        self.listener_updated = False
        self.generation: object = None  # the listener config it was accepted under
        self.closing = False
        self.body_left = 0
        self.decoder: ChunkedDecoder | None = None
        self.continue_sent = False
        self.chunked_out = False

    # -- deadlines --------------------------------------------------------------------

    def _deadline_passed(self, d: Deadline) -> None:
        stream = self.stream
        if stream is not None:
            stream.timed_out = d.kind
        if self.scope is not None:
            self.scope.cancel()

    def set_deadline(self, kind: DeadlineKind, seconds: float) -> None:
        self.worker.timers.set(self.deadline, kind, seconds)

    # -- life cycle -------------------------------------------------------------------

    async def serve(self, plan: ListenerPlan) -> None:
        lstats = plan.listener_stats
        hstats = plan.http_stats
        lstats.cx_total += 1
        lstats.cx_active += 1
        hstats.cx_total += 1
        hstats.cx_active += 1
        worker = self.worker
        worker.connections.add(self)
        self.generation = plan.generation
        self.plan = plan
        try:
            while True:
                with trio.CancelScope() as scope:
                    self.scope = scope
                    await self._request_loop(plan)
                self.scope = None
                if not scope.cancelled_caught:
                    return
                # A deadline fired: end what it belongs to, then go on if we may.
                if not await self._after_deadline():
                    return
                plan = self.plan or plan
        except Exception as exc:
            worker.note_unexpected(exc, "downstream connection", remote=self.remote)
        finally:
            worker.timers.clear(self.deadline)
            worker.connections.discard(self)
            io.close(self.sock)
            self._release_buffer()
            lstats.cx_active -= 1
            hstats.cx_active -= 1
            hstats.cx_destroy += 1
            worker.connection_closed()

    async def _request_loop(self, plan: ListenerPlan) -> None:
        # The loop lives here rather than in a helper: every await level is paid again
        # at each wait of every request.
        worker = self.worker
        while True:
            # A listener that left the epoch keeps its last plan for the requests of
            # the connections it still has; they close after their response.
            plan = worker.plans.get(self.listener_name) or plan
            try:
                start = await self._read_head(plan)
                if start < 0:
                    return
                # The head is here: the request belongs to the epoch in place now.
                current = worker.plans.get(self.listener_name)
                if current is not None:
                    plan = current
                if current is None or current.generation is not self.generation:
                    # Updated or removed since the connection was accepted: this
                    # response says "connection: close" (Envoy drains the listener).
                    self.listener_updated = True
                self.plan = plan
                h = worker.head_parser.parse(self.view[start : self.start], plan.request_wanted)
            except ProtocolError as exc:
                await self._reject(plan, exc)
                return
            stream = Stream(h, self)
            self.stream = stream
            self.body_left = h.content_length if h.content_length > 0 else 0
            self.decoder = ChunkedDecoder() if h.chunked else None
            self.continue_sent = False
            self.chunked_out = False
            keep = await manager.handle(stream, plan, self)
            self.stream = None
            if not keep or self.closing:
                return
            if self.start == self.end:
                self.start = self.end = 0
            else:
                # A pipelined request is already here: let other tasks run first.
                await io.checkpoint()

    async def _after_deadline(self) -> bool:
        """The connection's deadline fired; True when the connection goes on."""
        stream = self.stream
        kind = self.deadline.kind
        plan = self.plan
        assert plan is not None
        if stream is None:
            if kind is DeadlineKind.REQUEST_HEADERS or kind is DeadlineKind.REQUEST:
                plan.http_stats.rq_timeout += 1
                await self._reject(plan, ProtocolError("request header timeout", 408))
            return False  # idle_timeout or drain: close quietly, as Envoy does
        keep = await manager.finish_after_deadline(stream, plan, self)
        self.stream = None
        return keep and not self.closing

    # -- request head -------------------------------------------------------------------

    def _take_buffer(self) -> None:
        self.buf, self.view = self.worker.buffers.take()

    def _release_buffer(self) -> None:
        if self.buf is not _EMPTY:
            self.worker.buffers.give(self.buf, self.view)
            self.buf = _EMPTY
            self.view = _EMPTY_VIEW
            self.start = self.end = 0

    async def _read_head(self, plan: ListenerPlan) -> int:
        """Wait for a complete head; its start, or -1 when the connection should close.

        On return the head is ``buf[start:self.start]``."""
        start = self.start
        end = self.end
        buf = self.buf
        sock = self.sock
        timers = self.worker.timers
        head_armed = False
        if start < end:
            start = skip_leading_crlf(buf, start, end)
            if start < end:
                head_armed = True
                timers.set(
                    self.deadline,
                    DeadlineKind.REQUEST_HEADERS,
                    min(plan.headers_timeout, plan.request_timeout),
                )
        searched = start
        while True:
            if start < end:
                he = find_head_end(buf, max(searched - 3, start), end)
                if he >= 0:
                    break
                searched = end
                if end - start > plan.max_head:
                    plan.http_stats.header_overflow += 1
                    raise ProtocolError("request headers too large", 431)
                if end == len(buf):
                    if start > 0:
                        n = end - start
                        buf[:n] = buf[start:end]
                        searched -= start
                        start, end = 0, n
                    else:
                        self._grow(plan.max_head + 8192)
                        buf = self.buf
            if start == end:
                start = end = searched = 0
                self.idle = True
                timers.set(self.deadline, DeadlineKind.IDLE, plan.idle_timeout)
                # Nothing yet: the client sends once it has read our last answer.
                # Let the other connections run first; by then it often has.
                await io.yield_now()
                n = -1
                if buf is not _EMPTY:
                    try:
                        n = sock.recv_into(self.view)
                    except BlockingIOError:
                        n = -1
                    except (ConnectionResetError, ConnectionAbortedError):
                        n = 0
                if n < 0:
                    # Idle for real: the buffer goes back until bytes arrive.
                    self._release_buffer()
                    await io.wait_readable(sock)
                    self._take_buffer()
                    buf = self.buf
                    try:
                        n = sock.recv_into(self.view)
                    except BlockingIOError:
                        continue
                    except (ConnectionResetError, ConnectionAbortedError):
                        n = 0
                self.idle = False
            else:
                try:
                    n = sock.recv_into(self.view[end:])
                except BlockingIOError:
                    n = await io.recv_into(sock, self.view[end:])
                except (ConnectionResetError, ConnectionAbortedError):
                    n = 0
            if n == 0:
                self.start = self.end = 0
                return -1  # closed (or reset) before a complete head: nothing to answer
            if not head_armed:
                head_armed = True
                timers.set(
                    self.deadline,
                    DeadlineKind.REQUEST_HEADERS,
                    min(plan.headers_timeout, plan.request_timeout),
                )
            end += n
            if buf[start] == 13:
                start = skip_leading_crlf(buf, start, end)
                searched = start
        if he - start > plan.max_head:
            plan.http_stats.header_overflow += 1
            raise ProtocolError("request headers too large", 431)
        self.start = he
        self.end = end
        return start

    def _grow(self, limit: int) -> None:
        size = len(self.buf)
        if size >= limit:
            raise ProtocolError("request headers too large", 431)
        new = bytearray(min(size * 4, limit))
        new[:size] = self.buf
        self.worker.buffers.give(self.buf, self.view)
        self.buf = new
        self.view = memoryview(new)

    async def _reject(self, plan: ListenerPlan, exc: ProtocolError) -> None:
        """Answer a request that could not be parsed, log it, and let the caller close."""
        status = exc.status
        stats = plan.http_stats
        stats.rq_total += 1
        stats.by_class[status // 100] += 1
        if status == 400 or status == 501:
            stats.cx_protocol_error += 1
        # Envoy's codec errors answer with the reason phrase as the body, except a
        # missing Host, which gets an empty 400.
        if status == 408:
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
        data = local_reply(status, body, plan.server, close=True)
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
        start = self.start
        end = self.end
        if self.decoder is None:
            take = min(end - start, self.body_left)
            if not take:
                return []
            self.start = start + take
            self.body_left -= take
            stream.bytes_received += take
            if self.body_left == 0:
                stream.request_complete = True
            return [self.view[start : start + take]]
        dec = self.decoder
        pieces, pos = dec.feed(self.buf, start, end)
        self.start = pos
        view = self.view
        out = []
        for off, n in pieces:
            stream.bytes_received += n
            out.append(view[off : off + n])
        if dec.done:
            stream.request_complete = True
        return out

    async def recv_body(self) -> list[memoryview]:
        stream = self.stream
        assert stream is not None
        if stream.request_complete:
            return []
        plan = self.plan
        assert plan is not None
        limit = plan.buffer_limit
        if self.decoder is None:
            # Content-length: read into the front of the buffer, at most what is left.
            n = await self._recv_body_bytes(0, min(limit, self.body_left, len(self.buf)))
            take = n if n < self.body_left else self.body_left
            self.body_left -= take
            stream.bytes_received += take
            self.start = take
            self.end = n
            if self.body_left == 0:
                stream.request_complete = True
            return [self.view[:take]]
        dec = self.decoder
        buf = self.buf
        while True:
            # Keep an unfinished chunk-size line, move it to the front.
            start, end = self.start, self.end
            if start < end:
                buf[: end - start] = buf[start:end]
            end -= start
            self.start = 0
            self.end = end
            if end >= len(buf):
                raise ProtocolError("chunk line too long", 400)
            n = await self._recv_body_bytes(end, min(limit, len(buf) - end))
            end += n
            self.end = end
            pieces, pos = dec.feed(buf, 0, end)
            self.start = pos
            if dec.done:
                stream.request_complete = True
            if pieces or dec.done:
                view = self.view
                out = []
                for off, k in pieces:
                    stream.bytes_received += k
                    out.append(view[off : off + k])
                return out

    async def _recv_body_bytes(self, at: int, size: int) -> int:
        n = await io.recv_into(self.sock, self.view[at : at + size])
        if n == 0:
            raise DownstreamReset()
        plan = self.plan
        assert plan is not None
        stream = self.stream
        if plan.stream_idle != INF and stream is not None and not stream.request_complete:
            # Activity: the stream idle timer starts over (request_timeout does not).
            arm_request_phase(stream, plan, self.worker.timers, self.deadline)
        return n

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
            or (stream is not None and not stream.request_complete)
            or self.worker.draining
            or self.listener_updated
        )

    async def send_headers(
        self, r: ResponseHead, service_ms: int, length: int, first: list, end_stream: bool
    ) -> None:
        stream = self.stream
        assert stream is not None and self.plan is not None
        close = self.wants_close()
        if close:
            self.closing = True
        chunked = length < 0
        self.chunked_out = chunked
        out = response_head(r, self.plan.server, service_ms, chunked, close, stream.response_added)
        stream.response_started = True
        try:
            if not first:
                if chunked and end_stream:
                    out += LAST_CHUNK
                await io.send_all(self.sock, out)
                return
            if not chunked and len(first) == 1 and len(first[0]) <= SMALL_BODY:
                # One small write: copying a few KiB beats a scatter list.
                piece = first[0]
                stream.bytes_sent += len(piece)
                data = out + piece
                try:
                    sent = self.sock.send(data)
                except BlockingIOError:
                    sent = 0
                if sent != len(data):
                    await io.send_all(self.sock, memoryview(data)[sent:])
                return
            parts: list = [out]
            self._frame(first, end_stream, parts)
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

    async def send_local_reply(self, status: int, body: str, extra: bytes = b"") -> None:
        stream = self.stream
        assert stream is not None and self.plan is not None
        if stream.response_started:
            raise DownstreamReset()  # a head went out already: all that is left is a reset
        close = self.wants_close()
        if close:
            self.closing = True
        stream.status = status
        stream.response_started = True
        h = stream.head
        if stream.response_added:
            extra += b"".join(stream.response_added)
        data = local_reply(
            status,
            body,
            self.plan.server,
            close=close,
            head_request=h is not None and h.method == "HEAD",
            extra=extra,
        )
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
