"""The xDS client's transports against real servers.

* ``proxyd.master.xds.grpc`` against a grpcio server serving Envoy's
  AggregatedDiscoveryService (xds-protos), on a loopback port;
* ``proxyd.master.xds.http_client`` against ``http.server`` in a thread.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import trio
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from proxyd.master.xds.grpc import GrpcError, GrpcStream, Status, open_stream
from proxyd.master.xds.http_client import HttpClientError, post_json
from tests.support import free_port

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
MiB = 1024 * 1024


def big_response(count: int = 1000) -> discovery_pb2.DiscoveryResponse:
    """``count`` clusters of about 5 KB each: well over gRPC's 4 MiB default."""
    resources = []
    for i in range(count):
        cluster = cluster_pb2.Cluster(name=f"cluster-{i:04d}", alt_stat_name=f"{i:04d}" * 1250)
        resources.append(any_pb2.Any(type_url=CLUSTER_TYPE, value=cluster.SerializeToString()))
    return discovery_pb2.DiscoveryResponse(
        version_info="big", type_url=CLUSTER_TYPE, nonce="big", resources=resources
    )


class Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Answers each DiscoveryRequest; its ``type_url`` says how (see the branches)."""

    def __init__(self) -> None:
        self.metadata: list[tuple[str, str]] = []

    def StreamAggregatedResources(self, request_iterator, context):  # noqa: N802 (grpc's name)
        self.metadata = [(k, v) for k, v in context.invocation_metadata()]
        for n, request in enumerate(request_iterator):
            kind = request.type_url
            if kind == "abort":
                context.abort(grpc.StatusCode.UNAVAILABLE, "management server going away: 100%")
            elif kind == "finish":
                return
            elif kind == "big":
                yield big_response()
            elif kind == "burst":
                for i in range(50):
                    yield discovery_pb2.DiscoveryResponse(nonce=f"burst-{i}")
            else:  # echo, with the number of resource names asked for
                yield discovery_pb2.DiscoveryResponse(
                    version_info=f"{request.version_info}/{len(request.resource_names)}",
                    type_url=request.type_url,
                    nonce=str(n),
                )


@pytest.fixture
def ads_server() -> Iterator[tuple[grpc.Server, int, Ads]]:
    executor = ThreadPoolExecutor(max_workers=4)
    server = grpc.server(
        executor,
        options=[
            ("grpc.max_send_message_length", 64 * MiB),
            ("grpc.max_receive_message_length", 64 * MiB),
        ],
    )
    servicer = Ads()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield server, port, servicer
    server.stop(grace=None).wait(10)
    executor.shutdown(wait=True)


async def ask(stream: GrpcStream, **fields) -> discovery_pb2.DiscoveryResponse:
    await stream.send(discovery_pb2.DiscoveryRequest(**fields).SerializeToString())
    return discovery_pb2.DiscoveryResponse.FromString(await stream.receive())


def run(main) -> None:
    """Run ``main`` under trio with a deadline, so a hang fails the test instead."""

    async def bounded() -> None:
        with trio.fail_after(60):
            await main()

    trio.run(bounded)


# -- gRPC ------------------------------------------------------------------------------


def test_round_trips_on_one_stream_then_half_close_ends_with_ok(ads_server) -> None:
    _, port, servicer = ads_server

    async def main() -> None:
        metadata = [("x-node-id", "node-1")]
        async with open_stream("127.0.0.1", port, ADS, metadata=metadata) as stream:
            for n in range(5):
                response = await ask(stream, version_info=f"v{n}", type_url=CLUSTER_TYPE)
                assert (response.version_info, response.nonce) == (f"v{n}/0", str(n))
                assert response.type_url == CLUSTER_TYPE
            await stream.close()
            await stream.close()  # idempotent
            with pytest.raises(trio.ClosedResourceError):
                await stream.send(b"")
            with pytest.raises(GrpcError) as ended:
                await stream.receive()
            assert ended.value.status == Status.OK
            with pytest.raises(GrpcError):  # and it stays ended
                await stream.receive()
        assert ("x-node-id", "node-1") in servicer.metadata

    run(main)


def test_large_response_and_large_request_flow_through_the_windows(ads_server) -> None:
    _, port, _ = ads_server
    expected = big_response().SerializeToString()
    assert len(expected) > 4 * MiB

    async def main() -> None:
        async with open_stream("127.0.0.1", port, ADS) as stream:
            await stream.send(discovery_pb2.DiscoveryRequest(type_url="big").SerializeToString())
            raw = await stream.receive()
            assert raw == expected
            assert len(discovery_pb2.DiscoveryResponse.FromString(raw).resources) == 1000
            # A 2 MiB request is far over the server's initial 64 KiB window.
            names = [f"resource-{i:07d}" for i in range(2 * MiB // 20)]
            response = await ask(stream, version_info="req", resource_names=names)
            assert response.version_info == f"req/{len(names)}"

    run(main)


def test_many_small_messages_arrive_in_order(ads_server) -> None:
    _, port, _ = ads_server

    async def main() -> None:
        async with open_stream("127.0.0.1", port, ADS) as stream:
            await stream.send(discovery_pb2.DiscoveryRequest(type_url="burst").SerializeToString())
            nonces = [
                discovery_pb2.DiscoveryResponse.FromString(await stream.receive()).nonce
                for _ in range(50)
            ]
            assert nonces == [f"burst-{i}" for i in range(50)]

    run(main)


def test_server_error_status_and_message_reach_the_caller(ads_server) -> None:
    _, port, _ = ads_server

    async def main() -> None:
        async with open_stream("127.0.0.1", port, ADS) as stream:
            assert (await ask(stream, version_info="a")).version_info == "a/0"
            await stream.send(discovery_pb2.DiscoveryRequest(type_url="abort").SerializeToString())
            with pytest.raises(GrpcError) as ended:
                await stream.receive()
            assert ended.value.status == Status.UNAVAILABLE == grpc.StatusCode.UNAVAILABLE.value[0]
            assert ended.value.message == "management server going away: 100%"
            with pytest.raises(GrpcError) as again:
                await stream.send(b"")
            assert again.value.status == Status.UNAVAILABLE

    run(main)


def test_server_returning_ends_the_call_with_ok(ads_server) -> None:
    _, port, _ = ads_server

    async def main() -> None:
        async with open_stream("127.0.0.1", port, ADS) as stream:
            await stream.send(discovery_pb2.DiscoveryRequest(type_url="finish").SerializeToString())
            with pytest.raises(GrpcError) as ended:
                await stream.receive()
            assert ended.value.status == Status.OK

    run(main)


def test_unknown_method_is_unimplemented(ads_server) -> None:
    _, port, _ = ads_server

    async def main() -> None:
        method = "/envoy.service.discovery.v3.AggregatedDiscoveryService/NoSuchMethod"
        async with open_stream("127.0.0.1", port, method) as stream:
            with pytest.raises(GrpcError) as ended:
                await stream.receive()
            assert ended.value.status == Status.UNIMPLEMENTED

    run(main)


def test_server_stopping_ends_the_call(ads_server) -> None:
    server, port, _ = ads_server

    async def main() -> None:
        async with open_stream("127.0.0.1", port, ADS) as stream:
            assert (await ask(stream, version_info="a")).version_info == "a/0"
            server.stop(grace=None)
            with pytest.raises(GrpcError) as ended:
                await stream.receive()
            assert ended.value.status in (Status.UNAVAILABLE, Status.CANCELLED), ended.value

    run(main)


def test_message_over_the_limit_is_refused(ads_server) -> None:
    _, port, _ = ads_server

    async def main() -> None:
        async with open_stream("127.0.0.1", port, ADS, max_message_bytes=MiB) as stream:
            await stream.send(discovery_pb2.DiscoveryRequest(type_url="big").SerializeToString())
            with pytest.raises(GrpcError) as ended:
                await stream.receive()
            assert ended.value.status == Status.RESOURCE_EXHAUSTED
            assert "exceeds the limit" in ended.value.message
            with pytest.raises(GrpcError) as too_big:
                await stream.send(bytes(MiB + 1))
            assert too_big.value.status == Status.RESOURCE_EXHAUSTED

    run(main)


def test_connect_refused_is_unavailable() -> None:
    port = free_port()

    async def main() -> None:
        with pytest.raises(GrpcError) as failed:
            async with open_stream("127.0.0.1", port, ADS):
                raise AssertionError("connected to a port nobody listens on")
        assert failed.value.status == Status.UNAVAILABLE
        assert f"127.0.0.1:{port}" in failed.value.message

    run(main)


def test_callers_exception_leaves_the_block_unwrapped(ads_server) -> None:
    _, port, _ = ads_server

    async def main() -> None:
        with pytest.raises(KeyError):
            async with open_stream("127.0.0.1", port, ADS) as stream:
                await ask(stream, version_info="a")
                raise KeyError("mine")

    run(main)


def test_cancelling_the_caller_closes_the_call(ads_server) -> None:
    _, port, _ = ads_server

    async def main() -> None:
        with trio.move_on_after(0.5) as scope:
            async with open_stream("127.0.0.1", port, ADS) as stream:
                await ask(stream, version_info="a")
                await stream.receive()  # the server answers nothing more
        assert scope.cancelled_caught
        async with open_stream("127.0.0.1", port, ADS) as stream:  # the server is fine
            assert (await ask(stream, version_info="b")).version_info == "b/0"

    run(main)


# -- REST-JSON (HTTP/1.1 POST) -----------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    release = threading.Event()  # set at teardown so the /slow handler ends

    def log_message(self, format, *args) -> None:  # noqa: A002 (the base class's name)
        pass  # keep the test output clean

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        answer = json.dumps(
            {
                "path": self.path,
                "host": self.headers["Host"],
                "content_type": self.headers["Content-Type"],
                "request": json.loads(body),
            }
        ).encode()
        if self.path == "/length":
            self._head(200, {"Content-Length": str(len(answer))})
            self.wfile.write(answer)
        elif self.path == "/chunked":
            self._head(200, {"Transfer-Encoding": "chunked"})
            for i in range(0, len(answer), 7):
                piece = answer[i : i + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/until-close":
            self._head(200, {"Connection": "close"})
            self.wfile.write(answer)
            self.close_connection = True
        elif self.path == "/truncated":
            self._head(200, {"Content-Length": "1000"})
            self.wfile.write(b'{"partial":')
            self.close_connection = True
        elif self.path == "/slow":
            self.release.wait(10)
            self.close_connection = True
        else:
            self._head(503, {"Content-Length": "11"})
            self.wfile.write(b"unavailable")

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()


@pytest.fixture
def rest_server() -> Iterator[int]:
    Handler.release = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1]
    Handler.release.set()
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.mark.parametrize("path", ["/length", "/chunked", "/until-close"])
def test_post_json_reads_each_kind_of_body(rest_server: int, path: str) -> None:
    request = {"version_info": "1", "resource_names": ["a", "b"] * 50}

    async def main() -> None:
        status, body = await post_json(
            "127.0.0.1", rest_server, path, json.dumps(request).encode(), authority="xds.test"
        )
        assert status == 200
        assert json.loads(body) == {
            "path": path,
            "host": "xds.test",
            "content_type": "application/json",
            "request": request,
        }

    run(main)


def test_post_json_returns_a_non_200_status(rest_server: int) -> None:
    async def main() -> None:
        status, body = await post_json("127.0.0.1", rest_server, "/v3/discovery:clusters", b"{}")
        assert (status, body) == (503, b"unavailable")

    run(main)


def test_post_json_errors(rest_server: int) -> None:
    refused = free_port()

    async def main() -> None:
        with pytest.raises(HttpClientError, match="closed the connection mid-response"):
            await post_json("127.0.0.1", rest_server, "/truncated", b"{}")
        with pytest.raises(HttpClientError, match="timed out after 0.3 s"):
            await post_json("127.0.0.1", rest_server, "/slow", b"{}", timeout_s=0.3)
        with pytest.raises(HttpClientError, match=f"connect to 127.0.0.1:{refused} failed"):
            await post_json("127.0.0.1", refused, "/length", b"{}")
        with pytest.raises(HttpClientError, match="larger than 10 bytes"):
            await post_json("127.0.0.1", rest_server, "/length", b"{}", max_response_bytes=10)

    run(main)
