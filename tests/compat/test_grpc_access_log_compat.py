"""The gRPC access log service (``envoy.access_loggers.http_grpc`` and
``envoy.access_loggers.tcp_grpc``), proxyd beside real Envoy on the same YAML, both
streaming ``AccessLogService/StreamAccessLogs`` to a grpcio server the test runs
(:mod:`tests.als_server`, xds-protos messages).

One pair, many cases: a plain HTTP listener with two HTTP loggers (additional request
and response headers; a second log name behind a status filter), an mTLS listener (the
TLS properties of the entry), and a TCP proxy with a TCP logger. Each decoded entry is
compared field by field; what differs by nature is taken out first: times (compared by
presence), ports the kernel chose, the request id, the header byte counts (Envoy counts
its own header map) and the other fields proxyd does not measure (docs/configuration.md).
"""

from __future__ import annotations

import copy
import http.client
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.als_server import AccessLogServer
from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.support import (
    TcpEchoServer,
    UpstreamServer,
    bootstrap,
    free_port,
    http_listener,
    static_cluster,
    wait_for,
)
from tests.tls_certs import Certs, make_certs

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

HTTP_GRPC = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
TCP_GRPC = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig"
H2 = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def common(log_name: str) -> dict[str, Any]:
    return {
        "log_name": log_name,
        "grpc_service": {"envoy_grpc": {"cluster_name": "als"}},
        "transport_api_version": "V3",
        "buffer_flush_interval": "0.1s",
    }


def http_logger(log_name: str, cluster: str = "als", tags: Any = None,
                **extra: Any) -> dict[str, Any]:  # fmt: skip
    config = common(log_name)
    config["grpc_service"] = {"envoy_grpc": {"cluster_name": cluster}}
    if tags:
        config["custom_tags"] = tags
    return {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {"@type": HTTP_GRPC, "common_config": config, **extra},
    }


ROUTES = {
    "name": "local",
    "virtual_hosts": [
        {
            "name": "all",
            "domains": ["*"],
            "routes": [
                {"match": {"prefix": "/none"}, "name": "nowhere", "route": {"cluster": "dead"}},
                {"match": {"prefix": "/"}, "name": "svc_route", "route": {"cluster": "svc"}},
            ],
        }
    ],
}


TAGS = [
    {"tag": "fixed", "literal": {"value": "one"}},
    {"tag": "env", "environment": {"name": "PROXYD_ALS_TEST_UNSET", "default_value": "dflt"}},
    {"tag": "tenant", "request_header": {"name": "X-Tenant", "default_value": "nobody"}},
    {"tag": "agent", "request_header": {"name": "user-agent"}},
]


