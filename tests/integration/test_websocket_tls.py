"""A WebSocket through a TLS listener (wss, the TLS terminated by proxyd) to a plaintext
WebSocket upstream: the handshake, messages both ways (one larger than the TLS
records and socket buffers), ping and close."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import ProxydProcess, bootstrap, http_listener, static_cluster
from tests.ws_upstream import WsEchoServer, ws_session

TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def config(certs: Any, upstream: int) -> str:
    routes = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "ws"}}],
            }
        ],
    }
    listener = http_listener(
        "wss", 0, routes, upgrade_configs=[{"upgrade_type": "websocket"}], stat_prefix="wss"
    )
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS_TYPE,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": certs.server},
                        "private_key": {"filename": certs.server_key},
                    }
                ]
            },
        },
    }
    return yaml.safe_dump(
        bootstrap([listener], [static_cluster("ws", [upstream])]), sort_keys=False
    )


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, certs: Any) -> Iterator[tuple[Any, Any]]:
    server = WsEchoServer().start()
    tmp = Path(tmp_path_factory.mktemp("wss"))
    p = ProxydProcess(tmp, config(certs, server.port), concurrency=1).start()
    try:
        yield p, server
    finally:
        p.stop()
        server.stop()


def test_a_websocket_over_tls(proxy: tuple[Any, Any], certs: Any) -> None:
    p, server = proxy
    ctx = ssl.create_default_context(cafile=certs.ca)
    result = ws_session(
        p.listener_port("wss"),
        "/live",
        ["hello", "x" * 100_000],
        big=300_000,
        wrap=lambda s: ctx.wrap_socket(s, server_hostname="example.com"),
    )
    assert result["status"] == 101
    assert result["replies"] == ["echo:hello", "echo:" + "x" * 100_000, "300005 bytes"]
    assert result["pong"] and result["close"] == 1000
    assert server.heads[-1]["upgrade"] == "websocket"
    assert server.heads[-1]["x-forwarded-proto"] == "https"
