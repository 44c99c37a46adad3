"""The HTTP/2 connections of a cluster whose hosts speak HTTP/2, and their pool.

* :class:`H2Conn` is one connection: ``h2`` (sans-IO) for the frames, one reader task
  per connection (in the worker's :data:`READERS` nursery) that feeds it the socket's
  bytes and wakes the streams, and one lock under which whatever ``h2`` has to send is
  written. Each request is an :class:`UpStream` on it. Response DATA is acknowledged
  (WINDOW_UPDATE) only when the router took it (:meth:`H2Conn.ack`); request DATA goes
  out within the peer's windows (:meth:`H2Conn.window`).
* :class:`H2Pool` puts up to the peer's SETTINGS_MAX_CONCURRENT_STREAMS streams (and
  up to ``max_requests_per_connection`` in its life) on one connection before it opens
  another; the circuit breakers are the HTTP/1 pool's (max_connections counts
  connections, max_requests streams, max_pending requests waiting for a stream slot
  or a connection). A connection the peer sent GOAWAY on takes no new streams (they go
  to a new connection) and closes when its last stream ends; one without streams for
  the cluster's ``idle_timeout`` is closed by the sweep (about once a second).

The router's side is :mod:`proxyd.worker.h2_upstream`.
"""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio

from proxyd.protocol.h2_upstream import CANCEL, NO_ERROR, PROTOCOL_ERROR, REFUSED_STREAM
from proxyd.protocol.http1 import ResponseHeadParser
from proxyd.worker import io
from proxyd.worker.pool import ConnectFailure, ConnPool, Overflow, UpstreamConnection
from proxyd.worker.stats import note_unexpected

if TYPE_CHECKING:
    from proxyd.worker.pool import ClusterState, HostState
    from proxyd.worker.stats import NamedStats

READ_SIZE = 64 * 1024
# The window proxyd gives each upstream stream: what one stream may have in flight
# towards proxyd before the router took it (backpressure from a slow client).
STREAM_WINDOW = 256 * 1024
# The connection's window is large: the streams' windows bound what is buffered.
CONNECTION_WINDOW = 64 << 20
# A connection stops taking streams well before HTTP/2's stream ids run out.
MAX_STREAM_ID = 1 << 30
# How long a new connection waits for the peer's SETTINGS without a connect timeout.
SETTINGS_WAIT_S = 5.0

