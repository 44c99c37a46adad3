"""The gRPC access log service against a collector that goes away and comes back: the
requests are answered all along, the entries of the gap are counted as lost
(``grpc_entries_flush_failed``), and the next call to the new collector opens with the
identifier again."""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Any

import yaml

from tests.als_server import AccessLogServer
from tests.support import (
    ProxydProcess,
    UpstreamServer,
    bootstrap,
    free_port,
    http_listener,
    static_cluster,
    wait_for,
)

HTTP_GRPC = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
H2 = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
PREFIX = "access_logs.grpc_access_log."


def config(upstream: int, collector: int, common: dict[str, Any] | None = None,
           **extra: Any) -> str:  # fmt: skip
    routes = {
        "virtual_hosts": [
            {"name": "all", "domains": ["*"],
             "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}]}
        ]
    }  # fmt: skip
    logger: dict[str, Any] = {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": HTTP_GRPC,
            "common_config": {
                "log_name": "edge",
                "grpc_service": {"envoy_grpc": {"cluster_name": "als"}, "timeout": "1s"},
                "transport_api_version": "V3",
                "buffer_flush_interval": "0.05s",
            },
        },
    }
    logger["typed_config"]["common_config"].update(common or {})
    logger["typed_config"].update(extra)
    als = static_cluster("als", [collector])
    als["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": H2,
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    listener = http_listener("ingress", 0, routes, access_log=[logger])
    doc = bootstrap([listener], [static_cluster("svc", [upstream]), als])
    doc["node"] = {"id": "n1", "cluster": "c1"}
    return yaml.safe_dump(doc, sort_keys=False)


def get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers=headers or {})
    status = conn.getresponse().status
    conn.close()
    return status


def test_collector_gone_and_back(tmp_path: Path) -> None:
    upstream = UpstreamServer("svc").start()
    port = free_port()
    server = AccessLogServer(port)
    try:
        with ProxydProcess(tmp_path, config(upstream.port, port), concurrency=1) as p:
            ingress = p.listener_port("ingress")
            assert [get(ingress, f"/echo/{i}") for i in range(3)] == [200] * 3
            wait_for(lambda: len(server.http_entries()) == 3)
            (stream,) = server.snapshot()
            assert [i["log_name"] for i in stream["identifiers"]] == ["edge"]
            assert stream["identifiers"][0]["node"]["id"] == "n1"
            server.close()

            assert [get(ingress, f"/lost/{i}") for i in range(2)] == [200] * 2
            wait_for(lambda: p.stats().get(PREFIX + "grpc_entries_flush_failed", 0) >= 2)

            server = AccessLogServer(port)
            assert get(ingress, "/echo/back") == 200
            wait_for(lambda: len(server.http_entries()) == 1)
            (stream,) = server.snapshot()
            assert [i["log_name"] for i in stream["identifiers"]] == ["edge"]
            assert server.http_entries()[0]["request"]["path"] == "/echo/back"
            # (the worker reports its counters in batches)
            wait_for(lambda: p.stats().get(PREFIX + "grpc_entries_flushed") == 4)
            stats = p.stats()
            assert stats[PREFIX + "logs_written"] == 6
            assert stats[PREFIX + "grpc_entries_flush_failed"] == 2
            assert stats[PREFIX + "logs_dropped"] == 0
    finally:
        server.close()
        upstream.stop()


def test_a_batch_larger_than_the_flow_control_window(tmp_path: Path) -> None:
    """A message of ~150 KB (more than HTTP/2's initial 64 KiB window) goes out whole,
    sent as the collector opens its window."""
    upstream = UpstreamServer("svc").start()
    server = AccessLogServer()
    text = config(
        upstream.port,
        server.port,
        common={"buffer_flush_interval": "2s", "buffer_size_bytes": 150_000},
        additional_request_headers_to_log=["x-big"],
    )
    big = "b" * 5000
    try:
        with ProxydProcess(tmp_path, text, concurrency=1) as p:
            ingress = p.listener_port("ingress")
            statuses = [get(ingress, f"/echo/{i}", {"x-big": big}) for i in range(30)]
            assert statuses == [200] * 30
            wait_for(lambda: len(server.http_entries()) == 30)
            entries = server.http_entries()
            assert {e["request"]["request_headers"]["x-big"] for e in entries} == {big}
            (stream,) = server.snapshot()
            assert max(stream["sizes"]) > 65535  # a batch the initial window could not take
            wait_for(lambda: p.stats().get(PREFIX + "grpc_entries_flushed") == 30)
    finally:
        server.close()
        upstream.stop()


def test_a_call_the_collector_ends_is_opened_again(tmp_path: Path) -> None:
    """The collector answers (ending the call) after each message: the next batch goes on
    a new call, which opens with the identifier again; nothing is lost."""
    upstream = UpstreamServer("svc").start()
    server = AccessLogServer(end_after=1)
    try:
        with ProxydProcess(tmp_path, config(upstream.port, server.port), concurrency=1) as p:
            ingress = p.listener_port("ingress")
            for i in range(3):
                assert get(ingress, f"/echo/{i}") == 200
                wait_for(lambda n=i + 1: len(server.http_entries()) == n)
            streams = server.snapshot()
            assert len(streams) == 3
            assert all([i["log_name"] for i in s["identifiers"]] == ["edge"] for s in streams)
            wait_for(lambda: p.stats().get(PREFIX + "grpc_entries_flushed") == 3)
            assert p.stats()[PREFIX + "grpc_entries_flush_failed"] == 0
    finally:
        server.close()
        upstream.stop()
