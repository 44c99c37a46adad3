"""The network RBAC filter (``envoy.filters.network.rbac``) before a TCP proxy and before
an HTTP connection manager, proxyd beside real Envoy on the same YAML.

Clients connect from 127.0.0.1 and from 127.0.0.2 (both loopback): ALLOW and DENY
policies on the peer address, with shadow rules, decide which connections pass. Compared:
what each client got (the echo, an HTTP status, or a close), the RBAC stats and the
TCP cluster's connection count (Envoy's TCP proxy connects before the first byte is
judged)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.support import (
    TcpEchoServer,
    UpstreamServer,
    bootstrap,
    http_listener,
    static_cluster,
)

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

RBAC = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def _peer(cidr: str) -> dict[str, Any]:
    address, length = cidr.split("/")
    return {"direct_remote_ip": {"address_prefix": address, "prefix_len": int(length)}}


def _rbac(stat_prefix: str, action: str, principal: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": "envoy.filters.network.rbac",
        "typed_config": {
            "@type": RBAC,
            "stat_prefix": stat_prefix,
            "rules": {
                "action": action,
                "policies": {"p": {"permissions": [{"any": True}], "principals": [principal]}},
            },
            **extra,
        },
    }


def _tcp_listener(name: str, filters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    *filters,
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": TCP_PROXY,
                            "stat_prefix": name,
                            "cluster": "echo",
                        },
                    },
                ]
            }
        ],
    }


def config(echo: int, web: int) -> str:
    shadow = {
        "shadow_rules": {
            "action": "DENY",
            "policies": {
                "s": {"permissions": [{"any": True}], "principals": [_peer("127.0.0.2/32")]}
            },
        },
        "shadow_rules_stat_prefix": "audit",
    }
    http = http_listener(
        "web",
        0,
        {
            "name": "local",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "web"}}],
                }
            ],
        },
        stat_prefix="web",
    )
    chain = http["filter_chains"][0]
    chain["filters"].insert(0, _rbac("web_rbac", "ALLOW", _peer("127.0.0.1/32")))
    listeners = [
        _tcp_listener("tcp_allow", [_rbac("tcp_allow.", "ALLOW", _peer("127.0.0.1/32"), **shadow)]),
        _tcp_listener("tcp_deny", [_rbac("tcp_deny", "DENY", _peer("127.0.0.0/8"))]),
        _tcp_listener(
            "tcp_two",
            [
                _rbac("first", "ALLOW", {"any": True}),
                _rbac("second", "DENY", _peer("127.0.0.2/32")),
            ],
        ),
        http,
    ]
    clusters = [static_cluster("echo", [echo]), static_cluster("web", [web])]
    return yaml.safe_dump(bootstrap(listeners, clusters), sort_keys=False)


def _tcp(port: int, source: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        try:
            s.sendall(b"hello")
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        except OSError as exc:
            return f"error {type(exc).__name__}"
    return data.decode() or "closed"


def _http(port: int, source: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
        try:
            s.sendall(b"GET /status/200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        except OSError as exc:
            return f"error {type(exc).__name__}"
    return data.split(b"\r\n", 1)[0].decode() or "closed"


CASES: dict[str, tuple[str, str, str]] = {
    "tcp_allowed": ("tcp", "tcp_allow", "127.0.0.1"),
    "tcp_not_allowed": ("tcp", "tcp_allow", "127.0.0.2"),
    "tcp_denied": ("tcp", "tcp_deny", "127.0.0.1"),
    "tcp_two_filters_pass": ("tcp", "tcp_two", "127.0.0.1"),
    "tcp_second_filter_denies": ("tcp", "tcp_two", "127.0.0.2"),
    "http_allowed": ("http", "web", "127.0.0.1"),
    "http_not_allowed": ("http", "web", "127.0.0.2"),
}


def play_all(port_of: PortOf) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (kind, listener, source) in CASES.items():
        port = port_of(listener)
        out[name] = _tcp(port, source) if kind == "tcp" else _http(port, source)
    return out


def pick(stats: dict[str, int]) -> dict[str, int]:
    return {
        k: v
        for k, v in stats.items()
        if ".rbac." in k
        or k.startswith(("first", "second"))
        or k == "cluster.echo.upstream_cx_total"
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    web = UpstreamServer("web").start()
    try:
        with TcpEchoServer() as echo:
            yield run_pair(
                config(echo.port, web.port), Path(tmp_path_factory.mktemp("nrbac")), play_all, pick
            )
    finally:
        web.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_network_rbac_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_stats_like_envoy(results: Pair) -> None:
    assert results.proxyd.stats == results.envoy.stats


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    e = results.envoy.replies
    assert e["tcp_allowed"].startswith("hello") and e["http_allowed"].endswith("200 OK")
    assert not e["tcp_not_allowed"].startswith("hello")
    assert not e["http_not_allowed"].startswith("HTTP")
