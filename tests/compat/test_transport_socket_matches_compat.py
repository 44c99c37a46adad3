"""Cluster ``transport_socket_matches``: a transport socket per host, chosen by the
host's (or its locality's) ``envoy.transport_socket_match`` metadata, the cluster's
``transport_socket`` for the rest; one real Envoy and one proxyd on the same YAML.

Cluster ``mixed`` (round robin over three hosts):

* a TLS host in a locality whose metadata says ``secure: true`` (match ``tls``);
* a TLS host asking for a client certificate, whose own metadata says ``mtls: "yes"``
  (match ``mtls``, with a client certificate) although its locality says
  ``secure: true`` too: the endpoint's metadata is tried first, over every match;
* a plaintext host without metadata: the cluster's default (no transport_socket).

Cluster ``tls_default``: the default is TLS, and the host whose metadata selects the
``plain`` match (a raw_buffer socket) is spoken to in plaintext.

The cases: which hosts answer, over TLS or not, with the client certificate or not.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import PortOf, run_pair
from tests.support import UpstreamServer
from tests.tls_upstream import TlsUpstream

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
RAW = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
MATCH_KEY = "envoy.transport_socket_match"


def endpoint(port: int, labels: dict[str, Any] | None = None) -> dict[str, Any]:
    ep: dict[str, Any] = {
        "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    }
    if labels is not None:
        ep["metadata"] = {"filter_metadata": {MATCH_KEY: labels}}
    return ep


def tls_socket(certs: Any, client_cert: bool = False) -> dict[str, Any]:
    common: dict[str, Any] = {"validation_context": {"trusted_ca": {"filename": certs.ca}}}
    if client_cert:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": certs.client},
                "private_key": {"filename": certs.client_key},
            }
        ]
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": UPSTREAM_TLS, "common_tls_context": common},
    }


def config(certs: Any, tls_port: int, mtls_port: int, plain_port: int) -> str:
    mixed = {
        "name": "mixed",
        "type": "STATIC",
        "connect_timeout": "1s",
        "transport_socket_matches": [
            {"name": "mtls", "match": {"mtls": "yes"}, "transport_socket": tls_socket(certs, True)},
            {"name": "tls", "match": {"secure": True}, "transport_socket": tls_socket(certs)},
        ],
        "load_assignment": {
            "cluster_name": "mixed",
            "endpoints": [
                {
                    "locality": {"zone": "a"},
                    "metadata": {"filter_metadata": {MATCH_KEY: {"secure": True}}},
                    "lb_endpoints": [endpoint(tls_port), endpoint(mtls_port, {"mtls": "yes"})],
                },
                {"lb_endpoints": [endpoint(plain_port)]},
            ],
        },
    }
    tls_default = {
        "name": "tls_default",
        "type": "STATIC",
        "connect_timeout": "1s",
        "transport_socket": tls_socket(certs),
        "transport_socket_matches": [
            {
                "name": "plain",
                "match": {"kind": "plain", "n": 1},
                "transport_socket": {
                    "name": "envoy.transport_sockets.raw_buffer",
                    "typed_config": {"@type": RAW},
                },
            }
        ],
        "load_assignment": {
            "cluster_name": "tls_default",
            "endpoints": [
                {
                    "lb_endpoints": [
                        endpoint(tls_port, {"kind": "plain"}),  # not all labels: TLS
                        endpoint(plain_port, {"kind": "plain", "n": 1, "extra": "x"}),
                    ]
                }
            ],
        },
    }
    routes = [
        {"match": {"prefix": "/mixed"}, "route": {"cluster": "mixed"}},
        {"match": {"prefix": "/default"}, "route": {"cluster": "tls_default"}},
    ]
    hcm = {
        "@type": HCM,
        "stat_prefix": "in",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "in",
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
            "clusters": [mixed, tls_default],
        },
    }
    return yaml.safe_dump(doc)


def get(port: int, path: str) -> str:
    """Which upstream answered, and how: "<label> tls", "<label> tls+client-cert",
    "<name> plain", or the status."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        return f"status {status}"
    if body.startswith(b"Hello from "):  # the plaintext demo upstream
        return f"{body.split()[2].decode()} plain"
    info = json.loads(body)
    client = "+client-cert" if "spiffe://test/client" in info["client_sans"] else ""
    return f"{info['server']} tls{client}"


def test_transport_socket_matches_as_in_envoy(tmp_path: Path, certs) -> None:
    plain = UpstreamServer("plain")
    plain.start()
    try:
        with (
            TlsUpstream(certs, label="tls-host") as tls_host,
            TlsUpstream(certs, label="mtls-host", verify_clients=True) as mtls_host,
        ):
            text = config(certs, tls_host.port, mtls_host.port, plain.port)

            def play(port_of: PortOf) -> dict[str, Any]:
                port = port_of("in")
                return {
                    "mixed": sorted(get(port, "/mixed") for _ in range(6)),
                    "default": sorted(get(port, "/default") for _ in range(4)),
                }

            pair = run_pair(text, tmp_path, play)
    finally:
        plain.stop()
    assert pair.envoy.replies["mixed"] == sorted(
        ["tls-host tls", "mtls-host tls+client-cert", "plain plain"] * 2
    )
    assert pair.envoy.replies["default"] == sorted(["tls-host tls", "plain plain"] * 2)
    assert pair.proxyd.replies == pair.envoy.replies
