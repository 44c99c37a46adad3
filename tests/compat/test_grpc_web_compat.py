"""The gRPC-Web filter: an HTTP/1.1 gRPC-Web client, real Envoy and real proxyd on the
same YAML, both in front of the same real grpcio server (an HTTP/2 cluster).

Cases: a binary unary call (initial metadata, the trailers as the body's last frame),
an error status with custom trailing metadata, a base64 (``-text``) request with and
without ``accept: application/grpc-web-text`` (the response base64 only with it), a
server-streaming call, bad base64 (400, grpc-status 13), a call to a cluster nobody
serves (the local reply keeps its HTTP status and gets grpc-status 14), and a plain
gRPC call from a grpcio client through the same listener (untouched by the filter).
What the client got (status, the gRPC-Web headers, the body with its chunks joined)
and the ``cluster.grpc.grpc-web.*`` stats must be the same for both.
"""

from __future__ import annotations

import base64
import socket
import struct
from typing import Any

import grpc
import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import run_pair
from tests.compat.test_grpc_proxy_compat import UPSTREAM_HTTP, _ident, start_server
from tests.support import bootstrap, free_port, http_listener, static_cluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

KEPT = ("content-type", "grpc-status", "grpc-message", "x-initial")


def config(grpc_port: int) -> str:
    routes = {
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {"match": {"prefix": "/test.Dead/"}, "route": {"cluster": "dead"}},
                    {"match": {"prefix": "/"}, "route": {"cluster": "grpc"}},
                ],
            }
        ]
    }
    clusters = []
    for name, port in (("grpc", grpc_port), ("dead", free_port())):
        c = static_cluster(name, [port])
        c["typed_extension_protocol_options"] = {
            UPSTREAM_HTTP: {
                "@type": f"type.googleapis.com/{UPSTREAM_HTTP}",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
        clusters.append(c)
    filters = [
        {
            "name": "envoy.filters.http.grpc_web",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"
            },
        }
    ]
    return yaml.safe_dump(
        bootstrap([http_listener("ingress", 0, routes, http_filters=filters)], clusters)
    )


def frame(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size, _, rest = body.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out += rest[:n]
        body = rest[n + 2 :]
    return out


def call(port: int, path: str, ctype: str, body: bytes, accept: str = "") -> dict[str, Any]:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {ctype}\r\n"
        f"content-length: {len(body)}\r\n" + (f"accept: {accept}\r\n" if accept else "") + "\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(head + body)
        raw = b""
        while True:
            try:
                data = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not data:
                break
            raw += data
            top, sep, rest = raw.partition(b"\r\n\r\n")
            if sep and (
                (b"transfer-encoding: chunked" in top.lower() and rest.endswith(b"0\r\n\r\n"))
                or (b"content-length: 0" in top.lower())
            ):
                break
    top, _, rest = raw.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() in KEPT:
            headers[name.lower()] = value.strip()
    chunked = "transfer-encoding: chunked" in top.decode("latin-1").lower()
    body_out = _dechunk(rest) if chunked else rest
    if headers.get("content-type", "").startswith("application/grpc-web-text"):
        body_out = b"".join(base64.b64decode(p + b"=" * (-len(p) % 4)) for p in _segments(body_out))
    return {"status": lines[0].split(" ")[1], "headers": headers, "body": body_out}


def _segments(text: bytes) -> list[bytes]:
    """Base64 pieces, each ending at its padding (every chunk is encoded on its own)."""
    out, cur = [], b""
    for i in range(0, len(text), 4):
        cur += text[i : i + 4]
        if text[i : i + 4].endswith(b"="):
            out.append(cur)
            cur = b""
    if cur:
        out.append(cur)
    return out


def play(port_of: Any) -> dict[str, Any]:
    port = port_of("ingress")
    out = {
        "unary": call(port, "/test.Echo/Unary", "application/grpc-web+proto", frame(b"hello")),
        "error": call(port, "/test.Echo/Unary", "application/grpc-web", frame(b"fail")),
        "text": call(
            port, "/test.Echo/Unary", "application/grpc-web-text",
            base64.b64encode(frame(b"hello")), accept="application/grpc-web-text",
        ),
        "text_no_accept": call(
            port, "/test.Echo/Unary", "application/grpc-web-text+proto",
            base64.b64encode(frame(b"hello")),
        ),
        "stream": call(port, "/test.Echo/ServerStream", "application/grpc-web", frame(b"3")),
        "bad_base64": call(
            port, "/test.Echo/Unary", "application/grpc-web-text", b"!!!!",
            accept="application/grpc-web-text",
        ),
        "dead": call(port, "/test.Dead/Unary", "application/grpc-web+proto", frame(b"x")),
    }  # fmt: skip
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        out["plain_grpc"] = ch.unary_unary("/test.Echo/Unary", _ident, _ident)(b"abc", timeout=5)
    return out


def pick(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in stats.items() if ".grpc-web." in k}


def test_grpc_web_matches_envoy(tmp_path: Any) -> None:
    server, port = start_server()
    try:
        pair = run_pair(config(port), tmp_path, play, pick)
    finally:
        server.stop(0)
    envoy, proxyd = pair.envoy.replies, pair.proxyd.replies
    # What Envoy did is what the cases are for (so the match below means something).
    assert envoy["unary"]["body"].startswith(frame(b"olleh") + b"\x80")
    assert envoy["text"]["headers"]["content-type"] == "application/grpc-web-text+proto"
    assert envoy["dead"]["headers"]["grpc-status"] == "14"
    assert envoy["plain_grpc"] == b"cba"
    assert {k: (proxyd[k], envoy[k]) for k in envoy if proxyd[k] != envoy[k]} == {}
    assert pair.proxyd.stats == pair.envoy.stats
