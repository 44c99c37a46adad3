"""Cluster ``auto_config`` (the protocol chosen by ALPN): real Envoy and real proxyd on the
same YAML, in front of the same two TLS upstreams.

* cluster ``h2`` (auto_config) → a grpcio server with TLS, which speaks HTTP/2 only
  (its ALPN chooses ``h2``): a grpcio client's unary call and server stream go through;
* cluster ``h1`` (auto_config) → an HTTPS server that speaks HTTP/1.1 only (it chooses
  no ALPN protocol): HTTP/1.1 requests go through, and the server says they shared one
  connection, so the protocol stays what the first connection chose.

What the clients saw must be the same through both proxies. (proxyd learns a host's
protocol with one connection of its own the first time, so connection counts are not
compared.)
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import run_pair
from tests.support import bootstrap, http_listener, static_cluster
from tests.tls_upstream import TlsUpstream

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def _ident(b: bytes) -> bytes:
    return b


def grpc_tls_server(certs: Any) -> tuple[grpc.Server, int]:
    def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from (b"a", b"b", b"c")

    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(lambda r, c: r[::-1], _ident, _ident),
        "Stream": grpc.unary_stream_rpc_method_handler(stream, _ident, _ident),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", handlers),))
    creds = grpc.ssl_server_credentials(
        [(Path(certs.server_key).read_bytes(), Path(certs.server).read_bytes())]
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, port


def config(certs: Any, h2_port: int, h1_port: int) -> str:
    clusters = []
    for name, port in (("h2", h2_port), ("h1", h1_port)):
        c = static_cluster(name, [port])
        c["typed_extension_protocol_options"] = {
            UPSTREAM_HTTP: {
                "@type": f"type.googleapis.com/{UPSTREAM_HTTP}",
                "auto_config": {"http2_protocol_options": {}},
            }
        }
        c["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": TLS,
                "sni": "example.com",
                "common_tls_context": {
                    "validation_context": {"trusted_ca": {"filename": certs.ca}}
                },
            },
        }
        clusters.append(c)
    routes = {
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {"match": {"prefix": "/t.S/"}, "route": {"cluster": "h2"}},
                    {"match": {"prefix": "/"}, "route": {"cluster": "h1"}},
                ],
            }
        ]
    }
    return yaml.safe_dump(bootstrap([http_listener("ingress", 0, routes)], clusters))


def play(port_of: Any) -> dict[str, Any]:
    port = port_of("ingress")
    out: dict[str, Any] = {}
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        out["unary"] = ch.unary_unary("/t.S/Unary", _ident, _ident)(b"abc", timeout=5)
        out["stream"] = list(ch.unary_stream("/t.S/Stream", _ident, _ident)(b"", timeout=5))
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    answers = []
    for path in ("/one", "/two", "/three"):
        c.request("GET", path)
        r = c.getresponse()
        body = json.loads(r.read())
        answers.append((r.status, body["path"], body["sni"], body["request_on_connection"]))
    out["http1"] = answers
    c.close()
    return out


def test_auto_config_picks_the_protocol_by_alpn_as_envoy(tmp_path: Path, certs: Any) -> None:
    server, h2_port = grpc_tls_server(certs)
    try:
        with TlsUpstream(certs) as h1:
            pair = run_pair(config(certs, h2_port, h1.port), tmp_path, play)
    finally:
        server.stop(0)
    assert pair.envoy.replies["unary"] == b"cba"
    assert pair.envoy.replies["stream"] == [b"a", b"b", b"c"]
    assert [(a[0], a[3]) for a in pair.envoy.replies["http1"]] == [(200, 1), (200, 2), (200, 3)]
    assert pair.proxyd.replies == pair.envoy.replies