_CONFIG = h2.config.H2Configuration(
    client_side=True,
    header_encoding=None,
    validate_inbound_headers=True,
    normalize_inbound_headers=True,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


class Readers:
    """The worker's nursery for the upstream HTTP/2 connections' reader tasks (one
    per worker process, run by the worker beside its other tasks)."""

    def __init__(self) -> None:
        self.nursery: trio.Nursery | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                await trio.sleep_forever()
            finally:
                self.nursery = None

    def start(self, conn: H2Conn) -> None:
        if self.nursery is None:
            raise ConnectFailure("remote connection failure")  # the worker is stopping
        self.nursery.start_soon(conn.read_loop)


READERS = Readers()


class StreamGone(Exception):
    """The upstream stream was reset, or its connection went away."""


class UpStream:
    """One request's stream on an :class:`H2Conn`: what the reader task delivered."""

    __slots__ = (
        "sid", "headers", "data", "data_len", "ended", "trailers", "reset_code", "gone",
        "wake", "window_wake", "closed_out",
    )  # fmt: skip

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.data: list[bytes] = []
        self.data_len = 0  # flow-controlled bytes received, not yet acknowledged
        self.ended = False  # END_STREAM from the upstream
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.reset_code: int | None = None
        self.gone = False  # reset by the upstream, or the connection went away
        self.wake: trio.Event | None = None
        self.window_wake: trio.Event | None = None
        self.closed_out = False  # proxyd is done with it (END_STREAM or RST_STREAM sent)

    def notify(self) -> None:
        if self.wake is not None:
            self.wake.set()
            self.wake = None

    def notify_window(self) -> None:
        if self.window_wake is not None:
            self.window_wake.set()
            self.window_wake = None

    async def wait(self) -> None:
        self.wake = wake = trio.Event()
        await wake.wait()


class H2Conn:
    """One HTTP/2 connection to a host and the streams on it."""

    def __init__(self, pool: H2Pool, uc: UpstreamConnection) -> None:
        self.pool = pool
        self.uc = uc
        self.sock: Any = uc.sock
        self.host = uc.host
        self.key = uc.key
        c = self.h2 = h2.connection.H2Connection(_CONFIG)
        cluster = pool.cluster.cluster  # its Http2ProtocolOptions, else proxyd's own
        c.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: (
                    cluster.h2_stream_window or STREAM_WINDOW
                ),
            },
        )
        c.initiate_connection()
        grow = (cluster.h2_connection_window or CONNECTION_WINDOW) - 65535
        if grow > 0:
            c.increment_flow_control_window(grow)
        self.max_streams = cluster.h2_max_streams or MAX_STREAM_ID
        self.streams: dict[int, UpStream] = {}
        # Stream slots taken (streams open, or promised to a request about to open one).
        self.reserved = 0
        self.started = 0  # streams in its life (max_requests_per_connection)
        self.lock = trio.Lock()
        self.closed = False
        self.goaway = False
        self.idle_since = time.monotonic()
        self.parser = ResponseHeadParser()
        self.reader = trio.CancelScope()
        # The peer's first SETTINGS arrived (its stream limit is known): only then does
        # the connection take streams (set, too, when it closed before).
        self.ready = trio.Event()
        self.settled = False

    def has_room(self) -> bool:
        if self.closed or self.goaway or not self.settled:
            return False
        if self.reserved >= min(self.h2.remote_settings.max_concurrent_streams, self.max_streams):
            return False
        limit = self.pool.max_requests
        if limit and self.started >= limit:
            return False
        return self.h2.highest_outbound_stream_id < MAX_STREAM_ID

    def reserve(self) -> None:
        self.reserved += 1
        self.started += 1

    def open_stream(self, headers: list[tuple[bytes, bytes]], end_stream: bool) -> UpStream:
        """A new stream with the request's header block; StreamGone when the
        connection cannot take it after all (closed, GOAWAY, the peer's limit)."""
        if self.closed or self.goaway:
            raise StreamGone()
        c = self.h2
        try:
            sid = c.get_next_available_stream_id()
            c.send_headers(sid, headers, end_stream=end_stream)
        except (h2.exceptions.TooManyStreamsError, h2.exceptions.ProtocolError):
            raise StreamGone() from None
        up = self.streams[sid] = UpStream(sid)
        up.closed_out = end_stream
        return up

    async def flush(self) -> None:
        """Write what h2 has to send; StreamGone when the connection broke."""
        if self.closed:
            raise StreamGone()
        async with self.lock:
            data = self.h2.data_to_send()
            if not data:
                return
            try:
                await io.send_all(self.sock, data)
            except OSError:
                self.broke()
                raise StreamGone() from None
            except trio.Cancelled:
                # Part of a frame may be out: nothing more can follow on it.
                self.broke()
                raise

    def broke(self) -> None:
        self.closed = True
        self.reader.cancel()

    async def window(self, up: UpStream, want: int) -> int:
        """How much of ``want`` bytes of request body may go out now."""
        c = self.h2
        while True:
            if up.gone or self.closed:
                raise StreamGone()
            try:
                room = c.local_flow_control_window(up.sid)
            except h2.exceptions.ProtocolError:
                raise StreamGone() from None
            if room > 0:
                return min(room, want, c.max_outbound_frame_size)
            up.window_wake = wake = trio.Event()
            await wake.wait()

    def ack(self, up: UpStream, n: int) -> None:
        """``n`` bytes of the stream's DATA were taken by the sink: the upstream may
        send more."""
        if n and not self.closed:
            try:
                self.h2.acknowledge_received_data(n, up.sid)
            except h2.exceptions.ProtocolError:
                pass  # the stream or connection closed meanwhile: no window to give

    def finish(self, up: UpStream, reset: bool) -> None:
        """The exchange is done with ``up``: reset it when it did not end both ways
        (RST_STREAM CANCEL), give back what it did not read, free its slot."""
        if self.streams.pop(up.sid, None) is not None and not self.closed:
            try:
                if reset and not up.gone and not (up.ended and up.closed_out):
                    self.h2.reset_stream(up.sid, CANCEL if not up.ended else NO_ERROR)
                if up.data_len:
                    self.h2.acknowledge_received_data(up.data_len, up.sid)
            except h2.exceptions.ProtocolError:
                pass  # closed on h2's side already
        self.pool.stream_done(self)

    # -- the reader task ------------------------------------------------------------------

    async def read_loop(self) -> None:
        view = memoryview(bytearray(READ_SIZE))
        try:
            with self.reader:
                await self.flush()  # the preface and SETTINGS, if no stream wrote them
                while True:
                    n = await io.recv_into(self.sock, view)
                    if n == 0:
                        break
                    try:
                        events = self.h2.receive_data(bytes(view[:n]))
                    except h2.exceptions.H2Error:
                        self.pool.named.inc("upstream_cx_protocol_error")
                        try:
                            self.h2.close_connection(error_code=PROTOCOL_ERROR)
                            self.sock.send(self.h2.data_to_send())
                        except (OSError, h2.exceptions.ProtocolError):
                            pass  # it closes below regardless
                        break
                    self._dispatch(events)
                    if self.goaway and not self.streams:
                        break
                    await self.flush()
        except (OSError, StreamGone):
            pass  # the connection broke: its streams are told below
        except Exception as exc:  # a bug: counted, logged once; only this connection ends
            store = self.pool.named.store
            if store is not None:
                note_unexpected(store, exc, "upstream HTTP/2 connection")
        finally:
            if not self.closed:
                # Closed by proxyd (idle, drained, retired): GOAWAY first, if it fits.
                try:
                    self.h2.close_connection()
                    self.sock.send(self.h2.data_to_send())
                except (OSError, h2.exceptions.ProtocolError):
                    pass  # the socket closes regardless
            self.closed = True
            self.ready.set()
            for up in list(self.streams.values()):
                up.gone = True
                up.notify()
                up.notify_window()
            self.pool.connection_closed(self)

    def _dispatch(self, events: list[Any]) -> None:
        streams = self.streams
        for ev in events:
            sid = getattr(ev, "stream_id", 0)
            up = streams.get(sid) if sid else None
            if isinstance(ev, h2.events.DataReceived):
                if up is None:
                    self._ack_now(sid, ev.flow_controlled_length)
                    continue
                if ev.data:
                    up.data.append(ev.data)
                up.data_len += ev.flow_controlled_length
                up.notify()
            elif isinstance(ev, h2.events.ResponseReceived):
                if up is not None:
                    up.headers = ev.headers
                    up.notify()
            elif isinstance(ev, h2.events.TrailersReceived):
                if up is not None:
                    up.trailers = ev.headers
            elif isinstance(ev, h2.events.StreamEnded):
                if up is not None:
                    up.ended = True
                    up.notify()
            elif isinstance(ev, h2.events.StreamReset):
                self.pool.named.inc("http2.rx_reset")
                if up is not None:
                    up.gone = True
                    up.reset_code = ev.error_code
                    up.notify()
                    up.notify_window()
            elif isinstance(ev, h2.events.WindowUpdated):
                if not sid:
                    for s in streams.values():
                        s.notify_window()
                elif up is not None:
                    up.notify_window()
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                if not self.settled:
                    self.settled = True
                    self.ready.set()
                for s in streams.values():
                    s.notify_window()
                self.pool.room_changed(self)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._goaway(ev)
            # InformationalResponseReceived (1xx), pings, settings acks: h2's alone.

    def _goaway(self, ev: h2.events.ConnectionTerminated) -> None:
        """GOAWAY: no new streams here; those above its last stream id were not
        processed (refused); with an error code, none will finish."""
        self.goaway = True
        self.pool.named.inc("upstream_cx_close_notify")
        last = ev.last_stream_id if ev.last_stream_id is not None else 0
        for sid, up in self.streams.items():
            if sid > last or ev.error_code:
                up.gone = True
                up.reset_code = REFUSED_STREAM if sid > last else None
                up.notify()
                up.notify_window()
        self.pool.room_changed(self)

    def _ack_now(self, sid: int, n: int) -> None:
        if n:
            try:
                self.h2.acknowledge_received_data(n, sid)
            except h2.exceptions.ProtocolError:
                try:
                    self.h2.increment_flow_control_window(n)
                except h2.exceptions.ProtocolError:
                    pass  # closing: nothing to give back


