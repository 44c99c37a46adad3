"""One downstream HTTP/2 connection: the h2 codec behind the stream interface.

A connection the HTTP/1.1 codec (:mod:`proxyd.worker.downstream`) hands over — it
started with the HTTP/2 preface on a listener with codec_type AUTO or HTTP2, or its TLS
handshake chose ``h2`` by ALPN — is served by :class:`H2Session`. The bytes go through
``h2`` (sans-IO); each request is a :class:`H2Stream`, which is both the
:class:`~proxyd.worker.stream.DownstreamSink` of a :class:`~proxyd.worker.stream.Stream`
and the :class:`~proxyd.worker.stream.Connection` its steps read, and runs the same
connection manager steps (:mod:`proxyd.worker.manager`: routing, the filter chain, the
router to the HTTP/1.1 upstreams, access logs, tracing) in a task of its own. The
request head is the HTTP/1.1 head the HTTP/2 header block stands for
(:mod:`proxyd.protocol.h2_translate`), so nothing downstream of the codec can tell.

Flow control: a request's DATA is acknowledged (WINDOW_UPDATE) only when the router
comes back for more, i.e. once the pieces it took were written upstream; a slow upstream
holds the client to its stream window. Response DATA goes out only within the client's
windows, one piece at a time, and the router reads nothing more from the upstream
before its piece went out: a client that does not read one stream makes that stream
wait, and proxyd holds at most one upstream read of it.

Deadlines are per stream (one :class:`~proxyd.worker.deadlines.Deadline` and one cancel
scope each); a stream that ends early is reset (RST_STREAM) on its own. A protocol
error ends the connection with GOAWAY; a drain (:meth:`H2Session.drain`) sends GOAWAY
and lets the streams already started finish.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio
from hyperframe.frame import GoAwayFrame, SettingsFrame

from proxyd.errors import ProtocolError
from proxyd.protocol.h2_translate import local_settings, request_head, response_headers
from proxyd.protocol.http1_headers import local_reply, response_head
from proxyd.worker import io, manager
from proxyd.worker.deadlines import Deadline, DeadlineKind
from proxyd.worker.filter_chain import HTTP_TO_GRPC
from proxyd.worker.router import arm_request_phase
from proxyd.worker.stats import note_unexpected
from proxyd.worker.stream import DownstreamReset, ResponseFlag, Stream

if TYPE_CHECKING:
    from proxyd.protocol.h2_translate import H2Plan
    from proxyd.protocol.http1 import ResponseHead
    from proxyd.worker.downstream import DownstreamConnection
    from proxyd.worker.durations import ConnectionDurations
    from proxyd.worker.plan import ListenerPlan

CRLF2 = b"\r\n\r\n"
# A gRPC request's head (the translated head names it so: request_head).
_GRPC_LINE = b"\r\ncontent-type: application/grpc"


def grpc_percent_encode(text: bytes) -> bytes:
    """grpc-message's percent-encoding (gRPC's PROTOCOL-HTTP2: bytes outside
    0x20-0x7E, and ``%``)."""
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in text):
        return text
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in text)


# RFC 9113 §7 error codes proxyd sends.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
REFUSED_STREAM = 0x7
# What one read of the socket takes at most.
READ_SIZE = 64 * 1024
# Envoy's defence against rapid resets (CVE-2023-44487), with its default runtime values
# (overload.premature_reset_total_stream_count, ..._min_stream_lifetime_seconds): a
# stream the client resets within a second of opening it is a premature reset; once
# half of the connection's closed streams are (counting from the first 500 streams,
# and before that once there are 250), the connection is aborted.
PREMATURE_RESET_TOTAL = 500
PREMATURE_RESET_LIFETIME_S = 1.0


class H2Session:
    """The HTTP/2 codec of one client connection and its streams."""

    def __init__(self, dc: DownstreamConnection, plan: ListenerPlan, h2plan: H2Plan) -> None:
        self.dc = dc
        self.sock: Any = dc.sock
        self.worker = dc.worker
        self.plan = plan
        self.options = h2plan.options
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=True,
            normalize_inbound_headers=True,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes(k): v for k, v in local_settings(self.options).items()
            },
        )
        self.streams: dict[int, H2Stream] = {}
        self.send_lock = trio.Lock()
        self.nursery: trio.Nursery | None = None
        self.reader = trio.CancelScope()
        # The connection is going away: GOAWAY sent (draining) with this last stream id.
        self.goaway_id = -1
        self.remote_goaway = False
        self.broken = False
        self.idle = Deadline(self._idle_passed)
        # Envoy's HTTP/2 codec stats (http2.rx_reset, tx_reset, header_overflow, trailers).
        self.codec_stats = dc.worker.stats.named("http2.")
        # Frames written before h2's output (the first SETTINGS), and after it (a
        # graceful GOAWAY).
        self.first_out = b""
        self.extra_out: list[bytes] = []
        # Streams closed, and how many of them the client reset prematurely.
        self.closed_streams = 0
        self.premature_resets = 0

    # -- life cycle -------------------------------------------------------------------

    async def serve(self, initial: bytes) -> None:
        """Run the connection until the client leaves, a protocol error, or a drain
        that has finished its streams. The caller closes the socket."""
        h2c = self.h2
        plan = self.plan
        stats = plan.http_stats
        stats.cx_http2_total += 1
        stats.cx_http2_active += 1
        try:
            h2c.initiate_connection()
            # h2's SETTINGS frame names every setting; Envoy's names four: the frame
            # that goes out is written here, with the same values h2 now expects to
            # see acknowledged.
            h2c.data_to_send()
            settings = SettingsFrame(0)
            for code, value in local_settings(self.options).items():
                settings.settings[code] = value
            self.first_out = settings.serialize()
            extra = self.options.initial_connection_window_size - 65535
            if extra > 0:
                h2c.increment_flow_control_window(extra)
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self._arm_idle()
                with self.reader:
                    await self._read_loop(initial)
                if self.extra_out and not self.broken:
                    # A GOAWAY queued as the reader was stopped (idle_timeout, a drain).
                    with trio.move_on_after(1.0):
                        await self._flush_quietly()
                # The client left, the connection broke, or it is over: streams still
                # running end as reset by the client.
                for s in list(self.streams.values()):
                    s.end_peer_gone()
        finally:
            self.worker.timers.clear(self.idle)
            stats.cx_http2_active -= 1

    async def _read_loop(self, initial: bytes) -> None:
        h2c = self.h2
        sock = self.sock
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        data: bytes = initial
        try:
            while True:
                if data:
                    try:
                        events = h2c.receive_data(data)
                    except h2.exceptions.H2Error as exc:
                        await self._protocol_error(exc)
                        return
                    self._dispatch(events)
                    await self.flush()
                    if self.broken:
                        return
                if self.goaway_id >= 0 and not self.streams:
                    return  # drained: every stream it let through has finished
                if self.remote_goaway and not self.streams:
                    return
                n = await io.recv_into(sock, view)
                if n == 0:
                    return
                data = bytes(view[:n])
        except (OSError, trio.ClosedResourceError, DownstreamReset):
            return  # the client is gone (or the socket broke under a write)

    async def _protocol_error(self, exc: Exception) -> None:
        """The client broke HTTP/2: GOAWAY with its error code, then the end."""
        self.plan.http_stats.cx_protocol_error += 1
        self.broken = True
        if "preamble" in str(exc):
            # Not HTTP/2 at all (no client preface): closed without a word, as Envoy
            # closes it.
            return
        self.broken = False
        code = getattr(exc, "error_code", None) or PROTOCOL_ERROR
        try:
            self.h2.close_connection(error_code=code)
        except h2.exceptions.ProtocolError:
            pass  # the state machine is closed already: the socket closes regardless
        try:
            await self.flush()
        except DownstreamReset:
            pass  # the client is gone; the connection ends anyway

    def _arm_idle(self) -> None:
        timeout = self.plan.idle_timeout
        if timeout != math.inf:
            self.worker.timers.set(self.idle, DeadlineKind.IDLE, timeout)

    def _idle_passed(self, d: Deadline) -> None:
        """idle_timeout with no stream, or the end of a drain: GOAWAY and close."""
        if not self.streams:
            self.goaway_id = max(self.goaway_id, 0)
            self._queue_goaway(self.h2.highest_inbound_stream_id)
            self.reader.cancel()

    def drain(self) -> None:
        """The worker drains: GOAWAY now; the streams up to its last stream id finish,
        later ones are refused, and the connection closes when none is left."""
        if self.goaway_id >= 0:
            return
        self.goaway_id = self.h2.highest_inbound_stream_id
        self._queue_goaway(self.goaway_id)
        if self.nursery is not None:
            self.nursery.start_soon(self._flush_quietly)
        if not self.streams:
            self.reader.cancel()

    def _queue_goaway(self, last_stream_id: int) -> None:
        # Written beside h2's own output: h2's close_connection would close its state
        # machine, and the streams below last_stream_id must still be served.
        frame = GoAwayFrame(stream_id=0, last_stream_id=last_stream_id, error_code=NO_ERROR)
        self.extra_out.append(frame.serialize())

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except DownstreamReset:
            pass  # the client is gone: the read loop sees it too

    async def flush(self) -> None:
        """Everything h2 has to send, in order; DownstreamReset when the socket broke."""
        if self.broken:
            raise DownstreamReset()
        async with self.send_lock:
            data = self.h2.data_to_send()
            if self.first_out:
                data = self.first_out + data
                self.first_out = b""
            extra = self.extra_out
            if extra:
                data = data + b"".join(extra)
                extra.clear()
            if not data:
                return
            try:
                await io.send_all(self.sock, data)
            except (OSError, trio.ClosedResourceError):
                self.broken = True
                self.reader.cancel()
                raise DownstreamReset() from None
            except trio.Cancelled:
                # A stream's deadline passed while the client was not reading: part of
                # a frame may be out, so nothing more can follow on this connection.
                self.broken = True
                self.reader.cancel()
                raise

    # -- events -------------------------------------------------------------------------

    def _dispatch(self, events: list[Any]) -> None:
        streams = self.streams
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                s = streams.get(ev.stream_id)
                if s is None or s.done:
                    # Nobody will read it: the connection's window gets it back now.
                    self._ack(ev.stream_id, ev.flow_controlled_length)
                else:
                    s.data_received(ev.data, ev.flow_controlled_length)
            elif isinstance(ev, h2.events.RequestReceived):
                self._start_stream(ev)
            elif isinstance(ev, h2.events.StreamEnded):
                s = streams.get(ev.stream_id)
                if s is not None:
                    s.request_ended()
            elif isinstance(ev, h2.events.StreamReset):
                self.codec_stats.inc("rx_reset")
                s = streams.get(ev.stream_id)
                if s is not None:
                    s.reset_by_peer()
            elif isinstance(ev, h2.events.WindowUpdated):
                if ev.stream_id == 0:
                    for s in streams.values():
                        s.wake_window()
                else:
                    s = streams.get(ev.stream_id)
                    if s is not None:
                        s.wake_window()
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                for s in streams.values():
                    s.wake_window()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.remote_goaway = True
            elif isinstance(ev, h2.events.TrailersReceived):
                self.codec_stats.inc("trailers")
                s = streams.get(ev.stream_id)
                if s is not None:
                    # Kept for an HTTP/2 upstream (worker/h2_upstream.py); an HTTP/1.1
                    # upstream does not get them. Their StreamEnded follows.
                    s.request_trailers = ev.headers
            # Pings and settings acks are h2's.

    def _ack(self, stream_id: int, n: int) -> None:
        if n:
            try:
                self.h2.acknowledge_received_data(n, stream_id)
            except h2.exceptions.ProtocolError:
                pass  # the connection is closing; no window to give back

    def _start_stream(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        if self.goaway_id >= 0 and sid > self.goaway_id:
            self.reset_stream(sid, REFUSED_STREAM)
            return
        worker = self.worker
        plan = worker.plans.get(self.dc.listener_name) or self.plan
        stats = plan.http_stats
        stats.rq_http2_total += 1
        try:
            raw, has_body = request_head(ev.headers, ev.stream_ended is not None)
            if len(raw) > plan.max_head:  # max_request_headers_kb
                raise ProtocolError("headers too large", 431)
            head = worker.head_parser.parse(raw, plan.request_wanted, plan.max_headers, None)
        except ProtocolError as exc:
            # A request HTTP/1.1 cannot carry: the stream is reset on its own, as
            # Envoy's codec resets it (PROTOCOL_ERROR for a malformed one; more header
            # fields than max_headers_count, or more bytes than max_request_headers_kb:
            # INTERNAL_ERROR, logged with DR and no request, as Envoy logs it).
            stats.cx_protocol_error += exc.status != 431
            stats.rq_total += 1
            if exc.status == 431:
                self.codec_stats.inc("header_overflow")
            self.reset_stream(sid, INTERNAL_ERROR if exc.status == 431 else PROTOCOL_ERROR)
            if plan.logs:
                refused = H2Stream(self, sid, plan, None, False)
                stream = refused.stream
                stream.t_wall, stream.t0 = manager.clock_now(plan)
                stream.flags = ResponseFlag.DOWNSTREAM_REMOTE_RESET
                manager.write_log(stream, plan, refused)
            return
        s = H2Stream(self, sid, plan, head, has_body)
        self.streams[sid] = s
        self.worker.timers.clear(self.idle)
        assert self.nursery is not None
        self.nursery.start_soon(s.run)

    def _check_premature_resets(self) -> None:
        """Envoy's ``maybeDrainDueToPrematureResets``: abort a connection whose client
        resets most of its streams right after opening them (rapid reset)."""
        closed, premature = self.closed_streams, self.premature_resets
        if closed < PREMATURE_RESET_TOTAL:
            if premature * 2 < PREMATURE_RESET_TOTAL:
                return
        elif premature * 2 < closed:
            return
        if self.broken:
            return
        self.broken = True
        hcm = self.plan.listener.hcm
        assert hcm is not None  # an HTTP listener's plan
        stats = self.worker.stats.named(f"http.{hcm.stat_prefix}.")
        stats.inc("downstream_rq_too_many_premature_resets")
        self.reader.cancel()  # the connection closes without another frame

    def reset_stream(self, sid: int, code: int) -> None:
        """RST_STREAM ``code`` on stream ``sid`` (counted in http2.tx_reset)."""
        try:
            self.h2.reset_stream(sid, code)
        except h2.exceptions.ProtocolError:
            return  # already closed on h2's side: nothing to reset
        self.codec_stats.inc("tx_reset")

    def stream_done(self, s: H2Stream) -> None:
        self.streams.pop(s.sid, None)
        self.closed_streams += 1
        if s.rst_by_peer and trio.current_time() - s.t_open < PREMATURE_RESET_LIFETIME_S:
            self.premature_resets += 1
            self._check_premature_resets()
        if not self.streams:
            self._arm_idle()
            if self.goaway_id >= 0 or self.remote_goaway or self.broken:
                self.reader.cancel()


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
        self.timers = session.worker.timers
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
            if not self.ended_out and not session.broken:
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
        try:
            self.session.h2.send_headers(self.sid, headers, end_stream=end_stream)
        except h2.exceptions.ProtocolError:
            raise DownstreamReset() from None
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
