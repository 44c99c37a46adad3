"""The TCP proxy network filter: its config (defaults, refusals by name), its epoch
form, and one worker connection driven on loopback sockets (half-close both ways,
bytes and stats, refused upstream, no cluster, circuit breaker, idle timeout and
max_downstream_connection_duration on trio's clock, the access log record)."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import yaml

from proxyd.config import load
from proxyd.epoch import (
    AccessLog,
    Cluster,
    Endpoint,
    Epoch,
    HttpConnectionManager,
    Listener,
    OutlierDetection,
    RouteConfig,
    TcpCluster,
    TcpProxy,
    from_wire,
    to_wire,
)
from proxyd.errors import ConfigError, ProxydError
from proxyd.master.explain import ExplainError, choose_listener
from proxyd.protocol.epoch_check import EpochChecker
from proxyd.protocol.epoch_summary import format_summary, summarize
from proxyd.worker.buffers import BufferPool
from proxyd.worker.deadlines import DeadlineKind
from proxyd.worker.outcomes import CONNECT_FAILED
from proxyd.worker.stats import StatsStore
from proxyd.worker.tcp_proxy import MAX_CHUNK, ClusterPick, TcpConnection, TcpListenerPlan
from proxyd.worker.upstream import ClusterState

TCP_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
FILTERS = "static_resources.listeners[0].filter_chains[0].filters"


def bootstrap(**tcp: Any) -> dict[str, Any]:
    config = {"@type": TCP_TYPE, "stat_prefix": "t", "cluster": "c", **tcp}
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "l",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.tcp_proxy", "typed_config": config}
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "c",
                    "load_assignment": {
                        "cluster_name": "c",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": 9,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        }
    }


def compile_tcp(tmp_path: Path, doc: dict[str, Any]) -> Listener:
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump(doc))
    (lst,) = load(str(path)).epoch_template.listeners
    return lst


# -- config -----------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    lst = compile_tcp(tmp_path, bootstrap())
    assert lst.hcm is None
    assert lst.tcp_proxy == TcpProxy(stat_prefix="t", cluster="c")
    tcp = lst.tcp_proxy
    assert (tcp.idle_timeout_s, tcp.max_connect_attempts) == (3600.0, 1)
    assert tcp.max_downstream_connection_duration_s == 0.0


def test_fields(tmp_path: Path) -> None:
    doc = bootstrap(
        idle_timeout="0s",
        max_connect_attempts=3,
        max_downstream_connection_duration="2.5s",
        access_log_options={"flush_access_log_on_connected": True},
        access_log=[
            {
                "name": "envoy.access_loggers.stdout",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3."
                    "StdoutAccessLog"
                },
            }
        ],
    )
    tcp = compile_tcp(tmp_path, doc).tcp_proxy
    assert tcp is not None
    assert (tcp.idle_timeout_s, tcp.max_connect_attempts) == (0.0, 3)
    assert tcp.max_downstream_connection_duration_s == 2.5
    assert [al.sink for al in tcp.access_logs] == ["stdout"]
    assert tcp.log_on_connected
    assert not tcp.hash_source_ip


def test_hash_policy_source_ip(tmp_path: Path) -> None:
    tcp = compile_tcp(tmp_path, bootstrap(hash_policy=[{"source_ip": {}}])).tcp_proxy
    assert tcp is not None and tcp.hash_source_ip
    with pytest.raises(ConfigError) as info:  # Envoy's rule: at most one
        compile_tcp(tmp_path, bootstrap(hash_policy=[{"source_ip": {}}, {"source_ip": {}}]))
    assert "hash_policy" in info.value.path


def test_weighted_clusters(tmp_path: Path) -> None:
    doc = bootstrap()
    tc = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    del tc["typed_config"]["cluster"]
    tc["typed_config"]["weighted_clusters"] = {
        "clusters": [{"name": "c", "weight": 1}, {"name": "missing", "weight": 4}]
    }
    tcp = compile_tcp(tmp_path, doc).tcp_proxy
    assert tcp is not None
    assert tcp.cluster == ""
    assert tcp.weighted == (TcpCluster("c", 1), TcpCluster("missing", 4))


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        (
            {"tunneling_config": {"hostname": "h", "propagate_response_headers": True}},
            "typed_config.tunneling_config.propagate_response_headers",
        ),
        (
            {"hash_policy": [{"filter_state": {"key": "k"}}]},
            "typed_config.hash_policy[0].filter_state",
        ),
        ({"on_demand": {}}, "typed_config.on_demand"),
        ({"metadata_match": {}}, "typed_config.metadata_match"),
        (
            {"access_log_options": {"access_log_flush_interval": "1s"}},
            "typed_config.access_log_options.access_log_flush_interval",
        ),
        ({"upstream_idle_timeout": "1s"}, "typed_config.upstream_idle_timeout"),
    ],
)
def test_refused_by_name(tmp_path: Path, extra: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_tcp(tmp_path, bootstrap(**extra))
    assert info.value.path == f"{FILTERS}[0].{where}"
    assert "not supported by proxyd" in info.value.reason


def test_two_network_filters_refused(tmp_path: Path) -> None:
    doc = bootstrap()
    filters = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    filters.append(dict(filters[0]))
    with pytest.raises(ConfigError) as info:
        compile_tcp(tmp_path, doc)
    assert info.value.path == FILTERS + "[0]"  # only network RBAC may come before the last
    assert "tcp_proxy" in info.value.reason


def test_envoy_rules_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        compile_tcp(tmp_path, bootstrap(stat_prefix=""))
    assert "stat_prefix" in info.value.path
    with pytest.raises(ConfigError) as info:
        compile_tcp(tmp_path, bootstrap(max_connect_attempts=0))
    assert "max_connect_attempts" in info.value.path


# -- epoch ------------------------------------------------------------------------------


def tcp_listener(**tcp: Any) -> Listener:
    return Listener("l", "127.0.0.1", 0, None, tcp_proxy=TcpProxy("t", **tcp))


def test_epoch_wire_round_trip() -> None:
    lst = tcp_listener(weighted=(TcpCluster("a", 1), TcpCluster("b", 2)), idle_timeout_s=0.5)
    epoch = Epoch(1, (lst,), ())
    assert from_wire(Epoch, to_wire(epoch)) == epoch


def test_epoch_check_and_summary() -> None:
    epoch = Epoch(1, (tcp_listener(cluster="c"),), ())
    EpochChecker().check(epoch)
    lines = format_summary(summarize(epoch))
    assert lines[1] == "listener 'l' 127.0.0.1:0: tcp proxy 't' -> cluster 'c'"
    bad = tcp_listener(cluster="c", access_logs=(AccessLog("x.log", format="%NOPE%"),))
    with pytest.raises(ProxydError, match="tcp_proxy access_logs"):
        EpochChecker().check(Epoch(2, (bad,), ()))


def test_cluster_pick_follows_the_weights() -> None:
    pick = ClusterPick(("a", "b"), (1, 3))
    values = iter([0, 1, 3, 4, 7])
    pick._random.getrandbits = lambda _bits: next(values)  # type: ignore[method-assign]
    assert [pick() for _ in range(5)] == ["a", "b", "b", "a", "b"]
    assert ClusterPick(("only",), (1,))() == "only"


# -- one connection -----------------------------------------------------------------------


class Lines:
    """An access-log writer that keeps what it was given."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)


