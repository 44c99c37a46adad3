"""Upstream TLS with a real proxyd and real TLS upstreams (tests.tls_upstream): what
the compat test with Envoy does not reach.

* a handshake failure is a connect failure to the retry policy and to outlier
  detection: a cluster with a plaintext host (the handshake fails) and a TLS host,
  retry_on connect-failure, gets every request answered by the TLS host,
  ``ssl.connection_error`` and ``upstream_cx_connect_fail`` count the failures, and the
  plaintext host is ejected;
* sessions are resumed: with one request per connection each new connection offers
  the host's last session, and ``ssl.session_reused`` counts the resumed ones;
  ``max_session_keys: 0`` turns that off;
* the configured ``sni`` reaches the upstream over many pooled connections;
* a kept-alive TLS connection survives the pool's idle checks and is reused.
"""

from __future__ import annotations

import time
from typing import Any

import yaml

from tests.support import ProxydProcess, UpstreamServer, wait_for
from tests.tls_upstream import TlsUpstream, get

UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)


def cluster(
    name: str, ports: list[int], ctx: dict[str, Any], per_connection: int = 1
) -> dict[str, Any]:
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in ports
    ]
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": UPSTREAM_TLS, **ctx},
        },
        # One request per connection (by default): every request makes a new one.
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTIONS,
                "explicit_http_config": {"http_protocol_options": {}},
                "common_http_protocol_options": {"max_requests_per_connection": per_connection},
            }
        },
    }


def config(certs: Any, tls_port: int, plain_port: int) -> str:
    ca = {"validation_context": {"trusted_ca": {"filename": certs.ca}}}
    clusters = [
        {
            **cluster("mixed", [plain_port, tls_port], {"common_tls_context": ca}),
            # A failed handshake is a connect failure to outlier detection too.
            "outlier_detection": {
                "consecutive_5xx": 2,
                "interval": "0.1s",
                "base_ejection_time": "30s",
                "max_ejection_percent": 50,
            },
        },
        cluster("resume", [tls_port], {"sni": "example.com", "common_tls_context": ca}),
        cluster("noresume", [tls_port], {"max_session_keys": 0}),
        cluster(
            "keep",
            [tls_port],
            {"common_tls_context": {"tls_params": {"tls_maximum_protocol_version": "TLSv1_3"}}},
            per_connection=0,
        ),
        cluster("auto", [tls_port], {}, per_connection=0),
    ]
    options = clusters[-1]["typed_extension_protocol_options"]
    options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"][
        "upstream_http_protocol_options"
    ] = {"auto_sni": True}
    routes = [
        {
            "match": {"prefix": "/mixed"},
            "route": {
                "cluster": "mixed",
                "retry_policy": {"retry_on": "connect-failure", "num_retries": 3},
            },
        },
        {"match": {"prefix": "/resume"}, "route": {"cluster": "resume"}},
        {"match": {"prefix": "/noresume"}, "route": {"cluster": "noresume"}},
        {"match": {"prefix": "/keep"}, "route": {"cluster": "keep"}},
        {"match": {"prefix": "/auto"}, "route": {"cluster": "auto"}},
    ]
    hcm = {
        "@type": HCM,
        "stat_prefix": "front",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "front",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }
    return yaml.safe_dump(doc)


def test_handshake_failures_are_retried_and_sessions_resumed(tmp_path, certs):
    plain = UpstreamServer("plain")
    plain.start()
    try:
        with TlsUpstream(certs, "tls") as tls:
            text = config(certs, tls.port, plain.port)
            with ProxydProcess(tmp_path, text, concurrency=1) as p:
                port = p.listener_port("front")
                mixed = [get(port, f"/mixed/{i}") for i in range(6)]
                resume = [get(port, f"/resume/{i}") for i in range(4)]
                noresume = [get(port, f"/noresume/{i}") for i in range(3)]
                # A kept-alive TLS 1.3 connection (its session tickets read with the
                # first response) is reused after the pool's idle checks: peeked before
                # reuse (over 50 ms idle) and by the sweep (about once a second).
                keep = [get(port, "/keep/0")]
                time.sleep(0.3)
                keep.append(get(port, "/keep/1"))
                time.sleep(1.2)
                keep.append(get(port, "/keep/2"))
                # auto_sni with a Host that is no server name: a connect failure, and
                # the worker goes on.
                auto = [get(port, "/auto/0", host=h) for h in ("..", "a.test", "x" * 300)]

                def counted() -> dict[str, int] | None:
                    s = p.stats()
                    ejected = s.get("cluster.mixed.outlier_detection.ejections_enforced_total")
                    return s if s.get("cluster.noresume.ssl.handshake") == 3 and ejected else None

                stats = wait_for(counted, timeout=10)
    finally:
        plain.stop()
    # Every request reached the TLS host, after a retry when the plaintext one was picked.
    assert [r["status"] for r in mixed] == [200] * 6
    assert {r["json"]["server"] for r in mixed} == {"tls"}
    assert stats["cluster.mixed.ssl.connection_error"] >= 1
    assert (
        stats["cluster.mixed.upstream_cx_connect_fail"]
        == stats["cluster.mixed.ssl.connection_error"]
    )
    assert stats["cluster.mixed.upstream_rq_retry"] >= 1
    # The configured SNI on every connection; the sessions after the first resumed.
    assert [r["json"]["sni"] for r in resume] == ["example.com"] * 4
    assert [r["json"]["request_on_connection"] for r in resume] == [1] * 4
    assert stats["cluster.resume.ssl.handshake"] == 4
    assert stats["cluster.resume.ssl.session_reused"] >= 2
    assert [r["status"] for r in noresume] == [200] * 3
    assert stats.get("cluster.noresume.ssl.session_reused", 0) == 0
    assert [r["json"]["request_on_connection"] for r in keep] == [1, 2, 3]
    assert {r["json"]["version"] for r in keep} == {"TLSv1.3"}
    assert stats["cluster.keep.ssl.handshake"] == 1
    assert [r["status"] for r in auto] == [503, 200, 503]
    assert auto[1]["json"]["sni"] == "a.test"
