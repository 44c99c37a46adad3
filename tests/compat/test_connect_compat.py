"""HTTP/1.1 CONNECT, proxyd beside real Envoy on the same YAML: ``connect_matcher``
routes with ``upgrade_configs`` CONNECT, terminated here (``connect_config``: the proxy
answers 200 and tunnels to a TCP echo server) or forwarded (the CONNECT goes to an
upstream proxy, whose 200 starts the tunnel); a CONNECT route without CONNECT upgrades,
and a virtual host with no CONNECT route. Compared: the status line, what came back
through the tunnel, and the head the upstream proxy saw."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.support import TcpEchoServer, bootstrap, http_listener, static_cluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]


class ConnectProxy:
    """An upstream HTTP proxy: answers a CONNECT with 200, then echoes the tunnel."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.heads: list[str] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            self.heads.append(head.split(b"\r\n", 1)[0].decode())
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n" + rest)
            while chunk := conn.recv(4096):
                conn.sendall(chunk)

    def close(self) -> None:
        self.sock.close()


def _connect_route(cluster: str, upgrades: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    return {
        "match": {"connect_matcher": {}, **match},
        "route": {"cluster": cluster, **({"upgrade_configs": upgrades} if upgrades else {})},
    }


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
    listener = http_listener("edge", 0, routes, stat_prefix="edge")
    clusters = [static_cluster("echo", [echo]), static_cluster("proxy", [proxy])]
    return yaml.safe_dump(bootstrap([listener], clusters), sort_keys=False)


def connect(port: int, authority: str, headers: dict[str, str]) -> dict[str, Any]:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    out: dict[str, Any] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{lines}\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode()
        out["status"] = status_line.split(" ", 2)[1] if status_line else "closed"
        out["header names"] = sorted(
            ln.split(b":", 1)[0].decode().lower()
            for ln in head.split(b"\r\n")[1:]
            if b":" in ln and ln.split(b":", 1)[0].lower() not in (b"date", b"content-length")
        )
        if status_line.split(" ")[1:2] == ["200"]:
            payload = b"hello through the tunnel"
            s.sendall(payload)
            got = rest
            while len(got) < len(payload):
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
            out["tunnel"] = got.decode()
    return out


CASES: dict[str, tuple[str, dict[str, str]]] = {
    "terminated": ("target.example:443", {"x-mode": "terminate"}),
    "forwarded": ("target.example:443", {}),
    "route_without_connect_upgrade": ("noupgrade.example:443", {}),
    "no_connect_route": ("plain.example:443", {}),
}


def play(port_of: PortOf, proxy: ConnectProxy) -> dict[str, Any]:
    port = port_of("edge")
    out: dict[str, Any] = {}
    for name, (authority, headers) in CASES.items():
        before = len(proxy.heads)
        out[name] = connect(port, authority, headers)
        out[name]["proxy saw"] = proxy.heads[before:]
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    proxy = ConnectProxy()
    try:
        with TcpEchoServer() as echo:
            yield run_pair(
                config(echo.port, proxy.port),
                Path(tmp_path_factory.mktemp("connect")),
                lambda port_of: play(port_of, proxy),
            )
    finally:
        proxy.close()


@pytest.mark.parametrize("name", list(CASES))
def test_connect_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    e = results.envoy.replies
    assert e["terminated"]["tunnel"] == "hello through the tunnel"
    assert e["forwarded"]["tunnel"] == "hello through the tunnel"
    assert e["forwarded"]["proxy saw"] == ["CONNECT target.example:443 HTTP/1.1"]
    assert e["no_connect_route"]["status"] == "404"