class CountingPool(BufferPool):
    """The worker's TCP buffer pool, counting the buffers taken and not given back."""

    def __init__(self) -> None:
        super().__init__(MAX_CHUNK)
        self.held = 0

    def take(self) -> tuple[bytearray, memoryview]:
        self.held += 1
        return super().take()

    def give(self, buf: bytearray, view: memoryview) -> None:
        self.held -= 1
        super().give(buf, view)


class FakeWorker:
    def __init__(self) -> None:
        self.tcp_buffers = CountingPool()
        self.stats = StatsStore()
        self.connections: set[Any] = set()
        self.closed = 0

    def connection_closed(self) -> None:
        self.closed += 1


LOG = (
    "%ACCESS_LOG_TYPE% %UPSTREAM_CLUSTER% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% "
    "%UPSTREAM_TRANSPORT_FAILURE_REASON%"
)


class Setup:
    def __init__(
        self,
        port: int,
        cluster: str = "c",
        max_connections: int = 1024,
        outlier: OutlierDetection | None = None,
        **tcp: Any,
    ):
        self.worker = FakeWorker()
        self.log = Lines()
        c = Cluster(
            "c",
            "STATIC",
            1.0,
            "ROUND_ROBIN",
            (Endpoint("127.0.0.1", port),) if port else (),
            cb_max_connections=max_connections,
            outlier_detection=outlier,
        )
        self.cluster = ClusterState(c, self.worker.stats)
        lst = Listener(
            "l",
            "127.0.0.1",
            0,
            None,
            tcp_proxy=TcpProxy("t", cluster=cluster, access_logs=(AccessLog("x", LOG),), **tcp),
        )
        self.plan = TcpListenerPlan(
            lst,
            {"c": self.cluster},
            self.worker.stats,
            {"x": self.log},  # type: ignore[dict-item]
        )

    def connection(self) -> tuple[TcpConnection, socket.socket]:
        """A loopback TCP connection: the proxy's end, and the client's."""
        with listening() as front:
            client = socket.create_connection(front.getsockname())
            front.setblocking(True)
            ours, _ = front.accept()
        ours.setblocking(False)
        client.setblocking(False)
        return TcpConnection(self.worker, "l", ours, ("127.0.0.1", 5555)), client

    def counters(self) -> dict[str, int]:
        return self.worker.stats.report()[0]


def listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.setblocking(False)
    return s


async def read_to_end(s: socket.socket) -> bytes:
    out = b""
    while True:
        await trio.lowlevel.wait_readable(s)
        data = s.recv(65536)
        if not data:
            return out
        out += data


@asynccontextmanager
async def serving(
    **tcp: Any,
) -> AsyncIterator[tuple[Setup, TcpConnection, socket.socket, socket.socket]]:
    """One proxied connection being served (TcpProxy fields ``tcp``): the set-up, the
    proxy's connection, the client's socket and the upstream's end of its connection
    (accepted, non-blocking). Leaving waits for the proxy to end the connection, then
    closes the sockets."""
    upstream = listening()
    setup = Setup(upstream.getsockname()[1], **tcp)
    conn, client = setup.connection()
    peer: socket.socket | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.serve, setup.plan)
            await trio.lowlevel.wait_readable(upstream)
            peer, _ = upstream.accept()
            peer.setblocking(False)
            yield setup, conn, client, peer
    finally:
        for s in (peer, client, upstream):
            if s is not None:
                s.close()


def test_half_close_both_ways_and_counts() -> None:
    trio.run(_half_close_both_ways_and_counts)


async def _half_close_both_ways_and_counts() -> None:
    upstream = listening()
    setup = Setup(upstream.getsockname()[1])
    conn, client = setup.connection()
    seen: list[bytes] = []

    async def serve_upstream() -> None:
        await trio.lowlevel.wait_readable(upstream)
        peer, _ = upstream.accept()
        peer.setblocking(False)
        with peer:
            seen.append(await read_to_end(peer))  # the client's half-close arrives
            peer.sendall(b"answer after the end")
            peer.shutdown(socket.SHUT_WR)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_upstream)
        nursery.start_soon(conn.serve, setup.plan)
        client.sendall(b"request")
        client.shutdown(socket.SHUT_WR)
        got = await read_to_end(client)
    assert seen == [b"request"]
    assert got == b"answer after the end"
    counters = setup.counters()
    assert counters["tcp.t.downstream_cx_total"] == 1
    assert counters["tcp.t.downstream_cx_rx_bytes_total"] == 7
    assert counters["tcp.t.downstream_cx_tx_bytes_total"] == 20
    assert counters["cluster.c.upstream_cx_tx_bytes_total"] == 7
    assert counters["cluster.c.upstream_cx_rx_bytes_total"] == 20
    assert counters["cluster.c.upstream_cx_destroy"] == 1
    assert setup.cluster.stats.cx_active == 0 and setup.plan.listener_stats.cx_active == 0
    assert setup.log.lines == ["TcpConnectionEnd c - 7 20 -"]
    assert setup.worker.closed == 1
    client.close()
    upstream.close()


def test_refused_upstream_closes_the_client() -> None:
    trio.run(_refused_upstream_closes_the_client)


async def _refused_upstream_closes_the_client() -> None:
    gone = listening()
    port = gone.getsockname()[1]
    gone.close()  # nothing listens there now
    setup = Setup(port, outlier=OutlierDetection(), max_connect_attempts=2)
    conn, client = setup.connection()
    await conn.serve(setup.plan)
    assert client.recv(10) == b""
    # Both failures go to outlier detection, as an HTTP request's connect failures do.
    assert setup.worker.stats.outcomes.report() == {"c": {f"127.0.0.1:{port}": [CONNECT_FAILED, 2]}}
    counters = setup.counters()
    assert counters["cluster.c.upstream_cx_connect_fail"] == 2
    assert counters["cluster.c.upstream_cx_connect_attempts_exceeded"] == 1
    assert setup.log.lines == [
        "TcpConnectionEnd c UF,URX 0 0 delayed_connect_error:_Connection_refused"
    ]
    client.close()


def test_no_cluster_overflow_and_no_host() -> None:
    trio.run(_no_cluster_overflow_and_no_host)


async def _no_cluster_overflow_and_no_host() -> None:
    setup = Setup(9, cluster="nope")
    conn, client = setup.connection()
    await conn.serve(setup.plan)
    assert client.recv(10) == b""
    assert setup.counters()["tcp.t.downstream_cx_no_route"] == 1
    assert setup.log.lines == ["TcpConnectionEnd - NC 0 0 -"]
    client.close()
    full = Setup(9, max_connections=0)
    conn, client = full.connection()
    await conn.serve(full.plan)
    assert full.counters()["cluster.c.upstream_cx_overflow"] == 1
    assert full.log.lines == ["TcpConnectionEnd c UO 0 0 -"]
    client.close()
    empty = Setup(0)  # a cluster with no hosts
    conn, client = empty.connection()
    await conn.serve(empty.plan)
    assert empty.counters()["cluster.c.upstream_cx_none_healthy"] == 1
    assert empty.log.lines == ["TcpConnectionEnd c UH 0 0 -"]
    client.close()


