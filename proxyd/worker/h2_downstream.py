"""One downstream HTTP/2 connection: the h2 codec behind the stream interface.

A connection the HTTP/1.1 codec (:mod:`proxyd.worker.downstream`) hands over — it
started with the HTTP/2 preface on a listener with codec_type AUTO or HTTP2, or its TLS
handshake chose ``h2`` by ALPN — is served by :class:`H2Session`. The bytes go through
``h2`` (sans-IO); each request is a :class:`~proxyd.worker.h2_stream.H2Stream`, which is both the
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

Writes: the read loop writes what the socket takes at once and reads on while the rest
waits for the client (a writer task sends it); what is queued meanwhile is bounded by
Envoy's flood limits (:mod:`proxyd.protocol.h2_flood`), which close the connection
without a frame when passed. A CONNECT or extended CONNECT stream the route takes
becomes a tunnel on its stream (:mod:`proxyd.worker.h2_tunnel`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import trio
from hyperframe.frame import ContinuationFrame, GoAwayFrame, SettingsFrame

from proxyd.errors import ProtocolError
from proxyd.protocol.h2_flood import EMPTY_FRAMES_FLOOD, FloodGuard
from proxyd.protocol.h2_translate import (
    ExtendedConnectRefused,
    local_settings,
    request_head,
)
from proxyd.worker import io, manager
from proxyd.worker.deadlines import Deadline, DeadlineKind
from proxyd.worker.h2_stream import INTERNAL_ERROR, NO_ERROR, H2Stream
from proxyd.worker.stream import DownstreamReset, ResponseFlag

if TYPE_CHECKING:
    from proxyd.protocol.h2_translate import H2Plan
    from proxyd.worker.downstream import DownstreamConnection
    from proxyd.worker.plan import ListenerPlan

# RFC 9113 §7 error codes proxyd sends.
PROTOCOL_ERROR = 0x1
REFUSED_STREAM = 0x7
# A GOAWAY's last stream id when it only announces that the connection will close
# (Envoy's shutdown notice before its final GOAWAY).
SHUTDOWN_NOTICE_ID = 2**31 - 1
# What one read of the socket takes at most.
READ_SIZE = 64 * 1024
# Envoy's defence against rapid resets (CVE-2023-44487), with its default runtime values
# (overload.premature_reset_total_stream_count, ..._min_stream_lifetime_seconds): a
# stream the client resets within a second of opening it is a premature reset; once
# half of the connection's closed streams are (counting from the first 500 streams,
# and before that once there are 250), the connection is aborted.
PREMATURE_RESET_TOTAL = 500
PREMATURE_RESET_LIFETIME_S = 1.0
# The CONTINUATION frames a header block may have (Envoy's nghttp2 max_continuations).
MAX_CONTINUATIONS = 512
# h2 enforces the MAX_CONCURRENT_STREAMS it announced by closing the connection;
# Envoy refuses the stream beyond it (REFUSED_STREAM), as H2Session._start_stream does,
# so h2's own limit is set out of reach.
_H2_STREAM_LIMIT = 2**31 - 1


class _NextFrame(Exception):
    """h2's frame buffer took a frame into a header block and asks for the next one."""


