"""Upstream TLS (a cluster's ``transport_socket`` with an UpstreamTlsContext): one real
Envoy and one proxyd on the same YAML, against real TLS upstreams
(:class:`tests.tls_upstream.TlsUpstream`, which answers with the SNI, TLS version and
client certificate it saw).

Upstreams: ``main`` (TLS 1.2-1.3, certificate for example.com and *.example.org from
the test CA, asks for an optional client certificate) and ``old`` (TLS 1.2 at most).

One HTTP listener routes by path prefix to one cluster per case:

* ``/plain`` → ``plain``: TLS, no validation context (nothing verified), no SNI;
* ``/verified`` → ``verified``: the test CA, SNI example.com;
* ``/wrongca`` → ``wrongca``: another CA → 503 UF;
* ``/san_ok`` / ``/san_old`` / ``/san_bad``: typed SAN matcher DNS example.com, the
  deprecated matcher on www.example.org (the wildcard SAN), a DNS matcher for
  other.test (→ 503 UF);
* ``/mtls`` → ``mtls``: a client certificate, which the upstream sees;
* ``/tls13`` → ``tls13``: TLS 1.3 at most (Envoy's client default is 1.2); ``/min13`` → ``min13``: TLS 1.3 at least,
  to ``old`` (→ 503 UF);
* ``/alpn`` → ``alpn``: ALPN http/1.1.

``/auto`` → ``auto``: auto_sni and auto_san_validation (the SNI and the SAN checked
are the request's Host, without its port; a connection is reused only for its Host);
``/autosni`` → ``autosni``: auto_sni over a configured sni, nothing verified.

A TCP proxy listener forwards to ``tcp_tls`` (TLS, SNI example.com, verified). The
access log lines (path, status, flags and the upstream TLS operators) and the clusters'
``ssl.*`` and connect-failure stats are compared.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import PortOf, run_pair
from tests.support import wait_for
from tests.tls_upstream import TlsUpstream, get

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
LOG_FORMAT = (
    "%REQ(:PATH)%|%RESPONSE_CODE%|%RESPONSE_FLAGS%|%UPSTREAM_TLS_VERSION%|"
    "%UPSTREAM_TLS_CIPHER%|%UPSTREAM_PEER_SUBJECT%|%UPSTREAM_PEER_ISSUER%|"
    "%UPSTREAM_PEER_DNS_SAN%|%UPSTREAM_PEER_URI_SAN%\n"
)


def tls_cluster(name: str, port: int, ctx: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {"@type": UPSTREAM_TLS, **ctx},
        },
    }


HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
AUTO_NAMES = ("autosni", "auto")  # (routes by prefix: the longer one first)
# (cluster, Host) of the auto_sni requests, in order.
AUTO_CASES = (
    ("auto", "example.com"),
    ("auto", "www.example.org:8443"),
    ("auto", "other.test"),
    ("auto", "example.com"),
    ("autosni", "other.test"),
)


def auto_cluster(
    name: str, port: int, ctx: dict[str, Any], auto_sni: bool, auto_san: bool
) -> dict[str, Any]:
    c = tls_cluster(name, port, ctx)
    c["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_OPTIONS,
            "explicit_http_config": {"http_protocol_options": {}},
            "upstream_http_protocol_options": {
                "auto_sni": auto_sni,
                "auto_san_validation": auto_san,
            },
        }
    }
    return c


def config(certs: Any, main: int, old: int, log_path: str) -> tuple[str, list[str]]:
    ca = {"trusted_ca": {"filename": certs.ca}}
    clusters = [
        tls_cluster("plain", main, {}),
        tls_cluster(
            "verified",
            main,
            {"sni": "example.com", "common_tls_context": {"validation_context": ca}},
        ),
        tls_cluster(
            "wrongca",
            main,
            {
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": certs.path("stranger-ca.pem")}
                    }
                }
            },
        ),
        tls_cluster(
            "san_ok",
            main,
            {
                "common_tls_context": {
                    "validation_context": {
                        **ca,
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": "example.com"}}
                        ],
                    }
                }
            },
        ),
        tls_cluster(
            "san_old",
            main,
            {
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"inline_string": Path(certs.ca).read_text()},
                        "match_subject_alt_names": [{"exact": "www.example.org"}],
                    }
                }
            },
        ),
        tls_cluster(
            "san_bad",
            main,
            {
                "common_tls_context": {
                    "validation_context": {
                        **ca,
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": "other.test"}}
                        ],
                    }
                }
            },
        ),
        tls_cluster(
            "mtls",
            main,
            {
                "common_tls_context": {
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": certs.client},
                            "private_key": {"filename": certs.client_key},
                        }
                    ],
                    "validation_context": ca,
                }
            },
        ),
        tls_cluster(
            "tls13",
            main,
            {"common_tls_context": {"tls_params": {"tls_maximum_protocol_version": "TLSv1_3"}}},
        ),
        tls_cluster(
            "min13",
            old,
            {"common_tls_context": {"tls_params": {"tls_minimum_protocol_version": "TLSv1_3"}}},
        ),
        tls_cluster("alpn", main, {"common_tls_context": {"alpn_protocols": ["http/1.1"]}}),
        tls_cluster(
            "tcp_tls",
            main,
            {"sni": "example.com", "common_tls_context": {"validation_context": ca}},
        ),
        auto_cluster("auto", main, {"common_tls_context": {"validation_context": ca}}, True, True),
        auto_cluster("autosni", main, {"sni": "configured.test"}, True, False),
    ]
    names = [c["name"] for c in clusters if c["name"] not in ("tcp_tls", "auto", "autosni")]
    routes = [
        {"match": {"prefix": f"/{n}"}, "route": {"cluster": n}} for n in (*AUTO_NAMES, *names)
    ]
    hcm = {
        "@type": HCM,
        "stat_prefix": "front",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        "access_log": [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": FILE_LOG,
                    "path": log_path,
                    "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}},
                },
            }
        ],
    }
    listeners = [
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
        },
        {
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
                                "cluster": "tcp_tls",
                            },
                        }
                    ]
                }
            ],
        },
    ]
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
    return yaml.safe_dump(doc), names


def _seen(reply: dict[str, Any]) -> dict[str, Any]:
    """What the upstream saw (or the proxy's status and body)."""
    j = reply.get("json")
    if j is None:
        return reply
    return {
        "status": reply["status"],
        "sni": j["sni"],
        "version": j["version"],
        "client_sans": j["client_sans"],
        "path": j["path"],
        "request_on_connection": j["request_on_connection"],
    }


def _log_lines(path: str, n: int) -> list[str] | None:
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return None
    return sorted(lines) if len(lines) >= n else None


def test_upstream_tls_matches_envoy(tmp_path, certs):
    log_path = str(tmp_path / "upstream_tls.log")
    with (
        TlsUpstream(certs, "main", verify_clients=True) as main,
        TlsUpstream(certs, "old", max_version=ssl.TLSVersion.TLSv1_2) as old,
    ):
        text, names = config(certs, main.port, old.port, log_path)

        def play(port_of: PortOf) -> dict[str, Any]:
            front = port_of("front")
            out: dict[str, Any] = {}
            for n in names:
                out[n] = _seen(get(front, f"/{n}/x"))
            # The same cluster again: the pooled TLS connection carries it.
            again = get(front, "/verified/again")
            out["verified again"] = _seen(again)
            out["tcp_proxy"] = _seen(get(port_of("tcp"), "/through-tcp"))
            for i, (cluster, host) in enumerate(AUTO_CASES):
                out[f"{i} {cluster} {host}"] = _seen(get(front, f"/{cluster}/{i}", host=host))
            expected = len(names) + 1 + len(AUTO_CASES)
            out["access log"] = wait_for(lambda: _log_lines(log_path, expected), timeout=10)
            Path(log_path).write_text("")
            return out

        def pick(stats: dict[str, int]) -> dict[str, int]:
            out = {}
            for k, v in stats.items():
                if not k.startswith("cluster.") or k.split(".")[1] not in (
                    *names,
                    *AUTO_NAMES,
                    "tcp_tls",
                ):
                    continue
                if ".ssl." in k:
                    if any(x in k for x in (".ciphers.", ".curves.", ".sigalgs.", ".certificate.")):
                        continue  # BoringSSL's names, certificate gauges: known differences
                    if v:
                        out[k] = v
                elif k.endswith(("upstream_cx_connect_fail", "upstream_cx_total")) and v:
                    out[k] = v
            return out

        pair = run_pair(text, tmp_path, play, pick)
    differ = {
        k: (v, pair.proxyd.replies.get(k))
        for k, v in pair.envoy.replies.items()
        if pair.proxyd.replies.get(k) != v
    }
    assert not differ
    assert pair.proxyd.stats == pair.envoy.stats
    # What the cases are about, so a change on both sides does not pass unnoticed.
    r = pair.envoy.replies
    assert r["plain"]["sni"] is None and r["plain"]["status"] == 200
    assert r["verified"]["sni"] == "example.com"
    assert r["wrongca"]["status"] == 503 and r["san_bad"]["status"] == 503
    assert r["san_ok"]["status"] == 200 and r["san_old"]["status"] == 200
    assert r["mtls"]["client_sans"] == ["spiffe://test/client", "client.test"]
    assert r["tls13"]["version"] == "TLSv1.3" and r["plain"]["version"] == "TLSv1.2"
    assert r["min13"]["status"] == 503
    assert r["tcp_proxy"]["sni"] == "example.com"
    assert r["verified again"]["request_on_connection"] == 2  # the pooled connection
    assert r["0 auto example.com"]["sni"] == "example.com"
    assert r["1 auto www.example.org:8443"]["sni"] == "www.example.org"
    assert r["2 auto other.test"]["status"] == 503  # auto_san_validation
    assert r["3 auto example.com"]["request_on_connection"] == 2
    assert r["4 autosni other.test"]["sni"] == "other.test"
    verified = [line for line in r["access log"] if line.startswith("/verified/x|")]
    assert verified[0].startswith("/verified/x|200|-|TLSv1.2|")
    assert "CN=example.com" in verified[0] and "*.example.org" in verified[0]


HEALTH_CHECK_BASE = {
    "timeout": "0.5s",
    "interval": "0.2s",
    "no_traffic_interval": "0.2s",
    "unhealthy_threshold": 1,
    "healthy_threshold": 1,
}


def test_health_checks_of_a_tls_cluster_go_over_tls(tmp_path, certs):
    """HTTP and TCP health checks of TLS clusters: over TLS they pass (a plaintext
    check of a TLS server would fail); with the wrong CA they fail (fail_verify_error)
    and the host is unhealthy (a request, routed in panic mode, gets the 503 of a
    failed handshake)."""
    ca = {"common_tls_context": {"validation_context": {"trusted_ca": {"filename": certs.ca}}}}
    wrong = {
        "common_tls_context": {
            "validation_context": {"trusted_ca": {"filename": certs.path("stranger-ca.pem")}}
        }
    }
    http_check = {**HEALTH_CHECK_BASE, "http_health_check": {"path": "/healthz"}}
    tcp_check = {**HEALTH_CHECK_BASE, "tcp_health_check": {}}
    with TlsUpstream(certs, "main") as main:
        clusters = [
            {**tls_cluster("hc_http", main.port, ca), "health_checks": [http_check]},
            {**tls_cluster("hc_tcp", main.port, ca), "health_checks": [tcp_check]},
            {**tls_cluster("hc_wrong", main.port, wrong), "health_checks": [http_check]},
        ]
        names = [c["name"] for c in clusters]
        routes = [{"match": {"prefix": f"/{n}"}, "route": {"cluster": n}} for n in names]
        hcm = {
            "@type": HCM,
            "stat_prefix": "front",
            "route_config": {
                "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]
            },
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
            ],
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

        def checked(stats: Any) -> bool:
            s = stats()
            return all(s.get(f"cluster.{n}.health_check.attempt", 0) >= 2 for n in names)

        def play(port_of: PortOf) -> dict[str, Any]:
            front = port_of("front")
            return {n: _seen(get(front, f"/{n}/x")) for n in names}

        def pick(stats: dict[str, int]) -> dict[str, int]:
            out = {}
            for n in names:
                out[f"{n} healthy"] = stats.get(f"cluster.{n}.membership_healthy", -1)
                for c in ("handshake", "fail_verify_error"):
                    out[f"{n} ssl.{c} > 0"] = int(stats.get(f"cluster.{n}.ssl.{c}", 0) > 0)
                out[f"{n} health_check.failure > 0"] = int(
                    stats.get(f"cluster.{n}.health_check.failure", 0) > 0
                )
            return out

        pair = run_pair(yaml.safe_dump(doc), tmp_path, play, pick, ready=checked)
    assert pair.proxyd.replies == pair.envoy.replies
    assert pair.proxyd.stats == pair.envoy.stats
    r = pair.envoy.replies
    assert r["hc_http"]["status"] == 200 and r["hc_tcp"]["status"] == 200
    assert r["hc_wrong"]["status"] == 503
    assert pair.envoy.stats["hc_wrong healthy"] == 0 and pair.envoy.stats["hc_http healthy"] == 1
