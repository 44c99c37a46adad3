"""proxyd.worker.grpc_unary against a real gRPC server (grpcio) on loopback: a message
larger than HTTP/2's initial flow-control windows arrives whole, metadata goes with it,
and the call's status comes back (also a failing one)."""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
import trio

from proxyd.worker.grpc_unary import unary_call

SERVICE = "test.Echo"


def _server(got: list[tuple[int, dict[str, str]]], status: grpc.StatusCode | None) -> Any:
    lock = threading.Lock()

    def call(request: bytes, context: Any) -> bytes:
        with lock:
            got.append((len(request), dict(context.invocation_metadata())))
        if status is not None:
            context.abort(status, "no")
        return b"ok"

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _call(port: int, message: bytes) -> int:
    async def main() -> int:
        with trio.fail_after(10):
            return await unary_call(
                "127.0.0.1", port, "collector", f"/{SERVICE}/Call", message, (("x-key", "v"),)
            )

    return trio.run(main)


def test_a_large_message_is_sent_within_the_flow_control_windows() -> None:
    got: list[tuple[int, dict[str, str]]] = []
    server, port = _server(got, None)
    try:
        assert _call(port, b"m" * 300_000) == 0
    finally:
        server.stop(None)
    assert got[0][0] == 300_000
    assert got[0][1]["x-key"] == "v"


def test_a_failing_call_gives_its_status() -> None:
    got: list[tuple[int, dict[str, str]]] = []
    server, port = _server(got, grpc.StatusCode.UNAVAILABLE)
    try:
        assert _call(port, b"small") == grpc.StatusCode.UNAVAILABLE.value[0]
    finally:
        server.stop(None)
