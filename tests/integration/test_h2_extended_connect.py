"""WebSocket over HTTP/2 (RFC 8441 extended CONNECT) and CONNECT tunnels with real
processes: an HTTP/2 client, proxyd, a real HTTP/1.1 WebSocket server (wsproto) and a
TCP echo server.

* ``allow_connect`` announces SETTINGS_ENABLE_CONNECT_PROTOCOL 1; a ``:protocol
  websocket`` stream gets a 200 and carries messages both ways (one of 4 MiB, more than
  the stream windows, so flow control runs both ways), a ping and a close; the
  upstream's close resets the stream with CONNECT_ERROR.
* A tunnel and plain requests share one connection: a GET on another stream is served
  while the WebSocket is open, and the WebSocket still echoes after it.
* Without ``allow_connect`` the setting is 0 and such a stream closes the connection
  (``http2.rx_messaging_error``); the worker serves the next client.
* A plain CONNECT terminated here (``connect_config``) carries 2 MiB each way through
  the same small windows, and END_STREAM half-closes the upstream.
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.events
import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from tests.h2_ws_client import h2_ws_session, server_connect_protocol
from tests.support import (
    ProxydProcess,
    TcpEchoServer,
    UpstreamServer,
    bootstrap,
    dump_yaml,
    http_listener,
    static_cluster,
    wait_for,
)
from tests.ws_upstream import WsEchoServer

MIB = 1024 * 1024


def routes() -> dict:
    return {
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"connect_matcher": {}},
                        "route": {
                            "cluster": "echo",
                            "upgrade_configs": [
                                {"upgrade_type": "CONNECT", "connect_config": {}}
                            ],
                        },
                    },
                    {"match": {"prefix": "/plain"}, "route": {"cluster": "up"}},
                    {"match": {"prefix": "/"}, "route": {"cluster": "ws"}},
                ],
            }
        ]
    }


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxydProcess]:
    ws = WsEchoServer().start()
    up = UpstreamServer("up").start()
    echo = TcpEchoServer().__enter__()
    listeners = [
        http_listener(
            "ingress",
            0,
            routes(),
            codec_type="AUTO",
            upgrade_configs=[{"upgrade_type": "websocket"}],
            # Small windows: a 4 MiB message needs many WINDOW_UPDATEs each way.
            http2_protocol_options={
                "allow_connect": True,
                "initial_stream_window_size": 65535,
                "initial_connection_window_size": 65535,
            },
        ),
        http_listener("noconnect", 0, routes(), upgrade_configs=[{"upgrade_type": "websocket"}]),
    ]
    clusters = [
        static_cluster("ws", [ws.port]),
        static_cluster("up", [up.port]),
        static_cluster("echo", [echo.port]),
    ]
    config = dump_yaml(bootstrap(listeners, clusters))
    try:
        with ProxydProcess(tmp_path_factory.mktemp("h2ws"), config, concurrency=1) as p:
            yield p
    finally:
        echo.__exit__()
        up.stop()
        ws.stop()


def test_a_websocket_over_http2_echoes_a_large_message_and_a_ping(proxy: ProxydProcess):
    port = proxy.listener_port("ingress")
    assert server_connect_protocol(port) == 1
    out = h2_ws_session(port, "/chat", ["hello", "x" * 100000], big=4 * MIB)
    assert out["status"] == 200
    assert out["headers"] == [":status", "sec-websocket-accept"]
    assert out["replies"] == ["echo:hello", "100005 chars", f"{4 * MIB + 5} bytes"]
    assert out["pong"] and out["close"] == 1000
    # The upstream closed its connection after the close frame: CONNECT_ERROR.
    assert out["ended"] == "reset 10"


def test_a_tunnel_and_plain_requests_share_the_connection(proxy: ProxydProcess):
    sock = socket.create_connection(("127.0.0.1", proxy.listener_port("ingress")), timeout=10)
    c = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    c.initiate_connection()
    sock.sendall(c.data_to_send())
    ws = Connection(ConnectionType.CLIENT)
    got: dict[int, list] = {1: [], 3: []}

    def read_until(done) -> None:  # noqa: ANN001
        while not done():
            data = sock.recv(65536)
            assert data, "the connection closed"
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    got[ev.stream_id].append(int(dict(ev.headers)[b":status"]))
                elif isinstance(ev, h2.events.DataReceived):
                    c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    if ev.stream_id == 1:
                        ws.receive_data(ev.data)
                        got[1].extend(e.data for e in ws.events() if isinstance(e, TextMessage))
                elif isinstance(ev, h2.events.StreamEnded):
                    got[ev.stream_id].append("end")
            sock.sendall(c.data_to_send())

    with sock:
        key = base64.b64encode(os.urandom(16))
        c.send_headers(1, [(b":method", b"CONNECT"), (b":protocol", b"websocket"),
                           (b":scheme", b"http"), (b":path", b"/chat"),
                           (b":authority", b"ws.test"), (b"sec-websocket-version", b"13"),
                           (b"sec-websocket-key", key)])  # fmt: skip
        sock.sendall(c.data_to_send())
        read_until(lambda: got[1] == [200])
        c.send_headers(3, [(b":method", b"GET"), (b":path", b"/plain"), (b":scheme", b"http"),
                           (b":authority", b"x")], end_stream=True)  # fmt: skip
        sock.sendall(c.data_to_send())
        read_until(lambda: "end" in got[3])
        assert got[3][0] == 200
        c.send_data(1, ws.send(TextMessage(data="still here")))
        sock.sendall(c.data_to_send())
        read_until(lambda: len(got[1]) == 2)
        assert got[1] == [200, "echo:still here"]


def test_without_allow_connect_the_connection_closes(proxy: ProxydProcess):
    port = proxy.listener_port("noconnect")
    assert server_connect_protocol(port) == 0
    out = h2_ws_session(port, "/chat", ["x"])
    assert out["status"] is None and out["ended"] == "connection closed"
    assert out["frames"] == []  # no GOAWAY, no reset: closed as Envoy closes it
    wait_for(lambda: proxy.stats().get("http2.rx_messaging_error", 0) >= 1, timeout=5)
    # The worker goes on.
    again = h2_ws_session(proxy.listener_port("ingress"), "/chat", ["y"])
    assert again["replies"] == ["echo:y"]


def test_a_terminated_connect_tunnels_2_mib_each_way_and_half_closes(proxy: ProxydProcess):
    """A plain CONNECT to a TCP echo server (connect_config): 2 MiB through the 64 KiB
    windows and back; the client's END_STREAM half-closes the upstream, whose
    ``<eof>`` and close end the stream."""
    sock = socket.create_connection(("127.0.0.1", proxy.listener_port("ingress")), timeout=10)
    c = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    c.initiate_connection()
    sock.sendall(c.data_to_send())
    got = {"status": 0, "data": bytearray(), "ended": False}

    def read_once() -> None:
        data = sock.recv(65536)
        assert data, "the connection closed"
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                got["status"] = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                got["data"] += ev.data
            elif isinstance(ev, h2.events.StreamEnded):
                got["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                raise AssertionError(f"reset {ev.error_code}")
        sock.sendall(c.data_to_send())

    with sock:
        c.send_headers(1, [(b":method", b"CONNECT"), (b":authority", b"echo.test:7")])
        sock.sendall(c.data_to_send())
        while not got["status"]:
            read_once()
        assert got["status"] == 200
        payload = os.urandom(2 * MIB)
        view = memoryview(payload)
        while view:
            room = min(c.local_flow_control_window(1), c.max_outbound_frame_size, len(view))
            if room <= 0:
                read_once()
                continue
            c.send_data(1, bytes(view[:room]))
            sock.sendall(c.data_to_send())
            view = view[room:]
        c.end_stream(1)
        sock.sendall(c.data_to_send())
        while not got["ended"]:
            read_once()
        assert bytes(got["data"]) == payload + b"<eof>"
