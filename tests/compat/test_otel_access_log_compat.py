"""The OpenTelemetry access logger (``envoy.access_loggers.open_telemetry``), proxyd
beside real Envoy on the same YAML, both exporting over OTLP/gRPC to a logs receiver
the test runs: the records' bodies and attributes (access-log formats), the resource
(Envoy's built-in labels from the node, and resource_attributes), the record count, and
an access-log filter that keeps only errors for a second logger."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.otlp_wire import GrpcLogsCollector
from tests.support import UpstreamServer, bootstrap, http_listener, static_cluster, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

OTEL = "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig"
H2 = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _logger(log_name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.open_telemetry",
        "typed_config": {
            "@type": OTEL,
            "common_config": {
                "log_name": log_name,
                "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}},
                "transport_api_version": "V3",
                "buffer_flush_interval": "0.1s",
            },
            **extra,
        },
    }


def config(upstream: int, collector: int) -> str:
    route_config = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}],
            }
        ],
    }
    logs = [
        _logger(
            "all_requests",
            body={"string_value": "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%"},
            attributes={
                "values": [
                    {"key": "status", "value": {"string_value": "%RESPONSE_CODE%"}},
                    {"key": "path", "value": {"string_value": "%REQ(:PATH)%"}},
                    {"key": "tenant", "value": {"string_value": "%REQ(X-TENANT)%"}},
                    {"key": "cluster", "value": {"string_value": "%UPSTREAM_CLUSTER%"}},
                    {"key": "literal", "value": {"string_value": "fixed"}},
                ]
            },
            resource_attributes={"values": [{"key": "env", "value": {"string_value": "prod"}}]},
        ),
        {
            **_logger(
                "errors_only",
                body={"string_value": "%RESPONSE_CODE%"},
                disable_builtin_labels=True,
            ),
            "filter": {
                "status_code_filter": {
                    "comparison": {"op": "GE", "value": {"default_value": 400, "runtime_key": "x"}}
                }
            },
        },
    ]
    listener = http_listener(
        "ingress", 0, route_config, stat_prefix="ingress_http", access_log=logs
    )
    otel = static_cluster("otel", [collector])
    otel["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": H2,
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    }
    doc = bootstrap([listener], [static_cluster("svc", [upstream]), otel])
    doc["node"] = {"id": "node-7", "cluster": "edge-fleet"}
    return yaml.safe_dump(doc, sort_keys=False)


CASES = [
    ("/echo/a", {}),
    ("/echo/b?x=1", {"x-tenant": "acme"}),
    ("/status/404", {}),
    ("/status/503", {"x-tenant": "beta"}),
]


def play(port_of: PortOf, collector: GrpcLogsCollector) -> dict[str, Any]:
    collector.take()
    port = port_of("ingress")
    for path, headers in CASES:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", path, headers={"host": "x", **headers})
        conn.getresponse().read()
        conn.close()
    want = len(CASES) + 2  # every request, and the two errors again
    records: list[dict[str, Any]] = []

    def arrived() -> bool:
        records.extend(collector.take())
        return len(records) >= want

    wait_for(arrived, timeout=10)
    return {
        "records": sorted(
            (
                (r["resource"].get("log_name", ""), r["body"], sorted(r["attributes"].items()),
                 sorted(r["resource"].items()), r["has_time"], r["has_trace_id"])
                for r in records
            ),
            key=repr,
        )
    }  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    upstream = UpstreamServer("svc").start()
    collector = GrpcLogsCollector()
    try:
        yield run_pair(
            config(upstream.port, collector.port),
            Path(tmp_path_factory.mktemp("otel-log")),
            lambda port_of: play(port_of, collector),
        )
    finally:
        collector.close()
        upstream.stop()


def test_records_like_envoy(results: Pair) -> None:
    assert results.proxyd.replies["records"] == results.envoy.replies["records"]


def test_envoy_sends_what_the_case_says(results: Pair) -> None:
    records = results.envoy.replies["records"]
    assert len(records) == len(CASES) + 2
    bodies = {r[1] for r in records}
    assert "GET /echo/a 200 -" in bodies and "404" in bodies
