"""A client-streaming gRPC call from a worker (the gRPC access log service's
``StreamAccessLogs``): one HTTP/2 connection (h2, sans-IO) carrying one call whose
request messages are sent as they come, each framed as gRPC (``0`` + 4-byte length +
message) within the peer's flow-control windows. The call stays open until the peer
ends it (a response, trailers, a reset, GOAWAY or a closed connection), which a reader
task notices at once: :meth:`ClientStreamCall.send` then raises
:class:`~proxyd.worker.grpc_unary.GrpcCallError` and the caller opens a new call.

The reader and the sender share the connection: bytes h2 has to send are taken and
written under one lock, so that frames leave in the order h2 made them.
"""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

from proxyd.worker.grpc_unary import GrpcCallError

STREAM_ID = 1  # the connection's one call


class ClientStreamCall:
    """One client-streaming call on its own connection."""

    __slots__ = ("sock", "h2", "ended", "reason", "window", "lock")

    def __init__(self, sock: trio.SocketStream) -> None:
        self.sock = sock
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        # True once the peer ended the call (``reason`` says how) or the connection broke.
        self.ended = False
        self.reason = ""
        self.window = trio.Event()  # set when the peer opens its windows (or the call ends)
        self.lock = trio.Lock()

    @classmethod
    async def open(cls, host: str, port: int, authority: str, method: str) -> ClientStreamCall:
        """A new call of ``method`` on a new connection to ``host``:``port`` (the caller
        bounds the time). Raises OSError."""
        call = cls(await trio.open_tcp_stream(host, port))
        conn = call.h2
        conn.initiate_connection()
        conn.send_headers(
            STREAM_ID,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", method.encode()),
                (b":authority", authority.encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ],
        )
        try:
            await call._flush()
        except BaseException:
            await call.aclose()
            raise
        trio.lowlevel.spawn_system_task(call._read)
        return call

    async def send(self, message: bytes) -> None:
        """Send one request message. Raises GrpcCallError when the call is over."""
        body = memoryview(b"\x00" + struct.pack(">I", len(message)) + message)
        conn = self.h2
        try:
            while body:
                if self.ended:
                    raise GrpcCallError(self.reason)
                size = min(conn.local_flow_control_window(STREAM_ID), conn.max_outbound_frame_size)
                if size <= 0:
                    self.window = trio.Event()
                    await self.window.wait()
                    continue
                conn.send_data(STREAM_ID, bytes(body[:size]))
                body = body[size:]
                await self._flush()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._end(f"connection broken: {exc!r}")
            raise GrpcCallError(self.reason) from None
        except h2.exceptions.H2Error as exc:
            self._end(f"HTTP/2: {exc}")
            raise GrpcCallError(self.reason) from None

    async def aclose(self) -> None:
        self._end(self.reason or "closed")
        with trio.CancelScope(shield=True):
            await self.sock.aclose()

    def _end(self, reason: str) -> None:
        if not self.ended:
            self.ended = True
            self.reason = reason
        self.window.set()

    async def _flush(self) -> None:
        async with self.lock:
            out = self.h2.data_to_send()
            if out:
                await self.sock.send_all(out)

    async def _read(self) -> None:
        """Read the peer's frames until the call ends (a system task of the worker: it
        must not raise)."""
        try:
            while not self.ended:
                data = await self.sock.receive_some(65536)
                if not data:
                    self._end("connection closed by the peer")
                    break
                for event in self.h2.receive_data(data):
                    self._event(event)
                await self._flush()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._end(f"connection broken: {exc!r}")
        except h2.exceptions.H2Error as exc:
            self._end(f"HTTP/2 protocol error from the peer: {exc}")
        except Exception as exc:  # noqa: BLE001 - a system task that raised would end the worker
            self._end(f"unexpected from the peer: {exc!r}")
        finally:
            with trio.CancelScope(shield=True):
                await self.sock.aclose()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._end(f"connection ended by the peer: {event}")
        elif isinstance(event, h2.events.StreamReset):
            self._end(f"call reset by the peer: {event}")
        elif isinstance(event, h2.events.TrailersReceived | h2.events.StreamEnded):
            self._end("call ended by the peer")
        elif isinstance(event, h2.events.ResponseReceived):
            if any(name == b"grpc-status" for name, _ in event.headers):
                self._end("call ended by the peer (trailers only)")
        elif isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