@pytest.mark.parametrize(
    ("tcp", "stat", "flags"),
    [
        ({"idle_timeout_s": 30.0}, "tcp.t.idle_timeout", "-"),
        (
            {"max_downstream_connection_duration_s": 30.0},
            "tcp.t.max_downstream_connection_duration",
            "DT",
        ),
    ],
)
def test_timeouts_close_both_sides(tcp: dict[str, Any], stat: str, flags: str) -> None:
    """On trio's clock, which jumps ahead whenever every task waits (the sockets are
    loopback ones, ready at once): 30 s pass without a real wait."""
    clock = trio.testing.MockClock(autojump_threshold=0.01)
    trio.run(_timeouts_close_both_sides, tcp, stat, flags, clock=clock)


async def _timeouts_close_both_sides(tcp: dict[str, Any], stat: str, flags: str) -> None:
    async with serving(**tcp) as (setup, _, client, peer):
        client.sendall(b"x")
        assert await read_to_end(peer) == b"x"  # closed by the proxy after the timeout
        assert await read_to_end(client) == b""
    assert trio.current_time() >= 30.0
    assert setup.counters()[stat] == 1
    assert setup.log.lines == [f"TcpConnectionEnd c {flags} 1 0 -"]


def test_drain_closes_without_a_flag() -> None:
    trio.run(_drain_closes_without_a_flag)


async def _drain_closes_without_a_flag() -> None:
    async with serving() as (setup, conn, client, peer):
        client.sendall(b"abc")
        assert await trio.lowlevel.wait_readable(peer) is None and peer.recv(3) == b"abc"
        await trio.testing.wait_all_tasks_blocked()
        assert setup.worker.tcp_buffers.held == 0  # both directions wait: no buffer held
        conn.set_deadline(DeadlineKind.DRAIN, 0.0)
        assert await read_to_end(client) == b""
    assert setup.log.lines == ["TcpConnectionEnd c - 3 0 -"]
    assert setup.worker.tcp_buffers.held == 0


def test_upstream_reset_resets_the_client() -> None:
    trio.run(_upstream_reset_resets_the_client)


async def _upstream_reset_resets_the_client() -> None:
    async with serving() as (setup, _, client, peer):
        client.sendall(b"hi")
        await trio.lowlevel.wait_readable(peer)
        assert peer.recv(2) == b"hi"
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # a reset
        await trio.lowlevel.wait_readable(client)
        with pytest.raises(ConnectionResetError):
            client.recv(10)
    assert setup.log.lines == ["TcpConnectionEnd c UR 2 0 -"]


def test_explain_chooses_among_http_listeners() -> None:
    http = Listener(
        "web", "127.0.0.1", 80, HttpConnectionManager("w", "AUTO", RouteConfig("r", ()))
    )
    epoch = Epoch(1, (http, tcp_listener(cluster="c")), ())
    assert choose_listener(epoch, "", {}, "http://example/")[0] is http
    with pytest.raises(ExplainError, match="runs the TCP proxy"):
        choose_listener(epoch, "l", {}, "/")
    with pytest.raises(ExplainError, match="no HTTP listeners"):
        choose_listener(Epoch(2, (tcp_listener(cluster="c"),), ()), "", {}, "/")


def test_tcp_proxy_chains_are_chosen_like_any_chain(tmp_path: Path) -> None:
    doc = bootstrap()
    chains = doc["static_resources"]["listeners"][0]["filter_chains"]
    chains[0]["filter_chain_match"] = {"server_names": ["a.test"]}
    listener = compile_tcp(tmp_path, doc)
    # Chosen per connection (with the TLS inspector Envoy adds for server names); the
    # listener names its first TCP proxy.
    assert listener.hcm is None and listener.tcp_proxy is not None
    assert [c.match.server_names for c in listener.chains] == [("a.test",)]
    assert listener.tls_inspector
    chains.append({**chains[0], "filter_chain_match": {"server_names": ["b.test"]}})
    assert len(compile_tcp(tmp_path, doc).chains) == 2
    chains[1]["filter_chain_match"] = {"server_names": ["a.test"]}
    with pytest.raises(ConfigError) as info:
        compile_tcp(tmp_path, doc)
    assert "same matching rules" in info.value.reason
