"""gRPC through an HTTP/2 cluster: a real grpcio client and a real grpcio server, with
real Envoy and real proxyd on the same YAML.

Listener ``ingress`` (codec AUTO: the grpcio client speaks prior-knowledge h2c) routes
``/test.Echo/`` to cluster ``grpc`` (explicit HTTP/2 to one grpcio server),
``/test.Slow/`` to the same cluster with a 0.3 s route timeout, ``/test.Deadline/``
with ``max_stream_duration.grpc_timeout_header_max``, ``/test.Legacy/`` with the
deprecated ``max_grpc_timeout``, and ``/test.Dead/`` to cluster ``dead`` (a port
nobody serves), ``/test.Empty/`` to cluster ``empty`` (no hosts). Cases: unary (initial
and trailing metadata), an error status with its message and custom trailing metadata,
server, client and bidirectional streaming, a 3 MiB message each way, a client
deadline shorter than the call, a route timeout, the timeout the upstream is told
with grpc_timeout_header_max and max_grpc_timeout, a call to the dead cluster and
one to the empty one (proxyd's own trailers-only replies): what the client saw
(status code, details, messages, metadata) must be the same through both, and the
``cluster.grpc.*`` request stats.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import run_pair
from tests.support import bootstrap, free_port, http_listener, static_cluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
BIG = 3 * 1024 * 1024


def _ident(b: bytes) -> bytes:
    return b


class Echo:
    """The grpcio server's handlers (messages are raw bytes)."""

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.send_initial_metadata((("x-initial", "i1"),))
        if request == b"fail":
            context.set_trailing_metadata((("x-why", "because"),))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad thing")
        context.set_trailing_metadata((("x-trail", "t1"),))
        if len(request) >= BIG:
            return b"L" * len(request)
        return request[::-1]

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(request)):
            yield b"m%d" % i

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return b",".join(requests)

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for r in requests:
            yield b"echo:" + r

    def remaining(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """The deadline the call came with (its grpc-timeout), coarsely."""
        left = context.time_remaining()
        if left is None or left > 100:
            return b"none"
        return b"<=0.3" if left <= 0.3 else b"<=5" if left <= 5 else b">5"

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        end = time.monotonic() + 2
        while context.is_active() and time.monotonic() < end:
            time.sleep(0.02)
        return b"late"


def start_server() -> tuple[grpc.Server, int]:
    echo = Echo()
    unary = lambda f: grpc.unary_unary_rpc_method_handler(f, _ident, _ident)  # noqa: E731
    handlers = {
        "Unary": unary(echo.unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(echo.server_stream, _ident, _ident),
        "ClientStream": grpc.stream_unary_rpc_method_handler(echo.client_stream, _ident, _ident),
        "Bidi": grpc.stream_stream_rpc_method_handler(echo.bidi, _ident, _ident),
        "Slow": unary(echo.slow),
        "Remaining": unary(echo.remaining),
    }
    server = grpc.server(
        ThreadPoolExecutor(max_workers=8),
        options=[
            ("grpc.max_receive_message_length", 8 << 20),
            ("grpc.max_send_message_length", 8 << 20),
        ],
    )
    for service in ("test.Echo", "test.Slow", "test.Deadline", "test.Legacy", "test.Dead"):
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def config(grpc_port: int) -> str:
    def route(prefix: str, cluster: str, **extra: Any) -> dict[str, Any]:
        return {"match": {"prefix": prefix}, "route": {"cluster": cluster, **extra}}

    routes = {
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    route("/test.Slow/", "grpc", timeout="0.3s"),
                    route(
                        "/test.Deadline/",
                        "grpc",
                        max_stream_duration={"grpc_timeout_header_max": "0.25s"},
                    ),
                    route("/test.Legacy/", "grpc", max_grpc_timeout="0.25s"),
                    route("/test.Dead/", "dead"),
                    route("/test.Empty/", "empty"),
                    route("/", "grpc"),
                ],
            }
        ]
    }
    clusters = []
    for name, port in (("grpc", grpc_port), ("dead", free_port()), ("empty", 0)):
        c = static_cluster(name, [port] if port else [])
        c["typed_extension_protocol_options"] = {
            UPSTREAM_HTTP: {
                "@type": f"type.googleapis.com/{UPSTREAM_HTTP}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
        clusters.append(c)
    return yaml.safe_dump(bootstrap([http_listener("ingress", 0, routes)], clusters))


def _meta(md: Any) -> list[tuple[str, str]]:
    return sorted(
        (k, v) for k, v in (md or ()) if k.startswith("x-") and not k.startswith("x-envoy")
    )


def _error(exc: grpc.RpcError) -> dict[str, Any]:
    return {
        "code": exc.code().name,
        "details": exc.details(),
        "trailing": _meta(exc.trailing_metadata()),
    }


def play(port_of: Any) -> dict[str, Any]:
    port = port_of("ingress")
    out: dict[str, Any] = {}
    opts = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=opts) as ch:

        def unary(method: str, request: bytes, timeout: float | None = 10) -> Any:
            call = ch.unary_unary(method, _ident, _ident)
            try:
                resp, c = call.with_call(request, timeout=timeout)
            except grpc.RpcError as exc:
                return _error(exc)
            return {
                "resp": resp if len(resp) < 100 else len(resp),
                "code": c.code().name,
                "initial": _meta(c.initial_metadata()),
                "trailing": _meta(c.trailing_metadata()),
            }

        out["unary"] = unary("/test.Echo/Unary", b"hello")
        out["error"] = unary("/test.Echo/Unary", b"fail")
        out["large"] = unary("/test.Echo/Unary", b"x" * BIG)

        def caught(call: Any) -> Any:
            try:
                return call()
            except grpc.RpcError as exc:  # shown by the comparison
                return _error(exc)

        stream = ch.unary_stream("/test.Echo/ServerStream", _ident, _ident)
        out["server_stream"] = caught(lambda: list(stream(b"5", timeout=10)))
        cs = ch.stream_unary("/test.Echo/ClientStream", _ident, _ident)
        out["client_stream"] = caught(lambda: cs(iter([b"a", b"bb", b"ccc", b"dddd"]), timeout=10))  # fmt: skip
        bidi = ch.stream_stream("/test.Echo/Bidi", _ident, _ident)
        out["bidi"] = caught(lambda: list(bidi(iter([b"1", b"2", b"3"]), timeout=10)))
        # The client's own deadline (grpc-timeout) runs out first.
        out["client_deadline"] = {
            k: v for k, v in unary("/test.Echo/Slow", b"", 0.3).items() if k == "code"
        }
        # The route's: a route timeout, grpc_timeout_header_max, max_grpc_timeout.
        out["route_timeout"] = unary("/test.Slow/Slow", b"")
        # (what the upstream was told: the server's own deadline would race proxyd's)
        out["header_max"] = unary("/test.Deadline/Remaining", b"", 5)
        out["header_under_max"] = unary("/test.Deadline/Remaining", b"", 0.15)
        out["legacy_max"] = unary("/test.Legacy/Remaining", b"", 5)
        out["legacy_no_timeout"] = unary("/test.Legacy/Remaining", b"")
        dead = unary("/test.Dead/Unary", b"x")
        dead["details"] = dead.get("details", "")[:60]
        out["no_upstream"] = dead
        out["no_healthy_upstream"] = unary("/test.Empty/Unary", b"x")
    return out


def pick(stats: dict[str, int]) -> dict[str, int]:
    # (not upstream_rq_200: whether the server's DEADLINE_EXCEEDED of the client's own
    # deadline is counted races the client's RST_STREAM, in Envoy as in proxyd)
    names = ("upstream_rq_503", "upstream_rq_504", "upstream_rq_timeout", "upstream_cx_http2_total")  # fmt: skip
    return {n: stats.get(f"cluster.grpc.{n}", 0) for n in names}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server, port = start_server()
    try:
        yield run_pair(config(port), tmp_path_factory.mktemp("grpc"), play, pick)
    finally:
        server.stop(0)


CASES = (
    "unary", "error", "large", "server_stream", "client_stream", "bidi", "client_deadline",
    "route_timeout", "header_max", "header_under_max", "legacy_max", "legacy_no_timeout",
    "no_upstream", "no_healthy_upstream",
)  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_grpc_case(pair: Any, case: str) -> None:
    assert pair.proxyd.replies[case] == pair.envoy.replies[case]


def test_grpc_stats(pair: Any) -> None:
    assert pair.proxyd.stats == pair.envoy.stats
