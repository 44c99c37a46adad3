"""Plain CONNECT over HTTP/2 (RFC 9113 §8.5), proxyd beside real Envoy on the same YAML:
a listener with ``http2_protocol_options.allow_connect``, ``connect_matcher`` routes
terminated here (``connect_config``: the proxy answers 200 and tunnels to a TCP echo
server, which says ``<eof>`` after the tunnel's half-close) or forwarded (the CONNECT
goes to an upstream HTTP/1.1 proxy whose 200 starts the tunnel); a CONNECT route without
CONNECT upgrades, a virtual host with no CONNECT route, and a listener without
allow_connect. Compared: the status and header names the client got, what came back
through the tunnel, how the stream ended (its frames), and the head the upstream proxy
saw."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.compat.test_connect_compat import ConnectProxy, _connect_route
from tests.h2_ws_client import FrameLog
from tests.support import TcpEchoServer, bootstrap, http_listener, static_cluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]


def config(echo: int, proxy: int) -> str:
    routes = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "no-connect",
                "domains": ["plain.example:443"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}],
            },
            {
                "name": "no-upgrade",
                "domains": ["noupgrade.example:443"],
                "routes": [_connect_route("echo", [])],
            },
            {
                "name": "connect",
                "domains": ["*"],
                "routes": [
                    _connect_route(
                        "echo",
                        [{"upgrade_type": "CONNECT", "connect_config": {}}],
                        headers=[{"name": "x-mode", "string_match": {"exact": "terminate"}}],
                    ),
                    _connect_route("proxy", [{"upgrade_type": "CONNECT"}]),
                ],
            },
        ],
    }
    listeners = [
        http_listener(
            "edge", 0, routes, codec_type="AUTO", http2_protocol_options={"allow_connect": True}
        ),
        http_listener("noconnect", 0, routes, codec_type="AUTO"),
    ]
    clusters = [static_cluster("echo", [echo]), static_cluster("proxy", [proxy])]
    return yaml.safe_dump(bootstrap(listeners, clusters), sort_keys=False)


def h2_connect(
    port: int, authority: str, headers: dict[str, str], end: str = "end_stream"
) -> dict[str, Any]:
    """CONNECT ``authority`` on stream 1; once answered 2xx, send ``hello``, read its
    echo, then end as ``end`` says (``end_stream``: END_STREAM, then read until the
    stream ends; ``reset``: RST_STREAM CANCEL)."""
    out: dict[str, Any] = {"status": None, "tunnel": b""}
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    c = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    c.initiate_connection()
    sock.sendall(c.data_to_send())
    frames = FrameLog(c)
    state: dict[str, Any] = {"ended": None, "broken": False}

    def read_once() -> None:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            state["ended"] = state["ended"] or "still open"
            return
        except OSError:
            data = b""
        if not data:
            state["ended"] = state["ended"] or "connection closed"
            return
        frames.feed(data)
        if state["broken"]:
            return
        try:
            events = c.receive_data(data)
        except h2.exceptions.ProtocolError:
            state["broken"] = True
            return
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                hdrs = dict(ev.headers)
                out["status"] = int(hdrs[b":status"])
                out["header names"] = sorted(
                    k.decode() for k in hdrs if k not in (b"date", b"server")
                )
            elif isinstance(ev, h2.events.DataReceived):
                c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                out["tunnel"] += ev.data
            elif isinstance(ev, h2.events.StreamEnded):
                state["ended"] = "end_stream"
            elif isinstance(ev, h2.events.StreamReset):
                state["ended"] = f"reset {int(ev.error_code)}"
            elif isinstance(ev, h2.events.ConnectionTerminated):
                state["broken"] = True
        sock.sendall(c.data_to_send())

    try:
        hdrs = [(b":method", b"CONNECT"), (b":authority", authority.encode())]
        hdrs += [(k.encode(), v.encode()) for k, v in headers.items()]
        c.send_headers(1, hdrs)
        sock.sendall(c.data_to_send())
        while out["status"] is None and state["ended"] is None:
            read_once()
        if out["status"] is not None and 200 <= out["status"] < 300:
            c.send_data(1, b"hello")
            sock.sendall(c.data_to_send())
            while b"hello" not in out["tunnel"] and state["ended"] is None:
                read_once()
            if end == "reset":
                c.reset_stream(1, 8)
                sock.sendall(c.data_to_send())
                sock.settimeout(0.5)
                while state["ended"] is None:
                    read_once()
            else:
                c.end_stream(1)
                sock.sendall(c.data_to_send())
        sock.settimeout(1.0)
        while state["ended"] in (None, "end_stream") and state["ended"] != "still open":
            before = state["ended"]
            read_once()
            if before == "end_stream" and state["ended"] == "end_stream":
                break
    finally:
        sock.close()
    out["tunnel"] = out["tunnel"].decode()
    out["ended"] = state["ended"]
    out["frames"] = frames.log
    return out


CASES: dict[str, tuple[str, str, dict[str, str], str]] = {
    "terminated": ("edge", "echo.example:443", {"x-mode": "terminate"}, "end_stream"),
    "terminated_reset": ("edge", "echo.example:443", {"x-mode": "terminate"}, "reset"),
    "forwarded": ("edge", "proxied.example:443", {}, "end_stream"),
    "route_without_connect_upgrade": ("edge", "noupgrade.example:443", {}, "end_stream"),
    "no_connect_route": ("edge", "plain.example:443", {}, "end_stream"),
    "not_allowed": ("noconnect", "echo.example:443", {"x-mode": "terminate"}, "end_stream"),
}


def play_all(port_of: PortOf, proxy: ConnectProxy) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (listener, authority, headers, end) in CASES.items():
        before = len(proxy.heads)
        result = h2_connect(port_of(listener), authority, headers, end)
        result["proxy saw"] = proxy.heads[before:]
        out[name] = result
    return out


def pick(stats: dict[str, int]) -> dict[str, int]:
    keep = ("cluster.echo.upstream_cx_total", "cluster.proxy.upstream_cx_total",
            "http2.rx_messaging_error", "http2.tx_reset", "http2.rx_reset")  # fmt: skip
    return {k: stats.get(k, 0) for k in keep}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    proxy = ConnectProxy()
    with TcpEchoServer() as echo:
        try:
            yield run_pair(
                config(echo.port, proxy.port),
                Path(tmp_path_factory.mktemp("h2connect")),
                lambda port_of: play_all(port_of, proxy),
                pick,
            )
        finally:
            proxy.close()


@pytest.mark.parametrize("name", list(CASES))
def test_connect_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_stats_like_envoy(results: Pair) -> None:
    assert results.proxyd.stats == results.envoy.stats


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    e = results.envoy.replies
    assert e["terminated"]["status"] == 200 and e["terminated"]["tunnel"].startswith("hello")
    assert e["forwarded"]["status"] == 200 and e["forwarded"]["proxy saw"]