class _FrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer without its cap of 64 CONTINUATION frames a header block:
    Envoy takes any number and bounds the block's size instead
    (H2Session._check_open_block). The frames of a long block are merged into one as
    it grows, so h2's count stays under its cap and the bytes stay what they were.
    Empty CONTINUATION frames in a row are counted here (``flooded``: more than
    max_consecutive_inbound_frames_with_empty_payload), and a block's CONTINUATION
    frames (``too_many``: more than Envoy's 512, its nghttp2 max_continuations)."""

    def __init__(self, max_empty: int) -> None:
        super().__init__(server=True)
        self.max_empty = max_empty
        self.empty_run = 0
        self.flooded = False
        self.too_many = False
        self.continuations = 0
        self.nested = False

    def __next__(self) -> Any:
        # h2 asks for the frame after one it took into a header block by calling
        # __next__ again from inside itself: one level of recursion per CONTINUATION
        # frame, which a read of many small ones would take past Python's limit. The
        # inner call is turned back into a loop here (the frame it follows is
        # consumed by then).
        if self.nested:
            raise _NextFrame()
        self.nested = True
        try:
            while True:
                try:
                    return super().__next__()
                except _NextFrame:
                    continue
        finally:
            self.nested = False

    def _update_header_buffer(self, f: Any) -> Any:
        buf = self._headers_buffer
        if buf and isinstance(f, ContinuationFrame):
            self.continuations += 1
            self.too_many = self.continuations > MAX_CONTINUATIONS
            if f.data:
                self.empty_run = 0
            else:
                self.empty_run += 1
                self.flooded = self.empty_run > self.max_empty
            if len(buf) >= 32:
                merged = ContinuationFrame(buf[0].stream_id, b"".join(x.data for x in buf[1:]))
                del buf[1:]
                buf.append(merged)
        elif not buf:
            self.continuations = 0  # (a new block, if f starts one)
        return super()._update_header_buffer(f)


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
        self.frames_in = _FrameBuffer(
            self.options.max_consecutive_inbound_frames_with_empty_payload
        )
        self.h2.incoming_buffer = self.frames_in
        # hpack refuses (ENHANCE_YOUR_CALM) a header list of more than 64 KiB decoded;
        # Envoy resets the stream of a list over max_request_headers_kb
        # (http2.header_overflow, _start_stream), so hpack's bound is set beyond it.
        self.h2.decoder.max_header_list_size = 2 * plan.max_head + 65536
        values = local_settings(self.options)
        values[0x3] = _H2_STREAM_LIMIT
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes(k): v for k, v in values.items()},
        )
        # Envoy's flood limits (proxyd.protocol.h2_flood).
        self.guard = FloodGuard(self.options)
        # Bytes a write left unsent while the read loop goes on (see _send_nowait).
        self.backlog = b""
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
        # A shutdown notice went out: the connection drains when its streams are done.
        self.closing = False

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
                    frames_in = self.frames_in
                    if frames_in._headers_buffer or frames_in.flooded or frames_in.too_many:
                        self._check_open_block(frames_in)
                    if self.broken:
                        return
                    flood = self.guard.check_outbound()
                    if flood is not None:
                        self._flood(flood)
                        return
                    if not self.send_lock.locked():
                        self._send_nowait()
                    # (else a write waits for the client to read: what this read
                    # produced is sent after it, within the flood limits)
                    await io.checkpoint()  # the streams this read started run first
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

    async def shutdown_notice(self) -> None:
        """The connection will close once the streams now open are done (a refused
        upgrade): Envoy's first GOAWAY (last stream id 2^31-1) goes out now, the
        final one when the last stream ends (:meth:`stream_done`)."""
        if self.closing or self.goaway_id >= 0:
            return
        self.closing = True
        self._queue_goaway(SHUTDOWN_NOTICE_ID)
        await self.flush()

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

    def _output(self) -> bytes:
        """What is to be written, in order: what a write left, the first SETTINGS,
        h2's frames, and GOAWAYs written beside h2."""
        data = self.h2.data_to_send()
        if self.first_out:
            data = self.first_out + data
            self.first_out = b""
        if self.backlog:
            data = self.backlog + data
            self.backlog = b""
        extra = self.extra_out
        if extra:
            data = data + b"".join(extra)
            extra.clear()
        return data

    def _send_nowait(self) -> None:
        """The read loop's write: what the socket takes now; the rest is left to a
        writer task, and the read loop reads on meanwhile (a client that does not read
        makes proxyd queue frames, which the flood limits bound, as in Envoy)."""
        data = self._output()
        if not data:
            self.guard.written()
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.broken = True
            return
        if sent == len(data):
            self.guard.written()
            return
        self.backlog = data[sent:]
        assert self.nursery is not None
        self.nursery.start_soon(self._flush_quietly)

    async def flush(self) -> None:
        """Everything there is to send, in order, until nothing is left (what others
        queued meanwhile included); DownstreamReset when the socket broke or a flood
        limit closed the connection."""
        if self.broken:
            raise DownstreamReset()
        flood = self.guard.check_outbound()
        if flood is not None:
            self._flood(flood)
            raise DownstreamReset()
        async with self.send_lock:
            while True:
                data = self._output()
                if not data:
                    self.guard.written()
                    return
                try:
                    await io.send_all(self.sock, data)
                except (OSError, trio.ClosedResourceError):
                    self.broken = True
                    self.reader.cancel()
                    raise DownstreamReset() from None
                except trio.Cancelled:
                    # A stream's deadline passed while the client was not reading: part
                    # of a frame may be out, so nothing more can follow on it.
                    self.broken = True
                    self.reader.cancel()
                    raise
                if self.broken:
                    raise DownstreamReset()

    def _flood(self, stat: str) -> None:
        """A flood limit passed: counted in ``http2.<stat>``, and the connection is
        closed without another frame, as Envoy closes it."""
        if self.broken:
            return
        self.codec_stats.inc(stat)
        self.broken = True
        self.reader.cancel()

    def _check_open_block(self, frames_in: _FrameBuffer) -> None:
        """A header block: more empty CONTINUATION frames in a row than
        max_consecutive_inbound_frames_with_empty_payload, more than 512 CONTINUATION
        frames (a CONTINUATION flood of small frames, CVE-2024-27919), or, while it
        has not ended, more bytes than max_request_headers_kb
        (http2.header_list_size_too_large) close the connection."""
        if frames_in.flooded:
            self._flood(EMPTY_FRAMES_FLOOD)
        elif sum(len(f.data) for f in frames_in._headers_buffer) > self.plan.max_head:
            # (Envoy resets the stream as it decodes past the limit and goes on; h2
            # decodes a block only once it ends, so the connection ends instead)
            self._flood("header_list_size_too_large")
        elif frames_in.too_many:
            # (Envoy closes it without a frame and without a stat of its own)
            self.broken = True
            self.reader.cancel()

    # -- events -------------------------------------------------------------------------

    def _dispatch(self, events: list[Any]) -> None:
        streams = self.streams
        guard = self.guard
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                if not ev.data and ev.stream_ended is None:
                    flood = guard.empty_frame()
                    if flood is not None:
                        self._flood(flood)
                        return
                else:
                    guard.empty_run = 0
                s = streams.get(ev.stream_id)
                if s is None or s.done:
                    # Nobody will read it: the connection's window gets it back now.
                    self._ack(ev.stream_id, ev.flow_controlled_length)
                else:
                    s.data_received(ev.data, ev.flow_controlled_length)
            elif isinstance(ev, h2.events.RequestReceived):
                guard.headers_frame()
                if ev.priority_updated is not None:
                    guard.priority -= 1  # (a HEADERS frame's priority: not a PRIORITY frame)
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
                flood = guard.window_update_frame()
                if flood is not None:
                    self._flood(flood)
                    return
                if ev.stream_id == 0:
                    for s in streams.values():
                        s.wake_window()
                else:
                    s = streams.get(ev.stream_id)
                    if s is not None:
                        s.wake_window()
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                guard.control_frame()  # its acknowledgement
                for s in streams.values():
                    s.wake_window()
            elif isinstance(ev, h2.events.PingReceived):
                guard.control_frame()  # its acknowledgement
            elif isinstance(ev, h2.events.PriorityUpdated):
                flood = guard.priority_frame()
                if flood is not None:
                    self._flood(flood)
                    return
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.remote_goaway = True
            elif isinstance(ev, h2.events.TrailersReceived):
                guard.empty_run = 0
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
                return  # the connection is closing; no window to give back
            self.guard.out_frames += 1  # (a WINDOW_UPDATE, when h2 sends one)

    def _start_stream(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        if self.goaway_id >= 0 and sid > self.goaway_id:
            self.reset_stream(sid, REFUSED_STREAM)
            return
        if len(self.streams) >= self.options.max_concurrent_streams and self._at_stream_limit():
            # Beyond the MAX_CONCURRENT_STREAMS announced: refused, as Envoy refuses it.
            self.codec_stats.inc("stream_refused_errors")
            self.reset_stream(sid, REFUSED_STREAM)
            return
        worker = self.worker
        plan = worker.plans.get(self.dc.listener_name) or self.plan
        stats = plan.http_stats
        stats.rq_http2_total += 1
        oversized = False
        try:
            raw, has_body = request_head(
                ev.headers, ev.stream_ended is not None, self.options.allow_connect
            )
            if len(raw) > plan.max_head:  # max_request_headers_kb
                oversized = True
                raise ProtocolError("headers too large", 431)
            head = worker.head_parser.parse(raw, plan.request_wanted, plan.max_headers, None)
        except ExtendedConnectRefused:
            # Envoy's codec takes it as a messaging error of the connection: closed
            # without a frame.
            self.codec_stats.inc("rx_messaging_error")
            stats.cx_protocol_error += 1
            self.broken = True
            self.reader.cancel()
            return
        except ProtocolError as exc:
            # A request HTTP/1.1 cannot carry: the stream is reset on its own, as
            # Envoy's codec resets it (PROTOCOL_ERROR for a malformed one; more header
            # fields than max_headers_count, or more bytes than max_request_headers_kb:
            # INTERNAL_ERROR, logged with DR and no request, as Envoy logs it).
            stats.cx_protocol_error += exc.status != 431
            stats.rq_total += 1
            if oversized:
                self.codec_stats.inc("header_list_size_too_large")
            elif exc.status == 431:  # more fields than max_headers_count
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

    def _at_stream_limit(self) -> bool:
        """Whether the streams still open in HTTP/2's terms (a stream reset or ended
        both ways is not, though its task may not have finished) fill
        MAX_CONCURRENT_STREAMS. Counted only when the cheap count says it may."""
        h2_streams = self.h2.streams
        open_now = 0
        for sid in self.streams:
            st = h2_streams.get(sid)
            if st is not None and not st.closed:
                open_now += 1
        return open_now >= self.options.max_concurrent_streams

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
        self.guard.control_frame()
        self.codec_stats.inc("tx_reset")

    def stream_done(self, s: H2Stream) -> None:
        self.streams.pop(s.sid, None)
        self.closed_streams += 1
        if s.rst_by_peer and trio.current_time() - s.t_open < PREMATURE_RESET_LIFETIME_S:
            self.premature_resets += 1
            self._check_premature_resets()
        if not self.streams:
            if self.closing:
                self.drain()
            self._arm_idle()
            if self.goaway_id >= 0 or self.remote_goaway or self.broken:
                self.reader.cancel()
