"""HTTP/2 rapid reset (CVE-2023-44487), proxyd beside real Envoy on the same YAML: a
client that opens streams and resets each at once gets its connection closed once half
of them were premature resets (Envoy's rule and default limits), counted in
``http.<prefix>.downstream_rq_too_many_premature_resets``; a well-behaved client on
another connection is served all along, and one that resets a few streams is not cut
off."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.support import UpstreamServer, bootstrap, http_listener, static_cluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

STAT = "http.edge.downstream_rq_too_many_premature_resets"


class SilentUpstream:
    """Accepts TCP connections (in the kernel's backlog) and never answers: a stream
    routed here stays open until the client resets it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def config(silent: int, up: int) -> str:
    routes = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [
                    {
                        "match": {"prefix": "/hang"},
                        "route": {"cluster": "silent", "timeout": "30s"},
                    },
                    {"match": {"prefix": "/"}, "route": {"cluster": "up"}},
                ],
            }
        ],
    }
    listener = http_listener("edge", 0, routes, stat_prefix="edge", codec_type="AUTO")
    clusters = [static_cluster("silent", [silent]), static_cluster("up", [up])]
    return yaml.safe_dump(bootstrap([listener], clusters), sort_keys=False)


def _connect(port: int) -> tuple[socket.socket, h2.connection.H2Connection]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    c = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    c.initiate_connection()
    sock.sendall(c.data_to_send())
    return sock, c


def _headers(path: str) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"GET"), (b":path", path.encode()), (b":scheme", b"http"),
            (b":authority", b"x")]  # fmt: skip


def rapid_resets(port: int, streams: int, wait_s: float) -> dict[str, Any]:
    """Open and reset ``streams`` streams, in batches; then read until the connection
    closes (or ``wait_s`` pass)."""
    sock, c = _connect(port)
    closed = False
    try:
        for start in range(0, streams, 50):
            for _ in range(min(50, streams - start)):
                sid = c.get_next_available_stream_id()
                c.send_headers(sid, _headers("/hang"), end_stream=True)
                c.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            try:
                sock.sendall(c.data_to_send())
            except OSError:
                closed = True
                break
            time.sleep(0.01)
        deadline = time.monotonic() + wait_s
        sock.settimeout(0.5)
        while not closed and time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
            if not data:
                closed = True
                break
            try:
                c.receive_data(data)
            except Exception:  # noqa: BLE001 - whatever a closing peer sent last
                pass
    finally:
        sock.close()
    return {"closed": closed}


def well_behaved(port: int) -> int:
    sock, c = _connect(port)
    try:
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, _headers("/echo"), end_stream=True)
        sock.sendall(c.data_to_send())
        status = 0
        while True:
            data = sock.recv(65536)
            if not data:
                return status
            for ev in c.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
                if isinstance(ev, h2.events.StreamEnded):
                    return status
            sock.sendall(c.data_to_send())
    finally:
        sock.close()


def play(port_of: PortOf) -> dict[str, Any]:
    port = port_of("edge")
    return {
        "a few resets": rapid_resets(port, 20, 1.5),
        "before": well_behaved(port),
        "rapid resets": rapid_resets(port, 800, 5.0),
        "after": well_behaved(port),
    }


def pick(stats: dict[str, int]) -> dict[str, int]:
    return {STAT: stats.get(STAT, 0)}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    silent = SilentUpstream()
    up = UpstreamServer("up").start()
    try:
        yield run_pair(
            config(silent.port, up.port), Path(tmp_path_factory.mktemp("rapid")), play, pick
        )
    finally:
        up.stop()
        silent.close()


def test_like_envoy(results: Pair) -> None:
    assert results.proxyd.replies == results.envoy.replies


def test_counted_like_envoy(results: Pair) -> None:
    assert results.proxyd.stats == results.envoy.stats


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    e = results.envoy.replies
    assert e["rapid resets"]["closed"] and not e["a few resets"]["closed"]
    assert e["before"] == 200 and e["after"] == 200
    assert results.envoy.stats[STAT] == 1
