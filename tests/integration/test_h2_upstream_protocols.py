"""use_downstream_protocol_config and gRPC local replies with real processes.

* A cluster with ``use_downstream_protocol_config`` (with ``http2_protocol_options``):
  an HTTP/1.1 client's request reaches the host over HTTP/1.1, an HTTP/2 client's over
  HTTP/2 (the upstream, tests/h2_upstream_server.py, tells which it got).
* Backpressure from an HTTP/2 client that does not read to the HTTP/2 upstream.
* A gRPC request whose route's ``max_stream_duration`` passes while the host holds it:
  the client gets Envoy's trailers-only reply, HTTP 200 with grpc-status 4
  (DEADLINE_EXCEEDED) and ``grpc-message: downstream duration timeout``; one whose
  host resets the stream gets grpc-status 14 (UNAVAILABLE) with the reset reason.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx

from tests.h2_upstream_server import H2Upstream
from tests.support import (
    ProxydProcess,
    bootstrap,
    dump_yaml,
    free_port,
    http_listener,
    static_cluster,
    wait_for,
)

UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def h2_request(
    port: int, path: str, headers: tuple[tuple[str, str], ...] = ()
) -> tuple[dict[str, str], bytes]:
    """(response headers, body) of one HTTP/2 request over a new connection."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    c = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="latin-1"))
    c.initiate_connection()
    block = [(":method", "POST" if headers else "GET"), (":path", path), (":scheme", "http"), (":authority", "h2.test"), *headers]  # fmt: skip
    c.send_headers(1, block, end_stream=True)
    s.sendall(c.data_to_send())
    got: dict[str, str] = {}
    body = bytearray()
    with s:
        while True:
            data = s.recv(65536)
            if not data:
                return got, bytes(body)
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    got = dict(ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                elif isinstance(ev, h2.events.StreamEnded | h2.events.StreamReset):
                    return got, bytes(body)
            s.sendall(c.data_to_send())


def cluster(name: str, port: int, protocol: dict[str, Any]) -> dict[str, Any]:
    c = static_cluster(name, [port])
    c["typed_extension_protocol_options"] = {
        UPSTREAM_HTTP: {"@type": f"type.googleapis.com/{UPSTREAM_HTTP}", **protocol}
    }
    return c


def test_downstream_protocol_and_grpc_local_replies(tmp_path: Path) -> None:
    port = free_port()
    with H2Upstream() as up:
        routes = {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {
                            "match": {"prefix": "/grpc/"},
                            "route": {
                                "cluster": "h2",
                                "max_stream_duration": {"max_stream_duration": "0.2s"},
                            },
                        },
                        {"match": {"prefix": "/h2/"}, "route": {"cluster": "h2"}},
                        {"match": {"prefix": "/"}, "route": {"cluster": "either"}},
                    ],
                }
            ]
        }
        clusters = [
            cluster(
                "either",
                up.port,
                {
                    "use_downstream_protocol_config": {
                        "http_protocol_options": {},
                        "http2_protocol_options": {},
                    }
                },  # fmt: skip
            ),
            cluster("h2", up.port, {"explicit_http_config": {"http2_protocol_options": {}}}),
        ]
        text = dump_yaml(bootstrap([http_listener("ingress", port, routes)], clusters))
        with ProxydProcess(tmp_path, text, concurrency=1):
            with httpx.Client(timeout=5) as client:
                r = client.get(f"http://127.0.0.1:{port}/from-h1")
            assert (r.status_code, r.text) == (200, "h1")
            assert up.requests[-1].headers[":protocol"] == "h1"
            headers, body = h2_request(port, "/from-h2")
            assert headers[":status"] == "200"
            assert body == b"/from-h2 0"
            assert up.requests[-1].headers[":authority"] == "h2.test"

            grpc = (("content-type", "application/grpc"), ("te", "trailers"))
            headers, body = h2_request(port, "/grpc/hold", grpc)
            assert headers[":status"] == "200", (headers, body)
            assert headers["grpc-status"] == "4"
            assert headers["grpc-message"] == "downstream duration timeout"
            assert headers["content-type"] == "application/grpc"
            assert body == b""
            headers, _ = h2_request(port, "/h2/reset", grpc)
            assert (headers[":status"], headers["grpc-status"]) == ("200", "14")
            assert headers["grpc-message"].endswith("reset reason: remote reset")
            # Not gRPC: the HTTP reply.
            headers, body = h2_request(port, "/h2/reset")
            assert headers[":status"] == "503"
            assert body.endswith(b"reset reason: remote reset")


def test_a_client_that_does_not_read_holds_the_upstream_stream(tmp_path: Path) -> None:
    """Backpressure from the client to the HTTP/2 upstream: an HTTP/2 client that does
    not open its stream window gets 64 KiB; proxyd takes at most its own stream window
    (256 KiB) more from the upstream, far below the 8 MiB body; once the client reads,
    the whole body arrives."""
    port = free_port()
    with H2Upstream() as up:
        routes = {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "h2"}}],
                }  # fmt: skip
            ]
        }
        c = cluster("h2", up.port, {"explicit_http_config": {"http2_protocol_options": {}}})
        text = dump_yaml(bootstrap([http_listener("ingress", port, routes)], [c]))
        with ProxydProcess(tmp_path, text, concurrency=1):
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(5)
            conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="latin-1"))
            conn.initiate_connection()
            conn.send_headers(1, [(":method", "GET"), (":path", "/big"), (":scheme", "http"), (":authority", "h2.test")], end_stream=True)  # fmt: skip
            s.sendall(conn.data_to_send())
            got = 0
            ended = False

            def read(ack: bool) -> None:
                nonlocal got, ended
                data = s.recv(1 << 20)
                assert data
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.DataReceived):
                        got += len(ev.data)
                        if ack:
                            conn.acknowledge_received_data(ev.flow_controlled_length, 1)
                    elif isinstance(ev, h2.events.StreamEnded):
                        ended = True
                s.sendall(conn.data_to_send())

            with s:
                while got < 65535:  # the client's initial window, not given back
                    read(ack=False)
                # The upstream's progress stops: proxyd holds one window of it.
                wait_for(lambda: stable(lambda: up.big_sent))
                assert 65535 <= up.big_sent <= 65535 + 256 * 1024 + 64 * 1024
                conn.acknowledge_received_data(got, 1)  # the client reads now
                s.sendall(conn.data_to_send())
                while not ended:
                    read(ack=True)
            assert got == 8 * 1024 * 1024
            assert up.big_sent == got


def stable(value: Any) -> bool:
    """``value()`` is the same now as a moment ago (progress stopped)."""
    first = value()
    time.sleep(0.2)
    return bool(value() == first)
