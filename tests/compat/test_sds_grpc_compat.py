"""SDS from a management server (gRPC): real Envoy and real proxyd against the same
test xDS server (tests/xds_server.py, which serves StreamSecrets).

A TLS listener takes its certificate from the secret ``web`` over gRPC SDS (cluster
``xds``, HTTP/2); a second listener takes the same secret over REST. The server first
serves ``web`` with the example.com certificate; a client sees that certificate's
serial. Then the server pushes ``web`` with the other.test certificate: a new connection
sees the new serial while a connection opened before keeps serving, and the proxy ACKs
the new version. Both proxies must see the same serials and ACK the same versions.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.compat.test_chain_match_compat import _read_all
from tests.compat.test_tls_compat import answering_chain
from tests.support import ProxydProcess, wait_for
from tests.xds_server import SECRET, XdsServer

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def secret(chain: str, key: str) -> Secret:
    s = Secret(name="web")
    s.tls_certificate.certificate_chain.inline_bytes = Path(chain).read_bytes()
    s.tls_certificate.private_key.inline_bytes = Path(key).read_bytes()
    return s


def config(xds_port: tuple[int, int]) -> str:
    def sds(api: dict[str, Any]) -> dict[str, Any]:
        return {
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [
                    {
                        "name": "web",
                        "sds_config": {
                            "resource_api_version": "V3",
                            "initial_fetch_timeout": "5s",
                            "api_config_source": {"transport_api_version": "V3", **api},
                        },
                    }
                ]
            }
        }

    grpc = sds({"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]})
    rest = sds({"api_type": "REST", "cluster_names": ["xds_rest"], "refresh_delay": "0.2s"})
    listeners = [
        {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [answering_chain(name, tls, None)],
        }
        for name, tls in (("grpc", grpc), ("rest", rest))
    ]

    def cluster(name: str, http2: bool) -> dict[str, Any]:
        c: dict[str, Any] = {
            "name": name,
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": "127.0.0.1",
                                            "port_value": xds_port[0] if http2 else xds_port[1],
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
        if http2:
            c["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": HTTP_OPTIONS,
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            }
        return c

    doc = {
        "node": {"id": "sds-test", "cluster": "sds-test"},
        "static_resources": {
            "listeners": listeners,
            "clusters": [cluster("xds", True), cluster("xds_rest", False)],
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _serial(port: int) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="example.com") as s:
                der = s.getpeercert(binary_form=True) or b""
                s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                _read_all(s)
    except (ssl.SSLError, OSError):
        return "refused"
    from cryptography import x509

    return format(x509.load_der_x509_certificate(der).serial_number, "x")


def _open(port: int) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname="example.com")


def _still_serves(s: ssl.SSLSocket) -> bool:
    s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    return _read_all(s).startswith(b"HTTP/1.1 200")


def _play(server: XdsServer, port_of: Any, certs: Any) -> dict[str, Any]:
    grpc, rest = port_of("grpc"), port_of("rest")
    first = {"grpc": wait_for(lambda: _serial(grpc) != "refused" and _serial(grpc), timeout=10)}
    first["rest"] = wait_for(lambda: _serial(rest) != "refused" and _serial(rest), timeout=10)
    old = _open(grpc)
    server.set_resources(SECRET, "v2", [secret(certs.other, certs.other_key)])
    server.wait_for_ack(SECRET, "v2")
    second = {
        name: wait_for(lambda p=p, n=name: _serial(p) != first[n] and _serial(p), timeout=10)
        for name, p in (("grpc", grpc), ("rest", rest))
    }
    kept = _still_serves(old)
    old.close()
    return {"first": first, "second": second, "old connection serves": kept}


def test_sds_from_a_management_server_matches_envoy(tmp_path: Path, certs: Any) -> None:
    sides = {}
    for side in ("envoy", "proxyd"):
        with XdsServer() as server:
            # Served before the proxy starts: its listeners warm on it at once.
            server.set_resources(SECRET, "v1", [secret(certs.server, certs.server_key)])
            text = config((server.grpc_port, server.rest_port))
            if side == "envoy":
                with EnvoyRunner(text) as envoy:
                    sides[side] = _play(server, envoy.listener_port, certs)
            else:
                with ProxydProcess(tmp_path, text, concurrency=1) as p:
                    sides[side] = _play(server, p.listener_port, certs)
    serial = {name: _serial_of(getattr(certs, name)) for name in ("server", "other")}
    assert sides["envoy"]["first"] == {"grpc": serial["server"], "rest": serial["server"]}
    assert sides["envoy"]["second"] == {"grpc": serial["other"], "rest": serial["other"]}
    assert sides["proxyd"] == sides["envoy"]


def _serial_of(pem: str) -> str:
    from cryptography import x509

    return format(x509.load_pem_x509_certificate(Path(pem).read_bytes()).serial_number, "x")
