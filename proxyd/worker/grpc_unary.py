"""One unary gRPC call from a worker (the OpenTelemetry tracer's OTLP export over
``grpc_service.envoy_grpc``, the ext_authz filter's ``Authorization/Check``): a new HTTP/2 connection (h2, sans-IO) per call, the
request framed as gRPC (``0`` + 4-byte length + message), sent within the peer's flow
control windows, and the call's ``grpc-status`` read from the trailers (or from a
trailers-only response), with the response message when the caller wants it. The worker's own counterpart of the master's xDS client
(``proxyd.master.xds.grpc``), which workers must not import."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio

MAX_MESSAGE = 4 << 20  # gRPC's default maximum receive size


class GrpcCallError(Exception):
    """The call did not complete (connection closed or reset before a status)."""


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
    with ``message``. Raises OSError, GrpcCallError (also for a response message that
    is compressed or not framed as gRPC)."""
    try:
        return await _call(host, port, authority, method, message, metadata)
    except trio.BrokenResourceError as exc:  # the peer reset the connection mid-call
        raise GrpcCallError(f"connection broken: {exc!r}") from None


async def _call(
    host: str,
    port: int,
    authority: str,
    method: str,
    message: bytes,
    metadata: Sequence[tuple[str, str]],
) -> tuple[int, bytes]:
    sock = await trio.open_tcp_stream(host, port)
    async with sock:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
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
                raise GrpcCallError("connection closed before the call's status")
            try:
                events = conn.receive_data(data)
            except h2.exceptions.H2Error as exc:
                raise GrpcCallError(f"HTTP/2 protocol error from the peer: {exc}") from None
            for event in events:
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    for name, value in event.headers:
                        if name == b"grpc-status":
                            if not value.isdigit():
                                raise GrpcCallError(f"malformed grpc-status {value!r}")
                            status = int(value)
                elif isinstance(event, h2.events.DataReceived):
                    received += event.data
                    if len(received) > MAX_MESSAGE:
                        raise GrpcCallError("response message too large")
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
                elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    raise GrpcCallError(f"call ended by the peer: {event}")
        if status is None:
            raise GrpcCallError("no grpc-status")
        if not received:
            return status, b""
        if len(received) < 5 or received[0] != 0:
            raise GrpcCallError("response message not framed as uncompressed gRPC")
        (length,) = struct.unpack(">I", received[1:5])
        if len(received) < 5 + length:
            raise GrpcCallError("response message truncated")
        return status, bytes(received[5 : 5 + length])
