"""Downstream TLS through a real proxyd: bodies larger than the socket buffers both
ways (the TlsSocket adapter's would-block paths), keep-alive, the handshake timeout,
the TLS access-log operators, and a plaintext listener beside a TLS one."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import (
    ProxydProcess,
    UpstreamServer,
    bootstrap,
    http_listener,
    static_cluster,
    wait_for,
)

TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
FILE_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
LOG_FORMAT = (
    "%REQUESTED_SERVER_NAME% %DOWNSTREAM_TLS_VERSION% %DOWNSTREAM_PEER_URI_SAN% "
    "%DOWNSTREAM_PEER_SUBJECT% %DOWNSTREAM_PEER_ISSUER% %DOWNSTREAM_TLS_CIPHER% "
    "%PROTOCOL%\n"
)

TLS_INSPECTOR = {
    "name": "envoy.filters.listener.tls_inspector",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3."
        "TlsInspector"
    },
}


def config(certs: Any, upstream: int, log_path: Path) -> str:
    route = {
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}],
            }
        ]
    }
    log = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": FILE_LOG,
                "path": str(log_path),
                "log_format": {"text_format_source": {"inline_string": LOG_FORMAT}},
            },
        }
    ]
    tls = http_listener("tls", 0, route, access_log=log)
    tls["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TLS_TYPE,
            "common_tls_context": {
                "tls_certificates": [
                    {
                        "certificate_chain": {"filename": certs.server},
                        "private_key": {"filename": certs.server_key},
                    }
                ],
                # Optional client certificates: asked for, checked when sent.
                "validation_context": {"trusted_ca": {"filename": certs.ca}},
            },
        },
    }
    tls["filter_chains"][0]["transport_socket_connect_timeout"] = "0.5s"
    # The inspector records the requested server name (%REQUESTED_SERVER_NAME%). A client
    # that sends nothing is given up on after 0.5 s (15 s by default) and goes on to the
    # chain, whose handshake timeout closes it 0.5 s later.
    tls["listener_filters"] = [TLS_INSPECTOR]
    tls["listener_filters_timeout"] = "0.5s"
    tls["continue_on_listener_filters_timeout"] = True
    plain = http_listener("plain", 0, route)
    doc = bootstrap([tls, plain], [static_cluster("up", [upstream])])
    return yaml.safe_dump(doc)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, certs):
    tmp = tmp_path_factory.mktemp("tls")
    up = UpstreamServer("up")
    up.start()
    log_path = tmp / "access.log"
    p = ProxydProcess(tmp, config(certs, up.port, log_path), concurrency=1).start()
    try:
        yield p, log_path
    finally:
        p.stop()
        up.stop()


def client(certs: Any, cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs.ca)
    if cert:
        ctx.load_cert_chain(certs.client, certs.client_key)
    return ctx


def read_response(s: ssl.SSLSocket | socket.socket, slow: bool = False) -> tuple[bytes, bytes]:
    """One response (content-length framed): its head and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    while len(body) < length:
        if slow:
            time.sleep(0.002)
        chunk = s.recv(16384 if slow else 262144)
        assert chunk
        body += chunk
    return head, body


def connect(proxy: ProxydProcess, ctx: ssl.SSLContext, sni: str = "example.com") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", proxy.listener_port("tls")), timeout=20)
    return ctx.wrap_socket(raw, server_hostname=sni)


def test_large_bodies_both_ways_and_keep_alive(proxy, certs) -> None:
    p, _ = proxy
    with connect(p, client(certs)) as s:
        # A response far larger than the socket buffers, read slowly: proxyd's sends
        # would block many times.
        s.sendall(b"GET /bytes/3000000 HTTP/1.1\r\nhost: example.com\r\n\r\n")
        head, body = read_response(s, slow=True)
        assert head.startswith(b"HTTP/1.1 200") and body == b"x" * 3000000
        # A request body larger than the buffers, on the same connection.
        payload = bytes(range(256)) * 8192
        s.sendall(
            b"POST /echo HTTP/1.1\r\nhost: example.com\r\ncontent-length: %d\r\n\r\n" % len(payload)
            + payload
        )
        head, body = read_response(s)
        info = json.loads(body)
        assert info["body_sha256"] == hashlib.sha256(payload).hexdigest()
        assert dict(info["headers"])["x-forwarded-proto"] == "https"
        for _ in range(3):
            s.sendall(b"GET /echo HTTP/1.1\r\nhost: example.com\r\n\r\n")
            assert read_response(s)[0].startswith(b"HTTP/1.1 200")


def test_plaintext_listener_beside_tls_says_http(proxy) -> None:
    p, _ = proxy
    with socket.create_connection(("127.0.0.1", p.listener_port("plain")), timeout=10) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nhost: a\r\n\r\n")
        info = json.loads(read_response(s)[1])
        assert dict(info["headers"])["x-forwarded-proto"] == "http"


def test_a_client_that_never_starts_the_handshake_is_closed(proxy) -> None:
    p, _ = proxy
    with socket.create_connection(("127.0.0.1", p.listener_port("tls")), timeout=20) as s:
        # The inspector's listener_filters_timeout, then transport_socket_connect_timeout.
        assert s.recv(100) == b""


def test_access_log_shows_the_tls_session(proxy, certs) -> None:
    p, log_path = proxy
    for ctx, sni in ((client(certs, cert=True), "a.example.org"), (client(certs), "b.example.org")):
        with connect(p, ctx, sni) as s:
            s.sendall(f"GET /echo HTTP/1.1\r\nhost: {sni}\r\nconnection: close\r\n\r\n".encode())
            read_response(s)

    def logged() -> dict[str, list[str]]:
        text = log_path.read_text() if log_path.exists() else ""
        found = {line.split(" ")[0]: line.split(" ") for line in text.splitlines()}
        return found if {"a.example.org", "b.example.org"} <= set(found) else {}

    found = wait_for(logged, timeout=10)
    with_cert, without = found["a.example.org"], found["b.example.org"]
    assert with_cert[:3] == ["a.example.org", "TLSv1.3", "spiffe://test/client"]
    assert with_cert[3] == "CN=client,O=proxyd"  # "O=proxyd tests": split at the space
    assert with_cert[-1] == "HTTP/1.1"
    assert with_cert[5].startswith("CN=ca,O=proxyd")
    assert without[:4] == ["b.example.org", "TLSv1.3", "-", "-"]
