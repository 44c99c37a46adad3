"""proxyd.worker.grpc_unary.unary_call_message (the ext_authz filter's Check call):
the response message of a real grpcio server comes back with the status, and a peer
that breaks HTTP/2 or the connection makes a GrpcCallError, never another exception."""

from __future__ import annotations

import socket
import threading
from concurrent import futures
from typing import Any

import grpc
import pytest
import trio

from proxyd.worker.grpc_unary import GrpcCallError, GrpcConnections, unary_call_message


def test_the_response_message_comes_back() -> None:
    def call(request: bytes, context: Any) -> bytes:
        return b"echo:" + request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:

        async def main() -> tuple[int, bytes]:
            with trio.fail_after(5):
                return await unary_call_message(
                    "127.0.0.1", port, "echo", "/test.Echo/Call", b"x" * 100_000
                )

        status, message = trio.run(main)
    finally:
        server.stop(None)
    assert status == 0
    assert message == b"echo:" + b"x" * 100_000


@pytest.mark.parametrize("reply", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"\x00" * 64, b""])
def test_a_peer_that_is_not_grpc_is_a_call_error(reply: bytes) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            if reply:
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def main() -> None:
        with trio.fail_after(5):
            await unary_call_message("127.0.0.1", port, "a", "/s/M", b"m")

    try:
        with pytest.raises(GrpcCallError):
            trio.run(main)
    finally:
        thread.join(5)
        listener.close()


def _echo_server(port: int = 0) -> tuple[Any, int, list[str]]:
    peers: list[str] = []

    def call(request: bytes, context: Any) -> bytes:
        peers.append(context.peer())
        return b"echo:" + request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, port, peers


def test_kept_connections_carry_one_call_after_another() -> None:
    server, port, peers = _echo_server()
    connections = GrpcConnections()

    async def main() -> list[tuple[int, bytes]]:
        out = []
        for i in range(3):
            with trio.fail_after(5):
                out.append(
                    await connections.call("127.0.0.1", port, "e", "/test.Echo/Call", b"%d" % i)
                )
        await connections.aclose()
        return out

    try:
        results = trio.run(main)
    finally:
        server.stop(None)
    assert results == [(0, b"echo:0"), (0, b"echo:1"), (0, b"echo:2")]
    assert len(set(peers)) == 1  # one connection (one client port) for the three


def test_a_kept_connection_the_peer_closed_is_replaced() -> None:
    servers = [_echo_server()]
    port = servers[0][1]
    connections = GrpcConnections()

    async def main() -> list[tuple[int, bytes]]:
        out = []
        for _ in range(2):
            with trio.fail_after(5):
                out.append(await connections.call("127.0.0.1", port, "e", "/test.Echo/Call", b"x"))
            # The peer goes away (closing the kept connection) and comes back.
            servers[-1][0].stop(None).wait()
            servers.append(_echo_server(port))
        await connections.aclose()
        return out

    try:
        results = trio.run(main)
    finally:
        servers[-1][0].stop(None)
    assert results == [(0, b"echo:x"), (0, b"echo:x")]
    assert [len(s[2]) for s in servers] == [1, 1, 0]
