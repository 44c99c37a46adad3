"""``proxyd.master.xds.grpc`` against a hand-driven HTTP/2 server on a loopback socket.

grpcio never sends some of what a gRPC client must cope with (a non-200 status, a
compressed message, RST_STREAM after a message, a connection dropped mid-message, a
message cut into 1-byte frames), and it hides its flow-control windows; here the test
writes exactly the frames it wants with ``h2`` and watches what the client does.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection
import h2.events
import pytest
import trio
from h2.errors import ErrorCodes

from proxyd.master.xds.grpc import GrpcError, Status, encode_message, open_stream

METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
MiB = 1024 * 1024
OK_HEADERS = [(":status", "200"), ("content-type", "application/grpc")]


class ScriptedServer:
    """One HTTP/2 server connection whose frames the test sends by hand."""

    def __init__(self, sock: trio.SocketStream) -> None:
        self.sock = sock
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.stream_id = 0
        self.request_headers: dict[bytes, bytes] = {}
        self.request_body = bytearray()
        self.requested = trio.Event()
        self.request_ended = trio.Event()
        self.out_of_window = trio.Event()  # set when send_data had to wait for the client
        self.data_sent = 0
        self._window_changed = trio.Event()
        self._lock = trio.Lock()

    async def flush(self) -> None:
        async with self._lock:
            data = self.conn.data_to_send()
            if data:
                await self.sock.send_all(data)

    async def read_loop(self) -> None:
        try:
            await self._read_events()
        except trio.ClosedResourceError:
            pass  # the script closed the connection ("dropped")

    async def _read_events(self) -> None:
        while data := await self.sock.receive_some(65536):
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    self.stream_id = event.stream_id
                    self.request_headers = dict(event.headers)
                    self.requested.set()
                elif isinstance(event, h2.events.DataReceived):
                    self.request_body += event.data
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.StreamEnded):
                    self.request_ended.set()
                elif isinstance(event, h2.events.WindowUpdated):
                    self._window_changed.set()
                    self._window_changed = trio.Event()
            await self.flush()

    async def send_headers(self, headers: list[tuple[str, str]], end_stream: bool = False) -> None:
        self.conn.send_headers(self.stream_id, headers, end_stream=end_stream)
        await self.flush()

    async def send_data(self, data: bytes, frame_bytes: int = 16384) -> None:
        """Send ``data`` in DATA frames of at most ``frame_bytes``, within the windows."""
        while data:
            window = self.conn.local_flow_control_window(self.stream_id)
            size = min(window, frame_bytes, self.conn.max_outbound_frame_size, len(data))
            if size <= 0:
                self.out_of_window.set()
                await self._window_changed.wait()
                continue
            self.conn.send_data(self.stream_id, data[:size])
            self.data_sent += size
            data = data[size:]
            await self.flush()

    async def send_trailers(self, status: int, message: str = "") -> None:
        trailers = [("grpc-status", str(status))] + ([("grpc-message", message)] if message else [])
        await self.send_headers(trailers, end_stream=True)


Script = Callable[[ScriptedServer], Awaitable[None]]
Client = Callable[[int, "_Lazy"], Awaitable[None]]


def run_pair(script: Script, client: Client) -> None:
    """Run ``script`` as the server of one connection and ``client`` against it."""

    async def main() -> None:
        with trio.fail_after(30):
            listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
            port = listener.socket.getsockname()[1]
            accepted: list[ScriptedServer] = []
            ready = trio.Event()

            async def serve() -> None:
                async with await listener.accept() as sock:
                    server = ScriptedServer(sock)
                    accepted.append(server)
                    ready.set()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(server.read_loop)
                        await server.flush()
                        await server.requested.wait()
                        await script(server)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                try:
                    await client(port, _Lazy(ready, accepted))
                finally:
                    nursery.cancel_scope.cancel()
                    await listener.aclose()

    trio.run(main)


class _Lazy:
    """The scripted server: the client gets it with ``await lazy.get()`` after connecting."""

    def __init__(self, ready: trio.Event, accepted: list[ScriptedServer]) -> None:
        self._ready = ready
        self._accepted = accepted

    async def get(self) -> ScriptedServer:
        await self._ready.wait()
        return self._accepted[0]


async def ended(stream) -> GrpcError:
    with pytest.raises(GrpcError) as info:
        await stream.receive()
    return info.value


def test_request_headers_backpressure_and_half_close() -> None:
    messages = [bytes([n]) * MiB for n in range(20)]

    async def script(server: ScriptedServer) -> None:
        await server.send_headers(OK_HEADERS)
        for message in messages:
            await server.send_data(encode_message(message))
        await server.request_ended.wait()
        await server.send_trailers(0)

    async def client(port: int, lazy: _Lazy) -> None:
        async with open_stream("127.0.0.1", port, METHOD, authority="xds.test") as stream:
            server = await lazy.get()
            await stream.send(b"hello")
            # The client takes nothing yet: the server must run out of window well before
            # it has sent all 20 MiB, instead of the client buffering them.
            await server.out_of_window.wait()
            assert server.data_sent < 8 * MiB
            received = [await stream.receive() for _ in messages]
            assert received == messages
            await stream.close()
            assert (await ended(stream)).status == Status.OK
            headers = server.request_headers
            assert headers[b":method"] == b"POST"
            assert headers[b":scheme"] == b"http"
            assert headers[b":path"] == METHOD.encode()
            assert headers[b":authority"] == b"xds.test"
            assert headers[b"te"] == b"trailers"
            assert headers[b"content-type"] == b"application/grpc"
            assert bytes(server.request_body) == encode_message(b"hello")

    run_pair(script, client)


def test_messages_split_over_frames_and_packed_into_one() -> None:
    first, second, third = b"a" * 10, b"", b"c" * 300
    body = encode_message(first) + encode_message(second) + encode_message(third)

    async def script(server: ScriptedServer) -> None:
        await server.send_headers(OK_HEADERS)
        await server.send_data(body[:20], frame_bytes=20)  # two messages and a bit
        await server.send_data(body[20:], frame_bytes=1)  # the rest a byte at a time
        await server.send_trailers(0)

    async def client(port: int, lazy: _Lazy) -> None:
        async with open_stream("127.0.0.1", port, METHOD) as stream:
            assert [await stream.receive() for _ in range(3)] == [first, second, third]
            assert (await ended(stream)).status == Status.OK

    run_pair(script, client)


@pytest.mark.parametrize(
    ("script_name", "status", "message"),
    [
        ("http_503", Status.UNAVAILABLE, "HTTP status 503"),
        ("trailers_only", Status.PERMISSION_DENIED, "no access: 100%"),
        ("compressed", Status.INTERNAL, "compressed message, but no grpc-encoding"),
        ("reset", Status.UNAVAILABLE, "stream reset by the server (REFUSED_STREAM)"),
        ("dropped", Status.UNAVAILABLE, "connection closed by the server"),
        ("no_status", Status.UNKNOWN, "stream ended without grpc-status"),
        ("goaway", Status.UNAVAILABLE, "server sent GOAWAY (ENHANCE_YOUR_CALM): b'slow down'"),
    ],
)
def test_every_way_a_call_ends(script_name: str, status: Status, message: str) -> None:
    """Messages that arrived first are still received; then the end, as a GrpcError."""

    async def script(server: ScriptedServer) -> None:
        if script_name == "http_503":
            await server.send_headers([(":status", "503")], end_stream=True)
            return
        if script_name == "trailers_only":
            headers = [*OK_HEADERS, ("grpc-status", "7"), ("grpc-message", "no access: 100%25")]
            await server.send_headers(headers, end_stream=True)
            return
        await server.send_headers(OK_HEADERS)
        await server.send_data(encode_message(b"first"))
        if script_name == "compressed":
            await server.send_data(struct.pack(">BI", 1, 3) + b"zip")
        elif script_name == "reset":
            server.conn.reset_stream(server.stream_id, ErrorCodes.REFUSED_STREAM)
            await server.flush()
        elif script_name == "dropped":
            await server.send_data(encode_message(b"cut short")[:7])
            await server.sock.aclose()
        elif script_name == "no_status":
            server.conn.end_stream(server.stream_id)
            await server.flush()
        elif script_name == "goaway":
            server.conn.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, b"slow down")
            await server.flush()
        await trio.sleep_forever()  # until the client is done

    async def client(port: int, lazy: _Lazy) -> None:
        async with open_stream("127.0.0.1", port, METHOD) as stream:
            if script_name not in ("http_503", "trailers_only"):
                assert await stream.receive() == b"first"
            error = await ended(stream)
            assert (error.status, error.message) == (status, message)

    run_pair(script, client)
