"""Listener socket settings: real Envoy and real proxyd on the same bootstrap.

Listener ``tuned`` has ``socket_options`` (TCP_MAXSEG 1000, set before bind, so the
SYN-ACK announces it and the client's connection takes it), ``tcp_backlog_size: 77``
(the listen queue ``ss`` shows), and the fields that change nothing a client can see in
proxyd as in Envoy here (``traffic_direction``, ``listener_filters_timeout``,
``connection_balance_config.exact_balance``). Listener ``freebind`` binds 192.0.2.1
(TEST-NET-1, on no interface of this host), which only IP_FREEBIND allows. Both
proxies must start, announce the same MSS, show the same backlog and the same bound
address, and proxy a request. proxyd alone: a reload that changes a bound listener's
socket settings is refused, and the running config stays.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.compat.hcm_wire import EchoUpstream, send
from tests.support import ProxydProcess, free_port, http_listener, static_cluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

TEST_NET = "192.0.2.1"
TCP_MAXSEG = 2  # netinet/tcp.h


def bootstrap(admin: int, tuned: int, freebind: int, upstream: int, backlog: int = 77) -> str:
    route_config = {
        "name": "r",
        "virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}
        ],
    }  # fmt: skip
    a = http_listener("tuned", tuned, route_config)
    a.update(
        {
            "socket_options": [
                {"description": "small MSS", "level": socket.IPPROTO_TCP, "name": TCP_MAXSEG,
                 "int_value": 1000, "state": "STATE_PREBIND"},
                {"level": socket.SOL_SOCKET, "name": socket.SO_KEEPALIVE, "int_value": 1,
                 "state": "STATE_LISTENING"},
            ],
            "tcp_backlog_size": backlog,
            "traffic_direction": "INBOUND",
            "listener_filters_timeout": "2s",
            "connection_balance_config": {"exact_balance": {}},
        }
    )  # fmt: skip
    b = http_listener("freebind", freebind, route_config)
    b["address"]["socket_address"]["address"] = TEST_NET
    b["freebind"] = True
    boot = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [a, b], "clusters": [static_cluster("echo", [upstream])]},
    }
    return yaml.safe_dump(boot, sort_keys=False)


def listening(port: int) -> list[tuple[str, int]]:
    """(local address, backlog) of the listening TCP sockets on ``port`` (``ss``)."""
    out = subprocess.run(
        ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    rows = []
    for line in out.splitlines():
        fields = line.split()
        rows.append((fields[3].rsplit(":", 1)[0], int(fields[2])))
    return sorted(rows)


def observe(start: Callable[[str, int], Any]) -> dict[str, Any]:
    with EchoUpstream() as upstream:
        admin, tuned, freebind = free_port(), free_port(), free_port()
        with start(bootstrap(admin, tuned, freebind, upstream.port), admin):
            with socket.create_connection(("127.0.0.1", tuned), timeout=5) as c:
                mss = c.getsockopt(socket.IPPROTO_TCP, TCP_MAXSEG)
            answer = send(tuned, b"GET / HTTP/1.1\r\nhost: a\r\nx-case: 1\r\n\r\n")
            return {
                "mss_at_most_1000": mss <= 1000,
                "tuned": listening(tuned),
                "freebind": listening(freebind),
                "status": answer.status,
            }


def test_listener_socket_settings_like_envoy(tmp_path: Path) -> None:
    envoy = observe(lambda text, admin: EnvoyRunner(text))
    proxyd = observe(lambda text, admin: ProxydProcess(tmp_path, text, admin, concurrency=1))
    assert envoy == {
        "mss_at_most_1000": True,
        "tuned": [("127.0.0.1", 77)],
        "freebind": [(TEST_NET, envoy["freebind"][0][1])],
        "status": 200,
    }
    assert proxyd == envoy


def test_changed_socket_settings_are_refused_on_reload(tmp_path: Path) -> None:
    with EchoUpstream() as upstream:
        admin, tuned, freebind = free_port(), free_port(), free_port()
        with ProxydProcess(tmp_path, bootstrap(admin, tuned, freebind, upstream.port), admin) as p:
            p.config_path.write_text(bootstrap(admin, tuned, freebind, upstream.port, backlog=99))
            result = p.ctl("reload")
            assert result.returncode != 0
            assert "listener 'tuned': freebind, tcp_backlog_size or socket_options changed" in (
                result.stdout + result.stderr
            )
            assert listening(tuned) == [("127.0.0.1", 77), ("127.0.0.1", 77)]
            assert send(tuned, b"GET / HTTP/1.1\r\nhost: a\r\nx-case: 2\r\n\r\n").status == 200
