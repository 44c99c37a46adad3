"""One gRPC bidirectional-streaming call over one HTTP/2 connection, on trio and ``h2``.

The master's xDS client (ADS and the per-type SotW streams) sits on this module: it opens
one call with :func:`open_stream`, sends serialized ``DiscoveryRequest`` messages and
receives serialized ``DiscoveryResponse`` messages. Nothing here knows about xDS; it moves
length-prefixed messages and reports how the call ended.

* Plaintext HTTP/2 with prior knowledge (``:scheme http``), ``te: trailers``,
  ``content-type: application/grpc``; uncompressed messages only (a message with the
  compressed flag set ends the call with ``INTERNAL``).
* Flow control both ways: received bytes are handed back to the server once every
  complete message has been taken by :meth:`GrpcStream.receive` (so a slow reader holds
  the server back instead of buffering without bound, while a single message larger
  than the window still flows); :meth:`GrpcStream.send` waits for the server's window.
* Every way a call can end is a :class:`GrpcError` from :meth:`GrpcStream.receive`, after
  the messages that arrived before it: trailers (their ``grpc-status``, ``0`` included),
  a trailers-only answer, a non-200 HTTP status, RST_STREAM, GOAWAY, a lost connection,
  an oversized or malformed message. A failed connect raises it from :func:`open_stream`.

Resource handling: the connection, a reader task and a writer task live inside the
``async with open_stream(...)`` block; leaving the block cancels a call that is still
open (RST_STREAM CANCEL, GOAWAY) and closes the socket.
"""

from __future__ import annotations

import contextlib
import enum
import struct
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trio
from h2.errors import ErrorCodes

from proxyd import pipes
from proxyd.errors import ProxydError

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# What the server may send before we hand bytes back; larger than h2's 64 KiB default so a
# response of several MB needs a handful of round trips, not hundreds.
RECEIVE_WINDOW_BYTES = 4 * 1024 * 1024
RECEIVE_CHUNK_BYTES = 256 * 1024
CLOSE_TIMEOUT_S = 1.0
_PREFIX = struct.Struct(">BI")  # compressed flag, message length
_FRAME_HEADER_BYTES = 9


class Status(enum.IntEnum):
    """gRPC status codes (grpc/doc/statuscodes.md)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# grpc/doc/http-grpc-status-mapping.md: an HTTP status other than 200 without grpc-status.
_HTTP_TO_STATUS = {
    400: Status.INTERNAL,
    401: Status.UNAUTHENTICATED,
    403: Status.PERMISSION_DENIED,
    404: Status.UNIMPLEMENTED,
    429: Status.UNAVAILABLE,
    502: Status.UNAVAILABLE,
    503: Status.UNAVAILABLE,
    504: Status.UNAVAILABLE,
}

# The same document: RST_STREAM error code → status.
_RESET_TO_STATUS: dict[int, Status] = {
    ErrorCodes.REFUSED_STREAM: Status.UNAVAILABLE,
    ErrorCodes.CANCEL: Status.CANCELLED,
    ErrorCodes.ENHANCE_YOUR_CALM: Status.RESOURCE_EXHAUSTED,
    ErrorCodes.INADEQUATE_SECURITY: Status.PERMISSION_DENIED,
}


class GrpcError(ProxydError):
    """A gRPC call ended: ``status`` is the grpc-status (``0`` for OK), ``message`` why.

    Transport failures (connect refused, connection lost, GOAWAY) are ``UNAVAILABLE``, as
    in gRPC's own clients.
    """

    def __init__(self, status: int, message: str = "") -> None:
        self.status = status
        self.message = message
        try:
            name = Status(status).name
        except ValueError:
            name = str(status)
        super().__init__(f"gRPC status {name}: {message}" if message else f"gRPC status {name}")

    def copy(self) -> GrpcError:
        return GrpcError(self.status, self.message)


def encode_message(message: bytes) -> bytes:
    """One uncompressed gRPC message with its 5-byte length prefix."""
    return _PREFIX.pack(0, len(message)) + message


class MessageDecoder:
    """Splits a gRPC response body into messages; sans-IO (bytes in, messages out).

    Messages may span many DATA frames and one frame may hold several messages. A length
    prefix over ``max_message_bytes`` is refused before any of the body is buffered.
    """

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add body bytes; return the messages they completed. Raises :class:`GrpcError`."""
        self._buffer += data
        messages: list[bytes] = []
        while len(self._buffer) >= _PREFIX.size:
            compressed, length = _PREFIX.unpack_from(self._buffer)
            if compressed == 1:
                raise GrpcError(Status.INTERNAL, "compressed message, but no grpc-encoding")
            if compressed != 0:
                raise GrpcError(Status.INTERNAL, f"invalid compressed flag {compressed}")
            if length > self.max_message_bytes:
                raise GrpcError(
                    Status.RESOURCE_EXHAUSTED,
                    f"message of {length} bytes exceeds the limit of {self.max_message_bytes}",
                )
            end = _PREFIX.size + length
            if len(self._buffer) < end:
                break
            messages.append(bytes(self._buffer[_PREFIX.size : end]))
            del self._buffer[:end]
        return messages

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete message; non-zero at the end of the body is an error."""
        return len(self._buffer)


def status_from_headers(headers: dict[bytes, bytes]) -> GrpcError | None:
    """The call's end from trailers (or trailers-only headers), ``None`` without grpc-status."""
    raw = headers.get(b"grpc-status")
    if raw is None:
        return None
    try:
        status = int(raw)
    except ValueError:
        return GrpcError(Status.UNKNOWN, f"invalid grpc-status {raw!r}")
    message = unquote(headers.get(b"grpc-message", b"").decode("latin-1"), errors="replace")
    return GrpcError(status, message)


