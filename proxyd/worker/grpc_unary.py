"""Unary gRPC calls from a worker (the OpenTelemetry tracer's OTLP export over
``grpc_service.envoy_grpc``, the ext_authz filter's ``Authorization/Check``): HTTP/2
(h2, sans-IO), the request framed as gRPC (``0`` + 4-byte length + message), sent
within the peer's flow control windows, and the call's ``grpc-status`` read from the
trailers (or from a trailers-only response), with the response message. The worker's
own counterpart of the master's xDS client (``proxyd.master.xds.grpc``), which workers
must not import.

* :func:`unary_call` / :func:`unary_call_message`: one call on a new connection.
* :class:`GrpcConnections`: calls on kept connections, one call at a time on each
  (a worker's callers take an idle connection of the host, or open one, and give it
  back when the call went well). A kept connection the peer closed meanwhile fails
  before the peer said anything of the call: the call is then made once more on a new
  connection. A connection idle for :data:`IDLE_S` is closed by a later call's sweep.

A peer that breaks HTTP/2, sends a malformed ``grpc-status`` or resets the connection
makes a :class:`GrpcCallError`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

MAX_MESSAGE = 4 << 20  # gRPC's default maximum receive size
IDLE_S = 30.0  # a kept connection idle longer than this is closed
MAX_IDLE = 16  # kept connections per host, at most
# A connection stops taking calls well before HTTP/2's stream ids run out.
MAX_STREAM_ID = 1 << 30


class GrpcCallError(Exception):
    """The call did not complete (connection closed or reset before a status)."""


class _Stale(GrpcCallError):
    """A kept connection failed before the peer said anything of the call."""


async def unary_call(
    host: str,
    port: int,
    authority: str,
    method: str,
    message: bytes,
    metadata: Sequence[tuple[str, str]] = (),
) -> int:
    """The grpc-status of calling ``method`` with ``message`` (the caller bounds the
    time with a cancel scope). Raises OSError, GrpcCallError."""
    status, _ = await unary_call_message(host, port, authority, method, message, metadata)
    return status


async def unary_call_message(
    host: str,
    port: int,
    authority: str,
    method: str,
    message: bytes,
    metadata: Sequence[tuple[str, str]] = (),
) -> tuple[int, bytes]:
    """(grpc-status, the response message, b"" when none came) of calling ``method``
    with ``message`` on a new connection. Raises OSError, GrpcCallError (also for a
    response message that is compressed or not framed as gRPC)."""
    conn = await GrpcConnection.open(host, port)
    try:
        return await conn.call(authority, method, message, metadata)
    finally:
        await conn.aclose()


class GrpcConnection:
    """One HTTP/2 connection carrying unary calls, one at a time."""

    __slots__ = ("sock", "h2", "good", "calls", "idle_since")

    def __init__(self, sock: trio.SocketStream) -> None:
        self.sock = sock
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.h2.initiate_connection()
        # False once the connection cannot take another call.
        self.good = True
        self.calls = 0
        self.idle_since = 0.0

    @classmethod
    async def open(cls, host: str, port: int) -> GrpcConnection:
        return cls(await trio.open_tcp_stream(host, port))

    async def aclose(self) -> None:
        self.good = False
        await self.sock.aclose()

    async def call(
        self, authority: str, method: str, message: bytes, metadata: Sequence[tuple[str, str]]
    ) -> tuple[int, bytes]:
        reused = self.calls > 0
        self.calls += 1
        heard = False
        try:
            status, received, heard = await self._call(authority, method, message, metadata)
        except trio.BrokenResourceError as exc:  # the peer reset the connection
            self.good = False
            err: type[GrpcCallError] = _Stale if reused and not heard else GrpcCallError
            raise err(f"connection broken: {exc!r}") from None
        except _Stale as exc:
            self.good = False
            if reused:
                raise
            raise GrpcCallError(str(exc)) from None
        except BaseException:
            self.good = False  # the call's state on the connection is unknown
            raise
        if not received:
            return status, b""
        if len(received) < 5 or received[0] != 0:
            raise GrpcCallError("response message not framed as uncompressed gRPC")
        (length,) = struct.unpack(">I", received[1:5])
        if len(received) < 5 + length:
            raise GrpcCallError("response message truncated")
        return status, bytes(received[5 : 5 + length])

    async def _call(
        self, authority: str, method: str, message: bytes, metadata: Sequence[tuple[str, str]]
    ) -> tuple[int, bytearray, bool]:
        conn = self.h2
        sock = self.sock
        sid = conn.get_next_available_stream_id()
        if sid >= MAX_STREAM_ID:
            self.good = False
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", method.encode()),
            (b":authority", authority.encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            *((k.lower().encode(), v.encode()) for k, v in metadata),
        ]
        conn.send_headers(sid, headers)
        body = memoryview(b"\x00" + struct.pack(">I", len(message)) + message)
        status: int | None = None
        ended = False
        heard = False
        received = bytearray()
        while True:
            # Send what the windows allow; the rest waits for WINDOW_UPDATE frames.
            while body:
                size = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if size <= 0:
                    break
                conn.send_data(sid, bytes(body[:size]), end_stream=len(body) <= size)
                body = body[size:]
            out = conn.data_to_send()
            if out:
                await sock.send_all(out)
            if ended:
                break
            data = await sock.receive_some(65536)
            if not data:
                self.good = False
                if not heard:
                    raise _Stale("connection closed before the call's status")
                raise GrpcCallError("connection closed before the call's status")
            try:
                events = conn.receive_data(data)
            except h2.exceptions.H2Error as exc:
                # (A kept connection's peer that went away may send GOAWAY and then a
                # frame h2 refuses on a closed connection: stale too.)
                self.good = False
                err = GrpcCallError if heard else _Stale
                raise err(f"HTTP/2 protocol error from the peer: {exc}") from None
            for event in events:
                if isinstance(event, h2.events.ConnectionTerminated):
                    self.good = False
                    if not heard:  # (a call a going-away peer took or not: made anew)
                        raise _Stale(f"connection ended by the peer: {event}")
                    raise GrpcCallError(f"connection ended by the peer: {event}")
                if getattr(event, "stream_id", sid) != sid:
                    continue  # (one call at a time: nothing else is open)
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    heard = True
                    for name, value in event.headers:
                        if name == b"grpc-status":
                            if not value.isdigit():
                                self.good = False
                                raise GrpcCallError(f"malformed grpc-status {value!r}")
                            status = int(value)
                elif isinstance(event, h2.events.DataReceived):
                    heard = True
                    received += event.data
                    if len(received) > MAX_MESSAGE:
                        self.good = False
                        raise GrpcCallError("response message too large")
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
                elif isinstance(event, h2.events.StreamReset):
                    raise GrpcCallError(f"call reset by the peer: {event}")
        if status is None:
            raise GrpcCallError("no grpc-status")
        return status, received, heard


class GrpcConnections:
    """A worker's kept connections, by host: see the module's docstring."""

    __slots__ = ("idle", "swept")

    def __init__(self) -> None:
        self.idle: dict[tuple[str, int], list[GrpcConnection]] = {}
        self.swept = 0.0

    async def call(
        self,
        host: str,
        port: int,
        authority: str,
        method: str,
        message: bytes,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> tuple[int, bytes]:
        """Like :func:`unary_call_message`, on a kept connection when there is one."""
        now = trio.current_time()
        if now - self.swept > IDLE_S / 4:
            self.swept = now
            await self._sweep(now)
        idle = self.idle.setdefault((host, port), [])
        while True:
            conn = idle.pop() if idle else await GrpcConnection.open(host, port)
            if not conn.good:
                continue
            try:
                result = await conn.call(authority, method, message, metadata)
            except _Stale:
                await conn.aclose()
                continue  # a kept connection the peer had closed: once more, anew
            except BaseException:
                with trio.CancelScope(shield=True):
                    await conn.aclose()
                raise
            if conn.good and len(idle) < MAX_IDLE:
                conn.idle_since = trio.current_time()
                idle.append(conn)
            else:
                await conn.aclose()
            return result

    async def _sweep(self, now: float) -> None:
        old: list[GrpcConnection] = []
        for key, idle in list(self.idle.items()):
            keep = [c for c in idle if now - c.idle_since < IDLE_S]
            old += (c for c in idle if now - c.idle_since >= IDLE_S)
            if keep:
                self.idle[key] = keep
            else:
                del self.idle[key]
        with trio.CancelScope(shield=True):
            for c in old:
                await c.aclose()

    async def aclose(self) -> None:
        """Close every kept connection."""
        idle, self.idle = self.idle, {}
        with trio.CancelScope(shield=True):
            for conns in idle.values():
                for c in conns:
                    await c.aclose()
