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

from proxyd.worker.grpc_unary import GrpcCallError, unary_call_message


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