def request_headers(
    method: str, authority: str, metadata: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The HEADERS of a call to ``method`` (``/package.Service/Method``)."""
    path = method if method.startswith("/") else "/" + method
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", authority),
        ("te", "trailers"),
        ("content-type", "application/grpc"),
        ("grpc-accept-encoding", "identity"),
        ("user-agent", "proxyd"),
    ]
    reserved = {name for name, _ in headers}
    for name, value in metadata:
        name = name.lower()
        if name.startswith(":") or name in reserved or name.startswith("grpc-"):
            raise ValueError(f"metadata may not set reserved header {name!r}")
        headers.append((name, value))
    return headers


class GrpcStream:
    """The client side of one streaming call; made by :func:`open_stream`."""

    def __init__(
        self,
        sock: trio.abc.Stream,
        conn: h2.connection.H2Connection,
        stream_id: int,
        max_message_bytes: int,
    ) -> None:
        self._sock = sock
        self._conn = conn
        self._stream_id = stream_id
        self._max_message_bytes = max_message_bytes
        self._decoder = MessageDecoder(max_message_bytes)
        self._messages: deque[bytes] = deque()
        self._unacknowledged = 0  # flow-controlled bytes received, not yet handed back
        self._headers_seen = False
        self._ended: GrpcError | None = None  # how the call ended, once it has
        self._half_closed = False
        self._broken = False  # the socket failed; nothing more can be written
        self._writing = False  # the writer task is running (not cancelled or done)
        self._changed = trio.Event()  # replaced each time something changes
        self._outbound = trio.Event()  # set when h2 has bytes for the writer
        self._queued = 0  # sequence of the last change to h2's outbound buffer
        self._written = 0  # sequence the writer has put on the socket
        self._send_lock = trio.Lock()  # one message's frames at a time

    # -- the caller's side ---------------------------------------------------------------

    async def send(self, message: bytes) -> None:
        """Send one serialized message; returns when it is on the socket.

        Raises :class:`GrpcError` if the call has ended, ``trio.ClosedResourceError``
        after :meth:`close`.
        """
        if len(message) > self._max_message_bytes:
            raise GrpcError(
                Status.RESOURCE_EXHAUSTED,
                f"message of {len(message)} bytes exceeds the limit of {self._max_message_bytes}",
            )
        async with self._send_lock:
            data = memoryview(encode_message(message))
            while data:
                self._raise_if_unusable()
                try:
                    window = self._conn.local_flow_control_window(self._stream_id)
                except h2.exceptions.StreamClosedError:
                    self._end(GrpcError(Status.INTERNAL, "stream closed while sending"))
                    continue
                size = min(window, self._conn.max_outbound_frame_size, len(data))
                if size <= 0:
                    await self._wait_changed()
                    continue
                self._conn.send_data(self._stream_id, data[:size].tobytes())
                data = data[size:]
                self._kick_writer()
            await self._wait_written(self._queued)

    async def receive(self) -> bytes:
        """The next message; raises :class:`GrpcError` once the call has ended."""
        await trio.lowlevel.checkpoint()
        while True:
            if self._messages:
                message = self._messages.popleft()
                if not self._messages:
                    self._acknowledge()
                return message
            if self._ended is not None:
                raise self._ended.copy()
            await self._wait_changed()

    async def close(self) -> None:
        """Half-close: tell the server no more messages follow (END_STREAM). Idempotent.

        Messages can still be received until the server ends the call.
        """
        async with self._send_lock:
            if self._half_closed:
                return
            self._half_closed = True
            if self._ended is not None or self._broken:
                return
            self._conn.end_stream(self._stream_id)
            self._kick_writer()
            await self._wait_written(self._queued)

    @property
    def ended(self) -> GrpcError | None:
        """How the call ended, ``None`` while it is open; messages may still be waiting."""
        return self._ended

    # -- internals -----------------------------------------------------------------------

    def _raise_if_unusable(self) -> None:
        if self._half_closed:
            raise trio.ClosedResourceError("send after close()")
        if self._ended is not None:
            raise self._ended.copy()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _wait_changed(self) -> None:
        await self._changed.wait()

    async def _wait_written(self, sequence: int) -> None:
        while self._written < sequence:
            if self._ended is not None:
                raise self._ended.copy()
            await self._wait_changed()

    def _end(self, error: GrpcError) -> None:
        if self._ended is None:
            self._ended = error
        self._notify()

    def _kick_writer(self) -> None:
        self._queued += 1
        self._outbound.set()

    def _acknowledge(self) -> None:
        if self._unacknowledged and self._ended is None:
            self._conn.acknowledge_received_data(self._unacknowledged, self._stream_id)
            self._kick_writer()
        self._unacknowledged = 0

    async def _write_loop(self) -> None:
        self._writing = True
        try:
            await self._write_forever()
        finally:
            self._writing = False

    async def _write_forever(self) -> None:
        while True:
            await self._outbound.wait()
            self._outbound = trio.Event()
            sequence = self._queued
            data = self._conn.data_to_send()
            if data:
                try:
                    await self._sock.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._broken = True
                    self._end(GrpcError(Status.UNAVAILABLE, f"connection lost: {exc}"))
                    return
            self._written = sequence
            self._notify()

    async def _read_loop(self) -> None:
        inbound = bytearray()
        while self._ended is None:
            try:
                data = await self._sock.receive_some(RECEIVE_CHUNK_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._broken = True
                self._end(GrpcError(Status.UNAVAILABLE, f"connection lost: {exc}"))
                return
            if not data:
                self._end(GrpcError(Status.UNAVAILABLE, "connection closed by the server"))
                return
            inbound += data
            # h2 drops every event of a receive_data() call that ends in an error, and a
            # GOAWAY makes it refuse any frame after it; so feed it whole frames one by one
            # to keep what came before (a last response, the GOAWAY's code and reason).
            while self._ended is None and (
                end := _frame_end(inbound, self._conn.max_inbound_frame_size)
            ):
                frame = bytes(inbound[:end])
                del inbound[:end]
                try:
                    events = self._conn.receive_data(frame)
                except h2.exceptions.ProtocolError as exc:
                    self._end(GrpcError(Status.INTERNAL, f"HTTP/2 protocol error: {exc!r}"))
                    break
                for event in events:
                    if self._ended is None:
                        self._handle(event)
            self._kick_writer()  # SETTINGS and PING acks, window updates, a GOAWAY of ours
            self._notify()

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self._on_headers(dict(event.headers or ()), bool(event.stream_ended))
        elif isinstance(event, h2.events.DataReceived):
            self._unacknowledged += event.flow_controlled_length or 0
            self._on_data(event.data or b"")
        elif isinstance(event, h2.events.TrailersReceived):
            ended = status_from_headers(dict(event.headers or ()))
            self._end(ended or GrpcError(Status.UNKNOWN, "trailers without grpc-status"))
        elif isinstance(event, h2.events.StreamEnded):
            if self._decoder.pending_bytes:
                self._end(GrpcError(Status.INTERNAL, "stream ended inside a message"))
            else:
                self._end(GrpcError(Status.UNKNOWN, "stream ended without grpc-status"))
        elif isinstance(event, h2.events.StreamReset):
            code = event.error_code
            status = _RESET_TO_STATUS.get(int(code or 0), Status.INTERNAL)
            name = code.name if isinstance(code, ErrorCodes) else code
            self._end(GrpcError(status, f"stream reset by the server ({name})"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            goaway_code = event.error_code
            goaway = goaway_code.name if isinstance(goaway_code, ErrorCodes) else goaway_code
            detail = f": {event.additional_data!r}" if event.additional_data else ""
            self._end(GrpcError(Status.UNAVAILABLE, f"server sent GOAWAY ({goaway}){detail}"))
        # PINGs and SETTINGS are acknowledged by h2 itself; window updates wake send()
        # through the _notify() after each batch; other events need nothing.

    def _on_headers(self, headers: dict[bytes, bytes], stream_ended: bool) -> None:
        self._headers_seen = True
        http_status = headers.get(b":status", b"")
        ended = status_from_headers(headers)
        if ended is not None:  # trailers-only
            self._end_call(ended)
            return
        if http_status != b"200":
            code = int(http_status) if http_status.isdigit() else 0
            status = _HTTP_TO_STATUS.get(code, Status.UNKNOWN)
            self._end_call(GrpcError(status, f"HTTP status {http_status.decode('latin-1')}"))
            return
        content_type = headers.get(b"content-type", b"")
        if not content_type.startswith(b"application/grpc"):
            self._end_call(GrpcError(Status.UNKNOWN, f"content-type {content_type!r}"))
            return
        if stream_ended:
            self._end(GrpcError(Status.UNKNOWN, "stream ended without grpc-status"))

    def _on_data(self, data: bytes) -> None:
        if not self._headers_seen:
            self._end_call(GrpcError(Status.INTERNAL, "DATA before response headers"))
            return
        try:
            self._messages.extend(self._decoder.feed(data))
        except GrpcError as exc:
            self._end_call(exc)
            return
        if not self._messages:
            self._acknowledge()  # only part of a message: let the rest come

    def _end_call(self, error: GrpcError) -> None:
        """End the call from our side because of what the server sent."""
        if self._ended is None:
            try:
                self._conn.reset_stream(self._stream_id, ErrorCodes.CANCEL)
            except h2.exceptions.ProtocolError:
                pass  # the stream or connection is already closed: nothing to reset
        self._end(error)

    async def _shutdown(self) -> None:
        """Cancel a call still open, send GOAWAY and wait (briefly) for it to be written."""
        if self._broken:
            return
        try:
            if self._ended is None:
                self._conn.reset_stream(self._stream_id, ErrorCodes.CANCEL)
            self._conn.close_connection()
        except h2.exceptions.ProtocolError:
            pass  # h2 is already closed (a GOAWAY came in); there is nothing to add
        if not self._writing:
            # Cancelled from outside: the writer is gone, so write the goodbye here.
            data = self._conn.data_to_send()
            if data:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._sock.send_all(data)
            return
        self._kick_writer()
        sequence = self._queued
        while self._written < sequence and not self._broken:
            await self._wait_changed()


def _frame_end(buffer: bytearray, max_frame_bytes: int) -> int:
    """The length of the first HTTP/2 frame in ``buffer`` if it is whole, else 0.

    A frame over ``max_frame_bytes`` yields just its header, for h2 to refuse it.
    """
    if len(buffer) < _FRAME_HEADER_BYTES:
        return 0
    length = int.from_bytes(buffer[:3], "big")
    if length > max_frame_bytes:
        return _FRAME_HEADER_BYTES
    end = _FRAME_HEADER_BYTES + length
    return end if len(buffer) >= end else 0


async def _connect(host: str, port: int, timeout_s: float) -> trio.SocketStream:
    try:
        with trio.fail_after(timeout_s):
            return await pipes.open_stream(host, port)
    except trio.TooSlowError:
        raise GrpcError(
            Status.UNAVAILABLE,
            f"connect to {pipes.host_label(host, port)} timed out after {timeout_s} s",
        ) from None
    except OSError as exc:
        raise GrpcError(
            Status.UNAVAILABLE, f"connect to {pipes.host_label(host, port)} failed: {exc}"
        ) from exc


@asynccontextmanager
async def open_stream(
    host: str,
    port: int,
    method: str,
    *,
    authority: str = "",
    metadata: Sequence[tuple[str, str]] = (),
    connect_timeout_s: float = 5.0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> AsyncIterator[GrpcStream]:
    """Connect to ``host:port`` (the pipe ``host`` when ``port`` is 0) and start a
    streaming call to ``method``.

    ``method`` is ``/package.Service/Method``; ``authority`` defaults to ``host:port``.
    A received message over ``max_message_bytes`` ends the call ``RESOURCE_EXHAUSTED``;
    :meth:`GrpcStream.send` refuses a larger one with that status.
    Raises :class:`GrpcError` (``UNAVAILABLE``) when the connection cannot be made within
    ``connect_timeout_s``.
    """
    headers = request_headers(method, authority or f"{host}:{port}", metadata)
    sock = await _connect(host, port, connect_timeout_s)
    try:
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        conn.initiate_connection()
        conn.increment_flow_control_window(RECEIVE_WINDOW_BYTES - 65535)
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, headers)
        conn.increment_flow_control_window(RECEIVE_WINDOW_BYTES - 65535, stream_id)
        stream = GrpcStream(sock, conn, stream_id, max_message_bytes)
        stream._kick_writer()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream._write_loop)
                nursery.start_soon(stream._read_loop)
                try:
                    yield stream
                finally:
                    with trio.move_on_after(CLOSE_TIMEOUT_S, shield=True):
                        await stream._shutdown()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The tasks never raise on purpose: a single exception is the caller's own.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
    finally:
        await trio.aclose_forcefully(sock)
