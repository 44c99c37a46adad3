"""WebSocket over HTTP/1.1 (``upgrade_configs``), proxyd beside real Envoy on the same
YAML, with a real WebSocket server and client (wsproto) on each side.

One listener takes websocket upgrades (the connection manager's ``upgrade_configs``);
one of its routes turns them off (``enabled: false``), and one has a 1 s route timeout
that a longer session outlives. A second listener has no ``upgrade_configs``. Compared
for each case: the handshake status, the echoed messages (one of 1 MiB), the pong, the
close, and the handshake head the upstream saw."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.support import bootstrap, http_listener, static_cluster
from tests.ws_upstream import WsEchoServer, ws_session

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]


def config(upstream: int) -> str:
    def routes() -> dict[str, Any]:
        return {
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
                                "upgrade_configs": [
                                    {"upgrade_type": "websocket", "enabled": False}
                                ],
                            },
                        },
                        {
                            "match": {"prefix": "/short"},
                            "route": {"cluster": "ws", "timeout": "1s"},
                        },
                        {
                            "match": {"prefix": "/route-on"},
                            "route": {
                                "cluster": "ws",
                                "upgrade_configs": [{"upgrade_type": "websocket"}],
                            },
                        },
                        {"match": {"prefix": "/"}, "route": {"cluster": "ws"}},
                    ],
                }
            ],
        }

    listeners = [
        http_listener(
            "ws", 0, routes(), upgrade_configs=[{"upgrade_type": "websocket"}], stat_prefix="ws"
        ),
        http_listener("plain", 0, routes(), stat_prefix="plain"),
    ]
    return yaml.safe_dump(bootstrap(listeners, [static_cluster("ws", [upstream])]), sort_keys=False)


# name: (listener, path, messages, pause between them, size of a binary message)
CASES: dict[str, tuple[str, str, list[str], float, int]] = {
    "echo": ("ws", "/chat", ["hello", "world"], 0.0, 0),
    "large_message": ("ws", "/chat", ["a" * 70000], 0.0, 1 << 20),
    "outlives_route_timeout": ("ws", "/short", ["one", "two", "three"], 0.6, 0),
    "route_disables": ("ws", "/off", ["x"], 0.0, 0),
    "upstream_rejects": ("ws", "/chat/reject", ["x"], 0.0, 0),
    "not_configured": ("plain", "/chat", ["x"], 0.0, 0),
    # Only the route lists websocket: it is on there (Envoy's per-route upgrade map).
    "route_enables_it_alone": ("plain", "/route-on", ["x"], 0.0, 0),
}
SEEN = ("path", "connection", "upgrade", "sec-websocket-version", "x-forwarded-proto", "host")


def play_all(port_of: PortOf, server: WsEchoServer) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (listener, path, messages, pause, big) in CASES.items():
        before = len(server.heads)
        result = ws_session(port_of(listener), path, messages, pause_s=pause, big=big)
        heads = server.heads[before:]
        result["upstream saw"] = [{k: h.get(k) for k in SEEN} for h in heads]
        out[name] = result
    return out


def pick(stats: dict[str, int]) -> dict[str, int]:
    keep = (
        "cluster.ws.upstream_rq_101",
        "cluster.ws.upstream_rq_403",
        "cluster.ws.upstream_cx_total",
    )
    return {k: v for k, v in stats.items() if k in keep}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    server = WsEchoServer().start()
    try:
        yield run_pair(
            config(server.port),
            Path(tmp_path_factory.mktemp("ws")),
            lambda port_of: play_all(port_of, server),
            pick,
        )
    finally:
        server.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_websocket_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_stats_like_envoy(results: Pair) -> None:
    assert results.proxyd.stats == results.envoy.stats


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    e = results.envoy.replies
    assert e["echo"]["replies"] == ["echo:hello", "echo:world"] and e["echo"]["pong"]
    assert e["large_message"]["replies"][1] == f"{(1 << 20) + 5} bytes"
    assert e["outlives_route_timeout"]["close"] == 1000
    assert e["route_disables"]["status"] == 403 and e["not_configured"]["status"] == 403
    assert e["upstream_rejects"]["status"] == 403
    assert e["route_enables_it_alone"]["status"] == 101
