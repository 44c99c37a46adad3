"""WebSocket over HTTP/2 with extended CONNECT (RFC 8441), proxyd beside real Envoy on
the same YAML: an HTTP/2 client opens a WebSocket on one stream (``:method CONNECT``,
``:protocol websocket``) through a listener whose ``http2_protocol_options.allow_connect``
is on, and proxyd forwards it to a real HTTP/1.1 WebSocket server as a GET with
``Upgrade: websocket``; the server's 101 comes back as a 200 and the frames travel in
DATA frames. Compared for each case: the SETTINGS value, the status and headers the
client got, the echoed messages (one of 1 MiB), the pong, the close, how the stream
ended, and the handshake head the upstream saw."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.h2_ws_client import h2_ws_session, server_connect_protocol
from tests.support import bootstrap, http_listener, static_cluster
from tests.ws_upstream import WsEchoServer

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]


def config(upstream: int) -> str:
    routes = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/off"},
                        "route": {
                            "cluster": "ws",
                            "upgrade_configs": [{"upgrade_type": "websocket", "enabled": False}],
                        },
                    },
                    {
                        "match": {"prefix": "/idle"},
                        "route": {"cluster": "ws", "idle_timeout": "0.5s"},
                    },
                    {"match": {"prefix": "/"}, "route": {"cluster": "ws"}},
                ],
            }
        ],
    }
    listeners = [
        http_listener(
            "ws",
            0,
            routes,
            codec_type="AUTO",
            upgrade_configs=[{"upgrade_type": "websocket"}],
            http2_protocol_options={"allow_connect": True},
        ),
        http_listener(
            "noconnect",
            0,
            routes,
            codec_type="AUTO",
            upgrade_configs=[{"upgrade_type": "websocket"}],
        ),
        http_listener(
            "noupgrade",
            0,
            routes,
            codec_type="AUTO",
            http2_protocol_options={"allow_connect": True},
        ),
    ]
    return yaml.safe_dump(bootstrap(listeners, [static_cluster("ws", [upstream])]), sort_keys=False)


# name: (listener, path, messages, big binary message size, how the client ends)
CASES: dict[str, tuple[str, str, list[str], int, str]] = {
    "echo": ("ws", "/chat", ["hello", "world"], 0, "close"),
    # The route's idle_timeout (0.5 s) passes between the two messages (1 s apart).
    "idle_timeout": ("ws", "/idle", ["one", "two"], 0, "close"),
    "large_message": ("ws", "/chat", ["a" * 70000], 1 << 20, "close"),
    "client_ends_stream": ("ws", "/chat", ["x"], 0, "end_stream"),
    "client_resets": ("ws", "/chat", ["x"], 0, "reset"),
    "route_disables": ("ws", "/off", ["x"], 0, "close"),
    "upstream_rejects": ("ws", "/chat/reject", ["x"], 0, "close"),
    "not_allowed": ("noconnect", "/chat", ["x"], 0, "close"),
    "not_configured": ("noupgrade", "/chat", ["x"], 0, "close"),
}
SEEN = ("path", "connection", "upgrade", "sec-websocket-version", "host", "content-length",
        "transfer-encoding", ":protocol", "x-forwarded-proto")  # fmt: skip


def play_all(port_of: PortOf, server: WsEchoServer) -> dict[str, Any]:
    out: dict[str, Any] = {
        "settings": {n: server_connect_protocol(port_of(n)) for n in ("ws", "noconnect")}
    }
    for name, (listener, path, messages, big, how) in CASES.items():
        before = len(server.heads)
        pause = 1.0 if name == "idle_timeout" else 0.0
        result = h2_ws_session(
            port_of(listener), path, messages, big=big, close_how=how, pause_s=pause
        )
        heads = server.heads[before:]
        result["upstream saw"] = [{k: h.get(k) for k in SEEN} for h in heads]
        out[name] = result
    return out


def pick(stats: dict[str, int]) -> dict[str, int]:
    keep = ("cluster.ws.upstream_rq_101", "cluster.ws.upstream_rq_403",
            "cluster.ws.upstream_cx_total", "http.ws.downstream_rq_2xx",
            "http.ws.downstream_rq_4xx", "http.noconnect.downstream_rq_4xx",
            "http.noconnect.downstream_cx_protocol_error", "http2.rx_messaging_error",
            "http2.tx_reset", "http2.rx_reset", "http.ws.downstream_rq_1xx")  # fmt: skip
    return {k: stats.get(k, 0) for k in keep}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    server = WsEchoServer().start()
    try:
        yield run_pair(
            config(server.port),
            Path(tmp_path_factory.mktemp("h2ws")),
            lambda port_of: play_all(port_of, server),
            pick,
        )
    finally:
        server.stop()


def test_settings_like_envoy(results: Pair) -> None:
    assert results.proxyd.replies["settings"] == results.envoy.replies["settings"]


@pytest.mark.parametrize("name", list(CASES))
def test_websocket_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_stats_like_envoy(results: Pair) -> None:
    assert results.proxyd.stats == results.envoy.stats


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    e = results.envoy.replies
    assert e["settings"] == {"ws": 1, "noconnect": 0}
    assert e["echo"]["status"] == 200
    assert e["echo"]["replies"] == ["echo:hello", "echo:world"] and e["echo"]["pong"]
    assert e["large_message"]["replies"][1] == f"{(1 << 20) + 5} bytes"
    assert e["route_disables"]["status"] == 403
    assert e["upstream_rejects"]["status"] == 403
