"""ext_authz's CheckRequest on TLS connections: real Envoy and real proxyd on the same
YAML, pointed at the same grpcio authorization server
(:class:`tests.compat.ext_authz_servers.AuthGrpcServer`).

Two TLS listeners: ``mtls`` (a client certificate required, the TLS inspector,
``include_peer_certificate`` and ``include_tls_session``) and ``optional`` (a client
certificate asked for but not required, neither option, another server certificate).
Clients come with certificates whose principal is a URI SAN, a DNS SAN only, or the
subject only (an e-mail SAN), with and without SNI, and without a certificate. The
CheckRequest's ``source`` / ``destination`` principals, the URL-encoded client
certificate and ``tls_session`` must be what Envoy sends (with what differs by nature
taken out as in tests/compat/test_ext_authz_compat.py).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.compat.envoy_runner import envoy_available
from tests.compat.ext_authz_servers import AuthGrpcServer
from tests.compat.pair import Pair, PortOf, run_pair
from tests.compat.test_ext_authz_compat import (
    H2_OPTIONS,
    ext_authz,
    ext_authz_stats,
    grpc_checks,
    routes,
)
from tests.support import UpstreamServer, bootstrap, dump_yaml, http_listener, static_cluster
from tests.tls_certs import Certs, _leaf, make_certs

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
TLS_INSPECTOR = {
    "name": "envoy.filters.listener.tls_inspector",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3."
        "TlsInspector"
    },
}


def tls_listener(name: str, certs: Certs, cert: str, require: bool, authz: dict[str, Any],
                 inspector: bool) -> dict[str, Any]:  # fmt: skip
    listener = http_listener(name, 0, routes(), [authz])
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS,
            "require_client_certificate": require,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": certs.path(f"{cert}.pem")},
                        "private_key": {"filename": certs.path(f"{cert}.key")},
                    }
                ],
                "validation_context": {"trusted_ca": {"filename": certs.ca}},
            },
        },
    }
    if inspector:
        listener["listener_filters"] = [TLS_INSPECTOR]
    return listener


def config(certs: Certs, up: int, auth: int) -> str:
    service = {"envoy_grpc": {"cluster_name": "authz"}, "timeout": "0.5s"}
    full = ext_authz(
        grpc_service=service,
        transport_api_version="V3",
        include_peer_certificate=True,
        include_tls_session=True,
    )
    bare = ext_authz(grpc_service=service, transport_api_version="V3")
    authz = static_cluster("authz", [auth])
    authz["typed_extension_protocol_options"] = H2_OPTIONS
    doc = bootstrap(
        [
            tls_listener("mtls", certs, "server", True, full, inspector=True),
            tls_listener("optional", certs, "other", False, bare, inspector=False),
        ],
        [static_cluster("up", [up]), authz],
    )
    return dump_yaml(doc)


# (listener, client certificate or None, SNI or None, path)
CASES = [
    ("mtls", "client", "example.com", "/echo/uri"),
    ("mtls", "client", None, "/echo/no-sni"),
    ("mtls", "dnsonly", "www.example.org", "/echo/dns"),
    ("mtls", "mailonly", "example.com", "/echo/subject"),
    ("optional", "client", "other.test", "/echo/optional"),
    ("optional", None, None, "/echo/anonymous"),
    ("optional", "client", None, "/echo/deny"),
]


def request(port: int, certs: Certs, cert: str | None, sni: str | None, path: str) -> str:
    ctx = ssl.create_default_context(cafile=certs.ca)
    ctx.check_hostname = False
    if cert is not None:
        ctx.load_cert_chain(certs.path(f"{cert}.pem"), certs.path(f"{cert}.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    return data.split(b"\r\n", 1)[0].decode()


def play(port_of: PortOf, certs: Certs, auth: AuthGrpcServer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for listener, cert, sni, path in CASES:
        status = request(port_of(listener), certs, cert, sni, path)
        out[f"{listener} {cert} {sni} {path}"] = {
            "status": status,
            "authz": grpc_checks(auth.take()),
        }
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    where = Path(tmp_path_factory.mktemp("authz-certs"))
    certs = make_certs(where)
    _leaf("dnsonly", "ca", "dnsonly", "DNS:dns.client.test,DNS:second.client.test", "clientAuth",
          where)  # fmt: skip
    _leaf("mailonly", "ca", "mailonly", "email:me@client.test", "clientAuth", where)
    with UpstreamServer("up") as up, AuthGrpcServer() as auth:
        yield run_pair(
            config(certs, up.port, auth.port),
            Path(tmp_path_factory.mktemp("authz-tls")),
            lambda port_of: play(port_of, certs, auth),
            ext_authz_stats,
        )


def _attrs(pair_side: Any, key: str) -> dict[str, Any]:
    (check,) = pair_side.replies[key]["authz"]
    attrs: dict[str, Any] = check["request"]["attributes"]
    return attrs


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def test_check_request_like_envoy(results: Pair, case: tuple[str, ...]) -> None:
    key = " ".join(str(c) for c in case)
    assert results.proxyd.replies[key] == results.envoy.replies[key]


def test_envoy_sends_what_the_cases_say(results: Pair) -> None:
    envoy = results.envoy
    uri = _attrs(envoy, "mtls client example.com /echo/uri")
    assert uri["source"]["principal"] == "spiffe://test/client"
    assert uri["source"]["certificate"].startswith("-----BEGIN%20CERTIFICATE-----%0A")
    assert uri["destination"]["principal"] == "example.com"
    assert uri["tlsSession"] == {"sni": "example.com"}
    assert _attrs(envoy, "mtls client None /echo/no-sni")["tlsSession"] == {}
    assert _attrs(envoy, "mtls dnsonly www.example.org /echo/dns")["source"]["principal"] == (
        "dns.client.test"
    )
    subject = _attrs(envoy, "mtls mailonly example.com /echo/subject")["source"]["principal"]
    assert subject == "CN=mailonly,O=proxyd tests"
    optional = _attrs(envoy, "optional client other.test /echo/optional")
    assert "certificate" not in optional["source"] and "tlsSession" not in optional
    assert optional["destination"]["principal"] == "other.test"
    anonymous = _attrs(envoy, "optional None None /echo/anonymous")
    assert "principal" not in anonymous["source"]


def test_stats_like_envoy(results: Pair) -> None:
    assert results.proxyd.stats == results.envoy.stats
