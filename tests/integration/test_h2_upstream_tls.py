"""HTTP/2 over TLS to an upstream: a real grpcio server with TLS (which speaks HTTP/2
only when ALPN chose ``h2``), a real grpcio client through proxyd. The cluster's
UpstreamTlsContext names no ALPN protocol: an HTTP/2 cluster offers ``h2``, as Envoy
does, and the call (unary and a server stream) goes through."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from tests.support import (
    ProxydProcess,
    bootstrap,
    dump_yaml,
    free_port,
    http_listener,
    static_cluster,
    wait_for,
)
from tests.tls_certs import make_certs

UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


def _ident(b: bytes) -> bytes:
    return b


def test_grpc_over_tls_upstream(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")

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
    upstream_port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        c = static_cluster("up", [upstream_port])
        c["typed_extension_protocol_options"] = {
            UPSTREAM_HTTP: {
                "@type": f"type.googleapis.com/{UPSTREAM_HTTP}",
                "explicit_http_config": {"http2_protocol_options": {}},
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
        port = free_port()
        routes = {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
                }  # fmt: skip
            ]
        }
        text = dump_yaml(bootstrap([http_listener("ingress", port, routes)], [c]))
        with ProxydProcess(tmp_path, text, concurrency=1) as p:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                assert ch.unary_unary("/t.S/Unary", _ident, _ident)(b"abc", timeout=5) == b"cba"
                got = list(ch.unary_stream("/t.S/Stream", _ident, _ident)(b"", timeout=5))
                assert got == [b"a", b"b", b"c"]
            # (the worker reports its stats in batches)
            wait_for(lambda: p.stats().get("cluster.up.upstream_cx_http2_total") == 1)
    finally:
        server.stop(0)