def config(certs: Certs, upstream: int, echo: int, collector: int) -> str:
    logs = [
        http_logger(
            "plain",
            additional_request_headers_to_log=["x-tenant", "x-missing", "referer"],
            additional_response_headers_to_log=["content-type", "x-nothing"],
            tags=TAGS,
        ),
        {
            **http_logger("errors"),
            "filter": {
                "status_code_filter": {
                    "comparison": {"op": "GE", "value": {"default_value": 400, "runtime_key": "x"}}
                }
            },
        },
        # A collector that is down: its entries are lost, the requests are not.
        http_logger("lost", cluster="als_down"),
    ]
    plain = http_listener("plain", 0, ROUTES, stat_prefix="plain", access_log=logs)
    mtls = http_listener("mtls", 0, ROUTES, stat_prefix="mtls", access_log=[http_logger("tls")])
    mtls["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS,
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": certs.server},
                        "private_key": {"filename": certs.server_key},
                    }
                ],
                "validation_context": {"trusted_ca": {"filename": certs.ca}},
            },
        },
    }
    tcp = {
        "name": "tcp",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": TCP_PROXY,
                            "stat_prefix": "tcp",
                            "cluster": "echo",
                            "access_log": [
                                {
                                    "name": "envoy.access_loggers.tcp_grpc",
                                    "typed_config": {
                                        "@type": TCP_GRPC,
                                        "common_config": {
                                            **common("tcp"),
                                            "custom_tags": TAGS[:2],
                                        },
                                    },
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }
    als = static_cluster("als", [collector])
    als_down = static_cluster("als_down", [free_port()])
    for c in (als, als_down):
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": H2,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    doc = bootstrap(
        [plain, mtls, tcp],
        [
            static_cluster("svc", [upstream]),
            static_cluster("echo", [echo]),
            static_cluster("dead", [free_port()]),
            als,
            als_down,
        ],
    )
    doc["node"] = {"id": "node-7", "cluster": "edge-fleet"}
    return yaml.safe_dump(doc, sort_keys=False)


PLAIN_CASES: list[tuple[str, str, dict[str, str], bytes | None]] = [
    ("GET", "/echo/a", {"x-tenant": "acme", "user-agent": "test-agent/1"}, None),
    ("POST", "/echo/b?x=1", {"referer": "http://ref.example/", "x-forwarded-for": "10.0.0.9"},
     b"0123456789"),
    ("GET", "/status/404", {"x-tenant": "beta"}, None),
    ("GET", "/none", {}, None),
    ("HEAD", "/echo/c", {"x-request-id": "4b1d9a7e-0000-4000-8000-000000000001"}, None),
]  # fmt: skip


N_PLAIN = len(PLAIN_CASES) + 1  # and the HTTP/2 one


def _request(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None,
             ctx: ssl.SSLContext | None = None) -> None:  # fmt: skip
    if ctx is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    conn.request(method, path, body=body, headers={"host": "example.com", **headers})
    conn.getresponse().read()
    conn.close()


def play(port_of: PortOf, server: AccessLogServer, certs: Certs) -> dict[str, Any]:
    server.reset()
    for method, path, headers, body in PLAIN_CASES:
        _request(port_of("plain"), method, path, headers, body)
    # HTTP/2 (prior knowledge): protocol_version HTTP2, :authority as the authority.
    with httpx.Client(http1=False, http2=True, timeout=10) as client:
        client.get(
            f"http://127.0.0.1:{port_of('plain')}/echo/h2",
            headers={"x-tenant": "h2", "host": "example.com"},
        )
    ctx = ssl.create_default_context(cafile=certs.ca)
    ctx.load_cert_chain(certs.client, certs.client_key)
    ctx.check_hostname = False
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256")
    _request(port_of("mtls"), "GET", "/echo/tls", {}, None, ctx)
    with socket.create_connection(("127.0.0.1", port_of("tcp")), timeout=10) as s:
        s.sendall(b"hello tcp")
        s.shutdown(socket.SHUT_WR)
        while s.recv(100):
            pass
    want_http = N_PLAIN + 2 + 1  # every request, the two errors again, the TLS one

    def arrived() -> bool:
        return len(server.http_entries()) >= want_http and len(server.tcp_entries()) >= 1

    wait_for(arrived, timeout=10)
    streams = server.snapshot()
    return {
        "streams": streams,
        "identifiers": sorted(
            (i["log_name"], i["node"].get("id"), i["node"].get("cluster"))
            for s in streams
            for i in s["identifiers"]
        ),
        "identifier_first": all(s["messages"] == 0 or s["identifiers"] for s in streams),
    }


def als_stats(stats: dict[str, int]) -> dict[str, int]:
    """Envoy counts the entries of a call to a collector that is down as flushed;
    proxyd counts them as flush_failed (docs/configuration.md): their sum is the same."""
    prefix = "access_logs.grpc_access_log."
    out = {k: v for k, v in stats.items() if k.startswith(prefix)}
    out[prefix + "flushed_or_failed"] = out.pop(prefix + "grpc_entries_flushed", 0) + out.pop(
        prefix + "grpc_entries_flush_failed", 0
    )
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    certs = make_certs(Path(tmp_path_factory.mktemp("als-certs")))
    upstream = UpstreamServer("svc").start()
    echo = TcpEchoServer().__enter__()
    server = AccessLogServer()
    try:
        yield run_pair(
            config(certs, upstream.port, echo.port, server.port),
            Path(tmp_path_factory.mktemp("als")),
            lambda port_of: play(port_of, server, certs),
            pick=als_stats,
        )
    finally:
        server.close()
        echo.__exit__(None, None, None)
        upstream.stop()


# What proxyd does not measure, left out of the comparison (docs/configuration.md).
NOT_KEPT_COMMON = {
    "time_to_last_rx_byte", "time_to_first_upstream_tx_byte", "time_to_last_upstream_tx_byte",
    "time_to_first_upstream_rx_byte", "time_to_last_upstream_rx_byte",
    "time_to_first_downstream_tx_byte", "time_to_last_downstream_tx_byte",
    "upstream_local_address", "downstream_wire_bytes_sent", "downstream_wire_bytes_received",
    "upstream_wire_bytes_sent", "upstream_wire_bytes_received",
    "upstream_transport_failure_reason",
}  # fmt: skip
NOT_KEPT_REQUEST = {
    "request_headers_bytes", "downstream_header_bytes_received", "upstream_header_bytes_sent",
}  # fmt: skip
NOT_KEPT_RESPONSE = {
    "response_headers_bytes", "downstream_header_bytes_sent", "upstream_header_bytes_received",
}  # fmt: skip
GIVEN_ID = PLAIN_CASES[4][2]["x-request-id"]


def _port_known(address: dict[str, Any]) -> None:
    sa = address["socket_address"]
    sa["port_value"] = bool(sa.get("port_value"))


def normalized(entry: dict[str, Any]) -> dict[str, Any]:
    e = copy.deepcopy(entry)
    common = e["common_properties"]
    for key in NOT_KEPT_COMMON:
        common.pop(key, None)
    for key in ("start_time", "duration", "stream_id"):
        if common.get(key) not in (None, GIVEN_ID):
            common[key] = "*"
    for key in ("downstream_remote_address", "downstream_direct_remote_address",
                "downstream_local_address"):  # fmt: skip
        if key in common:
            _port_known(common[key])
    request = e.get("request", {})
    for key in NOT_KEPT_REQUEST:
        request.pop(key, None)
    if request.get("request_id") not in (None, GIVEN_ID):
        assert request["request_id"] == entry["common_properties"]["stream_id"]
        request["request_id"] = "*"
    response = e.get("response", {})
    for key in NOT_KEPT_RESPONSE:
        response.pop(key, None)
    details = response.get("response_code_details")
    if details and "|" in details:  # Envoy adds the connect error's text
        response["response_code_details"] = details.split("|")[0] + "}"
    return e


def by_log(replies: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for s in replies["streams"]:
        name = s["identifiers"][0]["log_name"] if s["identifiers"] else "?"
        entries = [normalized(e) for e in (*s["http"], *s["tcp"])]
        out.setdefault(name, []).extend(entries)
    return {
        k: sorted(v, key=lambda e: repr(e.get("request", {}).get("path"))) for k, v in out.items()
    }


def test_each_log_streams_entries_like_envoy(results: Pair) -> None:
    envoy, proxyd = by_log(results.envoy.replies), by_log(results.proxyd.replies)
    assert sorted(envoy) == ["errors", "plain", "tcp", "tls"]
    for name in envoy:
        mine = proxyd.get(name, [])
        assert len(mine) == len(envoy[name]), name
        for a, b in zip(mine, envoy[name], strict=True):
            assert a == b, (name, _differences(a, b))


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two decoded entries differ (proxyd's value, then Envoy's)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted({*a, *b}):
            out += _differences(a.get(k), b.get(k), f"{path}.{k}")
        return out
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_identifier_on_the_first_message_of_each_stream(results: Pair) -> None:
    for side in (results.envoy, results.proxyd):
        assert side.replies["identifier_first"]
        assert side.replies["identifiers"] == [
            ["errors", "node-7", "edge-fleet"],
            ["plain", "node-7", "edge-fleet"],
            ["tcp", "node-7", "edge-fleet"],
            ["tls", "node-7", "edge-fleet"],
        ] or side.replies["identifiers"] == [
            ("errors", "node-7", "edge-fleet"),
            ("plain", "node-7", "edge-fleet"),
            ("tcp", "node-7", "edge-fleet"),
            ("tls", "node-7", "edge-fleet"),
        ]


def test_envoy_sends_what_the_cases_say(results: Pair) -> None:
    logs = by_log(results.envoy.replies)
    plain = logs["plain"]
    assert [e["request"]["path"] for e in plain] == sorted(
        [*(p for _, p, _, _ in PLAIN_CASES), "/echo/h2"], key=repr
    )
    h2 = [e for e in plain if e["request"]["path"] == "/echo/h2"][0]
    assert h2["protocol_version"] == "HTTP2"
    assert h2["request"]["request_headers"] == {"x-tenant": "h2"}
    tenant = [e for e in plain if e["request"]["path"] == "/echo/a"][0]
    assert tenant["request"]["request_headers"] == {"x-tenant": "acme"}
    assert tenant["common_properties"]["custom_tags"] == {
        "fixed": "one", "env": "dflt", "tenant": "acme", "agent": "test-agent/1"
    }  # fmt: skip
    assert tenant["response"]["response_headers"] == {"content-type": "application/json"}
    failed = [e for e in plain if e["request"]["path"] == "/none"][0]
    assert failed["common_properties"]["response_flags"] == {"upstream_connection_failure": True}
    tls = logs["tls"][0]["common_properties"]["tls_properties"]
    assert tls["peer_certificate_properties"]["subject_alt_name"] == [
        {"uri": "spiffe://test/client"}
    ]
    assert tls["tls_version"] == "TLSv1_2"
    assert tls["local_certificate_properties"] == {"subject": "CN=example.com,O=proxyd tests"}
    assert logs["tcp"][0]["connection_properties"] == {"received_bytes": "9", "sent_bytes": "14"}
    assert logs["tcp"][0]["common_properties"]["custom_tags"] == {"fixed": "one", "env": "dflt"}


def test_stats_like_envoy(results: Pair) -> None:
    assert results.proxyd.stats == results.envoy.stats
    envoy = results.envoy.stats
    # Every HTTP entry (plain, errors, lost, tls); not the TCP one (Envoy does not count it).
    assert envoy["access_logs.grpc_access_log.logs_written"] == 2 * N_PLAIN + 2 + 1
    assert envoy["access_logs.grpc_access_log.flushed_or_failed"] == 2 * N_PLAIN + 2 + 2