class _Room:
    """A request waiting for a stream slot on a connection to its host."""

    __slots__ = ("host", "key", "conn", "failure", "event")

    def __init__(self, host: HostState, key: str | None) -> None:
        self.host = host
        self.key = key
        self.conn: H2Conn | None = None
        self.failure: ConnectFailure | None = None
        self.event = trio.Event()


class H2Pool(ConnPool):
    """One routing priority's HTTP/2 connections of a cluster (and its circuit
    breakers: see the module's docstring)."""

    def __init__(self, cluster: ClusterState, priority: int, named: NamedStats) -> None:
        super().__init__(cluster, priority)
        self.named = named
        self.conns: dict[int, list[H2Conn]] = {}  # by id(host)
        self.connecting: dict[int, int] = {}  # connections being opened, by id(host)
        self.rooms: deque[_Room] = deque()

    # -- taking a stream slot ---------------------------------------------------------------

    def _with_room(self, host: HostState, key: str | None) -> H2Conn | None:
        for conn in self.conns.get(id(host), ()):
            if conn.key == key and conn.has_room():
                return conn
        return None

    async def acquire_stream(self, host: HostState, key: str | None = None) -> H2Conn:
        """A connection to ``host`` with a stream slot reserved for the caller (who
        gives it back with :meth:`H2Conn.finish`, or :meth:`stream_done`)."""
        conn = self._with_room(host, key)
        if conn is not None:
            conn.reserve()
            return conn
        stats = self.stats
        if self.pending >= self.cb_max_pending:
            stats.rq_pending_overflow += 1
            raise Overflow()
        stats.rq_pending_total += 1
        stats.rq_pending_active += 1
        self.pending += 1
        try:
            while True:
                p = self.priority
                if self.connecting.get(id(host)) or (
                    self.connections >= self.cb_max_connections and host.connections[p]
                ):
                    # A connection to the host is being opened (it may take this stream
                    # too), or no other may be opened: wait for room.
                    if not self.connecting.get(id(host)):
                        stats.cx_overflow += 1
                    room = await self._wait_room(host, key)
                    if room is not None:
                        return room
                    continue  # a slot freed, or the connection opened is full: again
                if self.connections >= self.cb_max_connections:
                    stats.cx_overflow += 1  # (Envoy opens one to a host with none)
                return await self._open(host, key)
        except ConnectFailure:
            raise
        except BaseException:
            stats.rq_cancelled += 1
            raise
        finally:
            stats.rq_pending_active -= 1
            self.pending -= 1

    async def _wait_room(self, host: HostState, key: str | None) -> H2Conn | None:
        room = _Room(host, key)
        self.rooms.append(room)
        try:
            await room.event.wait()
        except BaseException:
            if not room.event.is_set():
                self.rooms.remove(room)
            elif room.conn is not None:
                self.stream_done(room.conn)
            raise
        if room.failure is not None:
            raise room.failure
        return room.conn

    async def _open(self, host: HostState, key: str | None) -> H2Conn:
        """A new connection to ``host``, with the peer's SETTINGS (its stream limit)
        received, and a stream slot reserved for the caller."""
        hid = id(host)
        self.connecting[hid] = self.connecting.get(hid, 0) + 1
        try:
            uc = await self.connect(host, key=key)
            conn = H2Conn(self, uc)
            self.conns.setdefault(hid, []).append(conn)
            self.named.inc("upstream_cx_http2_total")
            try:
                READERS.start(conn)
            except ConnectFailure:
                conn.closed = True
                self.connection_closed(conn)
                raise
            with trio.move_on_after(self.connect_timeout or SETTINGS_WAIT_S):
                await conn.ready.wait()
            if not conn.settled:
                conn.reader.cancel()
                raise ConnectFailure(
                    "remote connection failure" if conn.closed else "connection timeout"
                )
        except ConnectFailure as exc:
            self._fail_waiters(host, exc)
            raise
        finally:
            self.connecting[hid] -= 1
            if not self.connecting[hid]:
                del self.connecting[hid]
        conn.reserve()
        self.room_changed(conn)
        if self.rooms and self.connections < self.cb_max_connections:
            # The new connection is full (the peer's limit): the host's other waiters
            # open their own rather than wait for its streams to end.
            for room in [r for r in self.rooms if r.host is host]:
                self.rooms.remove(room)
                room.event.set()
        return conn

    def _fail_waiters(self, host: HostState, exc: ConnectFailure) -> None:
        """The connection the host's waiters counted on failed: they fail with it, as
        Envoy's pending requests fail with their connection attempt."""
        if self.connecting.get(id(host), 0) > 1:
            return  # another is on its way
        for room in [r for r in self.rooms if r.host is host]:
            self.rooms.remove(room)
            room.failure = exc
            room.event.set()

    def room_changed(self, conn: H2Conn) -> None:
        """``conn`` may have stream slots for waiters of its host."""
        if not self.rooms:
            return
        for room in list(self.rooms):
            if room.host is not conn.host or room.key != conn.key:
                continue
            if not conn.has_room():
                break
            self.rooms.remove(room)
            conn.reserve()
            room.conn = conn
            room.event.set()

    def _wake_one(self) -> None:
        """A connection slot freed: the oldest waiter tries again (it may open one)."""
        if self.rooms:
            room = self.rooms.popleft()
            room.event.set()

    # -- giving back ---------------------------------------------------------------------

    def stream_done(self, conn: H2Conn) -> None:
        conn.reserved -= 1
        if conn.reserved == 0:
            conn.idle_since = time.monotonic()
            if conn.goaway or self.retired:
                conn.reader.cancel()  # drained: it closes
                return
        if conn.has_room():
            self.room_changed(conn)

    def connection_closed(self, conn: H2Conn) -> None:
        """The reader task ended: the socket closes and its slot is freed."""
        conns = self.conns.get(id(conn.host))
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self.conns[id(conn.host)]
        conn.uc.requests = conn.started
        self.destroy(conn.uc)

    def _unreserve(self, host: HostState) -> None:
        self.connections -= 1
        host.connections[self.priority] -= 1
        self._wake_one()

    # -- life cycle -------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Close connections without streams for longer than the idle timeout."""
        limit = self.idle_timeout
        if not limit:
            return
        for conns in list(self.conns.values()):
            for conn in conns:
                if conn.reserved == 0 and now - conn.idle_since > limit:
                    conn.reader.cancel()

    def retire(self) -> None:
        self.retired = True
        for conns in list(self.conns.values()):
            for conn in conns:
                if conn.reserved == 0:
                    conn.reader.cancel()

    def close_all(self) -> None:
        for conns in list(self.conns.values()):
            for conn in conns:
                conn.reader.cancel()
