"""One HTTP/2 stream of a client connection (:class:`H2Stream`): the sink its
:class:`~proxyd.worker.stream.Stream` answers through and the connection it sees, and a
route's ``max_stream_duration`` on it (:class:`StreamLimit`). The connection, its frames
and its streams' life are :mod:`proxyd.worker.h2_downstream`'s ``H2Session``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import trio

from proxyd.protocol.h2_translate import (
    response_headers,
)
from proxyd.protocol.http1_headers import local_reply, response_head
from proxyd.worker import h2_tunnel, manager
from proxyd.worker.deadlines import Deadline, DeadlineKind, Timers
from proxyd.worker.filter_chain import HTTP_TO_GRPC
from proxyd.worker.router import arm_request_phase
from proxyd.worker.stats import note_unexpected
from proxyd.worker.stream import DownstreamReset, ResponseFlag, Stream

if TYPE_CHECKING:
    from proxyd.protocol.http1 import ResponseHead
    from proxyd.worker.durations import ConnectionDurations
    from proxyd.worker.h2_downstream import H2Session
    from proxyd.worker.plan import ListenerPlan

# RFC 9113 §7 error codes a stream sends (H2Session sends others too).
NO_ERROR = 0x0
INTERNAL_ERROR = 0x2

CRLF2 = b"\r\n\r\n"
# A gRPC request's head (the translated head names it so: request_head).
_GRPC_LINE = b"\r\ncontent-type: application/grpc"


def grpc_percent_encode(text: bytes) -> bytes:
    """grpc-message's percent-encoding (gRPC's PROTOCOL-HTTP2: bytes outside
    0x20-0x7E, and ``%``)."""
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in text):
        return text
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in text)


class StreamLimit:
    """A route's ``max_stream_duration`` on one HTTP/2 stream (the
    :class:`~proxyd.worker.durations.ConnectionDurations` face that
    ``RouteDuration.matched`` arms): from the stream's start, it ends that stream
    alone."""

    __slots__ = ("h2s", "limit", "started")

    def __init__(self, h2s: H2Stream) -> None:
        self.h2s = h2s
        self.limit = Deadline(self._passed)
        self.started = h2s.timers.now()

    def _passed(self, d: Deadline) -> None:
        self.h2s.plan.http_stats.rq_max_duration_reached += 1
        self.h2s._deadline_passed(d)

    def limit_passed_now(self, stream: Stream) -> None:
        self.h2s.timers.clear(self.limit)
        self.h2s.plan.http_stats.rq_max_duration_reached += 1
        stream.timed_out = DeadlineKind.STREAM_DURATION


class H2Stream:
    """One HTTP/2 stream: the sink and the connection its :class:`Stream` sees."""

    # Read by the access log (%PROTOCOL%).
    protocol = "HTTP/2"
    # One of many streams on its connection: a tunnel through it is DATA frames
    # (proxyd.worker.router.Exchange._tunnel_bytes calls :meth:`tunnel`).
    multiplexed = True
    # The connection manager's max_*_duration: listeners with them take no HTTP/2
    # (proxyd.worker.plan); a route's max_stream_duration: a StreamLimit per stream.
    # (StreamLimit has what RouteDuration.matched reads of ConnectionDurations.)
    durations: ConnectionDurations | None = None
    stream_limit: StreamLimit | None = None

    def __init__(
        self, session: H2Session, sid: int, plan: ListenerPlan, head: Any, has_body: bool
    ) -> None:
        self.session = session
        self.sid = sid
        self.plan = plan
        dc = session.dc
        self.remote_ip = dc.remote_ip
        self.remote = dc.remote
        self.tls = dc.tls
        self.timers: Timers = session.worker.timers
        self.deadline = Deadline(self._deadline_passed)
        self.scope = trio.CancelScope()
        self.stream = Stream(head, self)
        # request body from the client: pieces not yet taken, and flow-controlled bytes
        # taken but not yet acknowledged (given back once the router asks for more).
        self.body: list[bytes] = []
        self.body_len = 0
        self.unacked = 0
        self.body_ended = not has_body
        # The request's trailers (an HTTP/2 upstream gets them), None: none came.
        self.request_trailers: list[tuple[bytes, bytes]] | None = None
        self.body_wake: trio.Event | None = None
        self.window_wake: trio.Event | None = None
        self.peer_reset = False  # the client reset it, or the connection is gone
        self.rst_by_peer = False  # the client's RST_STREAM
        self.ended_out = False  # END_STREAM (or RST_STREAM) sent
        self.done = False
        self.t_open = trio.current_time()
        if plan.stream_limits:
            self.stream_limit = StreamLimit(self)
            self.durations = self.stream_limit  # type: ignore[assignment]

    # -- the connection side (proxyd.worker.stream.Connection) -------------------------

    def local_address(self) -> str:
        return self.session.dc.local_address()

    def _deadline_passed(self, d: Deadline) -> None:
        self.stream.timed_out = d.kind
        self.scope.cancel()

    # -- events from the session --------------------------------------------------------

    def data_received(self, data: bytes, flow: int) -> None:
        if data:
            self.body.append(data)
            self.body_len += len(data)
        # Padding counts against the window but is never read: acknowledged with
        # the data it came with.
        self.unacked += flow - len(data)
        self._wake_body()

    def request_ended(self) -> None:
        self.body_ended = True
        self._wake_body()

    def reset_by_peer(self) -> None:
        self.rst_by_peer = True
        self.peer_reset = True
        self.ended_out = True
        self.scope.cancel()
        self._wake_body()
        self.wake_window()

    def end_peer_gone(self) -> None:
        if self.ended_out:
            return  # its response is all out (or it was reset): it ends on its own
        self.peer_reset = True
        self.scope.cancel()
        self._wake_body()
        self.wake_window()

    def _wake_body(self) -> None:
        if self.body_wake is not None:
            self.body_wake.set()
            self.body_wake = None

    def wake_window(self) -> None:
        if self.window_wake is not None:
            self.window_wake.set()
            self.window_wake = None

    # -- the stream's life ----------------------------------------------------------------

    async def run(self) -> None:
        stream = self.stream
        plan = self.plan
        session = self.session
        timers = self.timers
        try:
            if plan.stream_idle != math.inf:
                timers.set(self.deadline, DeadlineKind.STREAM_IDLE, plan.stream_idle)
            finished = False
            with self.scope:
                await manager.handle(stream, plan, self)
                manager.finish(stream, plan, self)
                finished = True
            timers.clear(self.deadline)
            if not finished:
                if self.rst_by_peer:
                    stream.flags = ResponseFlag.DOWNSTREAM_REMOTE_RESET
                    manager.finish(stream, plan, self)
                elif self.peer_reset or session.broken:
                    if stream.flags is ResponseFlag.NONE:
                        stream.flags = ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION
                    manager.finish(stream, plan, self)
                else:
                    # A deadline: answered as Envoy answers it, if nothing went out yet.
                    await manager.finish_after_deadline(stream, plan, self)
            if not self.ended_out and not session.broken and not self.peer_reset:
                # The response did not end (an upstream reset, a deadline after the
                # head went out, a filter's reset): this stream is reset, only it.
                self._reset(INTERNAL_ERROR)
            elif not self.body_ended and not self.peer_reset and not session.broken:
                # Answered before the request ended: the rest is not wanted.
                self._reset(NO_ERROR)
        except Exception as exc:  # a bug: counted, logged once, only this stream ends
            note_unexpected(session.worker.stats, exc, "downstream HTTP/2 stream")
            if not self.ended_out and not session.broken:
                self._reset(INTERNAL_ERROR)
        finally:
            timers.clear(self.deadline)
            if self.stream_limit is not None:
                timers.clear(self.stream_limit.limit)
            self.done = True
            # What it took and what was left unread go back to the connection's window.
            left = self.unacked + self.body_len
            self.unacked = self.body_len = 0
            self.body.clear()
            session._ack(self.sid, left)
            session.stream_done(self)
            if not session.broken:
                try:
                    await session.flush()
                except DownstreamReset:
                    pass  # the connection broke; its read loop ends it

    def _reset(self, code: int) -> None:
        self.ended_out = True
        self.session.reset_stream(self.sid, code)

    def complete(self) -> None:
        """The stream ended (called when no filter wrapped this sink: nothing to do)."""

    # -- the sink: request body ------------------------------------------------------------

    def _take(self) -> list[memoryview]:
        stream = self.stream
        pieces = [memoryview(p) for p in self.body]
        n = self.body_len
        self.body = []
        self.body_len = 0
        self.unacked += n
        stream.bytes_received += n
        if self.body_ended:
            stream.request_complete = True
        return pieces

    def take_buffered_body(self) -> list[memoryview]:
        if self.stream.request_complete:
            return []
        return self._take()

    async def recv_body(self) -> list[memoryview]:
        stream = self.stream
        if stream.request_complete:
            return []
        session = self.session
        # What the router took last time has gone upstream: the client may send more.
        if self.unacked:
            session._ack(self.sid, self.unacked)
            self.unacked = 0
            await session.flush()
        while not self.body and not self.body_ended:
            if self.peer_reset:
                raise DownstreamReset()
            self.body_wake = wake = trio.Event()
            await wake.wait()
        if self.peer_reset:
            raise DownstreamReset()
        rp = stream.route_plan
        idle = self.plan.stream_idle if rp is None else rp.stream_idle
        if idle != math.inf and not self.body_ended:
            arm_request_phase(stream, idle, self.timers, self.deadline)
        return self._take()

    async def send_continue(self) -> None:
        session = self.session
        try:
            session.h2.send_headers(self.sid, [(b":status", b"100")])
        except h2.exceptions.ProtocolError:
            raise DownstreamReset() from None
        await session.flush()

    # -- the sink: response -----------------------------------------------------------------

    def wants_close(self) -> bool:
        return False  # a stream ends alone; the connection carries the others

    async def send_headers(
        self, r: ResponseHead, service_ms: int, length: int, first: list, end_stream: bool
    ) -> None:
        stream = self.stream
        if not self.body_ended and stream.head is not None and stream.head.upgrade:
            # (Envoy's router times only a request that is complete; an upgrade's
            # never is, so its answer has no x-envoy-upstream-service-time.)
            service_ms = -2
        rp = stream.route_plan
        if rp is not None and rp.mutations is not None:
            r, service_ms = rp.mutations.on_response(r, stream, self, service_ms)
        stream.response_started = True
        head = response_head(r, self.plan.server, service_ms, False, False, stream.response_added)
        await self._send_head(response_headers(head), end_stream and not first)
        if first:
            await self.send_data(first, end_stream)

    async def _send_head(self, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        if self.peer_reset:
            raise DownstreamReset()
        session = self.session
        try:
            session.h2.send_headers(self.sid, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError:
            raise DownstreamReset() from None
        session.guard.out_frames += 1
        if end_stream:
            self.ended_out = True
        await self._flush_end(end_stream)

    async def _flush_end(self, ended: bool) -> None:
        """Flush; once END_STREAM is handed to h2 the stream is complete, whatever
        becomes of the connection after (another stream's flush may have sent it)."""
        try:
            await self.session.flush()
        except DownstreamReset:
            if not ended:
                raise

    async def send_data(self, parts: list, end_stream: bool) -> None:
        session = self.session
        h2c = session.h2
        sid = self.sid
        stream = self.stream
        for p in parts:
            view = memoryview(p)
            while view:
                n = await self._window(len(view))
                try:
                    h2c.send_data(sid, bytes(view[:n]))
                except h2.exceptions.ProtocolError:
                    raise DownstreamReset() from None
                guard = session.guard
                guard.out_frames += 1
                guard.data_sent += 1
                stream.bytes_sent += n
                view = view[n:]
                await session.flush()
        if end_stream:
            try:
                h2c.end_stream(sid)
            except h2.exceptions.ProtocolError:
                raise DownstreamReset() from None
            self.ended_out = True
            await self._flush_end(True)

    async def send_trailers(self, trailers: list[tuple[bytes, bytes]]) -> None:
        """The response ends with trailers (an HTTP/2 upstream's)."""
        if not trailers:
            await self.send_data([], True)
            return
        await self._send_head(trailers, True)

    async def _window(self, want: int) -> int:
        """How much of ``want`` may go out now, waiting for the client's windows."""
        h2c = self.session.h2
        while True:
            if self.peer_reset or self.session.broken:
                raise DownstreamReset()
            try:
                window = h2c.local_flow_control_window(self.sid)
            except h2.exceptions.ProtocolError:
                raise DownstreamReset() from None
            if window > 0:
                return min(window, want, h2c.max_outbound_frame_size)
            self.window_wake = wake = trio.Event()
            await wake.wait()

    def _grpc_reply(self, status: int, body: str | bytes, extra: bytes) -> tuple[int, str, bytes]:
        """A local reply to a gRPC request, as Envoy's sendLocalReply makes it: a
        trailers-only response (HTTP 200, ``grpc-status`` from the HTTP status, or
        DEADLINE_EXCEEDED for max_stream_duration, and the body as ``grpc-message``)."""
        if self.stream.timed_out is DeadlineKind.STREAM_DURATION:
            code = 4
        else:
            code = HTTP_TO_GRPC.get(status, 2)
        text = body.encode("latin-1") if isinstance(body, str) else body
        extra += b"content-type: application/grpc\r\ngrpc-status: %d\r\n" % code
        if text:
            extra += b"grpc-message: " + grpc_percent_encode(text) + b"\r\n"
        return 200, "", extra

    async def send_local_reply(
        self, status: int, body: str | bytes, extra: bytes = b"", chunked: bool = False
    ) -> None:
        stream = self.stream
        if stream.response_started:
            raise DownstreamReset()  # a head went out already: all that is left is a reset
        h = stream.head
        if h is not None and status != 200 and _GRPC_LINE in h.raw and b"grpc-status" not in extra:
            status, body, extra = self._grpc_reply(status, body, extra)
        if stream.close_connection and h is not None and h.upgrade:
            # A refused upgrade (403) closes the connection, here as Envoy's HTTP/2
            # codec closes it: a shutdown notice first, the final GOAWAY after.
            await self.session.shutdown_notice()
        stream.status = status
        stream.response_started = True
        if stream.response_added:
            extra += b"".join(stream.response_added)
        head_request = h is not None and h.method == "HEAD"
        data = local_reply(status, body, self.plan.server, head_request=head_request, extra=extra)
        rp = stream.route_plan
        if rp is not None and rp.mutations is not None:
            data = rp.mutations.on_local_reply(data, stream, self)
        split = data.find(CRLF2) + 4
        headers = response_headers(data[:split])
        payload = b"" if head_request else data[split:]
        if chunked or not data[split:]:
            # Envoy's HTTP/2 reply of an empty body (or of one of unknown length) has
            # no content-length.
            headers = [x for x in headers if x[0] != b"content-length"]
        await self._send_head(headers, not payload)
        if payload:
            await self.send_data([payload], True)

    # -- a tunnel (CONNECT, extended CONNECT): proxyd.worker.h2_tunnel ----------------------

    async def send_upgrade_response(self, r: ResponseHead, service_ms: int, upgrade: str) -> None:
        await h2_tunnel.send_upgrade_response(self, r)

    async def send_connect_established(self) -> None:
        await h2_tunnel.send_connect_established(self)

    async def tunnel(self, sock: Any, first: bytes, touch: Callable[[], None]) -> None:
        await h2_tunnel.run(self, sock, first, touch)
