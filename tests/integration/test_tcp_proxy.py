"""The TCP proxy through reload and hot restart (real proxyd, a TCP echo upstream).

* A reload that changes a TCP proxy listener drains it as Envoy does: a connection
  accepted under the old config keeps passing bytes until the drain time is over and
  is closed then; new connections get the new config at once.
* A reload that leaves the listener as it was leaves its connections alone.
* A hot restart hands the listening socket to the new master: an established
  connection stays with the old master (and keeps working), new ones go to the new.
* Connect failures reach outlier detection: a dead host is ejected and connections stop
  trying it.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_hot_restart import MasterLine
from tests.support import (
    ProxydProcess,
    TcpEchoServer,
    bootstrap,
    free_port,
    static_cluster,
    wait_for,
)

TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def _listener(name: str, **tcp: Any) -> dict[str, Any]:
    config = {"@type": TCP_PROXY, "stat_prefix": name, "cluster": "echo", **tcp}
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": config}]}
        ],
    }


def tcp_config(
    echo_port: int,
    other: dict[str, Any] | None = None,
    more_ports: tuple[int, ...] = (),
    cluster_extra: dict[str, Any] | None = None,
    **tcp: Any,
) -> str:
    """Listener ``tcp`` (TcpProxy fields ``tcp``) and, with ``other``, a second one
    named ``other`` with those fields, both to cluster ``echo`` (``echo_port`` and
    ``more_ports``, with ``cluster_extra`` fields)."""
    listeners = [_listener("tcp", **tcp)]
    if other is not None:
        listeners.append(_listener("other", **other))
    cluster = {**static_cluster("echo", [echo_port, *more_ports]), **(cluster_extra or {})}
    return yaml.safe_dump(bootstrap(listeners, [cluster]), sort_keys=False)


def echoes(s: socket.socket, data: bytes) -> bool:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(len(data) - len(got))
        if not chunk:
            return False
        got += chunk
    return got == data


@pytest.fixture
def echo() -> Iterator[TcpEchoServer]:
    with TcpEchoServer() as server:
        yield server


def ended(s: socket.socket) -> bool:
    """The proxy closed the connection (end of stream or reset) before the timeout."""
    try:
        return s.recv(100) == b""
    except ConnectionResetError:
        return True


def test_reload_drains_a_changed_tcp_listener(tmp_path: Path, echo: TcpEchoServer) -> None:
    p = ProxydProcess(
        tmp_path, tcp_config(echo.port), concurrency=1, extra_args=("--drain-time-s", "1")
    )
    with p:
        port = p.listener_port("tcp")
        old = socket.create_connection(("127.0.0.1", port), timeout=10)
        with old:
            assert echoes(old, b"before")
            p.config_path.write_text(tcp_config(echo.port, idle_timeout="600s"))
            res = p.ctl("reload")
            assert res.returncode == 0, res.stderr
            # Accepted under the old config: it goes on until the drain time.
            assert echoes(old, b"during the drain")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as new:
                assert echoes(new, b"new config")
                assert ended(old)  # the drain time (1 s) is over
                assert echoes(new, b"not drained")
                new.shutdown(socket.SHUT_WR)
                assert new.recv(100) == b"<eof>"


def test_reload_keeps_an_unchanged_tcp_listener(tmp_path: Path, echo: TcpEchoServer) -> None:
    p = ProxydProcess(
        tmp_path,
        tcp_config(echo.port, other={}),
        concurrency=1,
        extra_args=("--drain-time-s", "0.2"),
    )
    with p:
        port, other_port = p.listener_port("tcp"), p.listener_port("other")
        kept = socket.create_connection(("127.0.0.1", port), timeout=10)
        drained = socket.create_connection(("127.0.0.1", other_port), timeout=10)
        with kept, drained:
            assert echoes(kept, b"one") and echoes(drained, b"one")
            # The reload changes listener "other" only.
            p.config_path.write_text(tcp_config(echo.port, other={"idle_timeout": "60s"}))
            res = p.ctl("reload")
            assert res.returncode == 0, res.stderr
            assert ended(drained)  # the changed listener's drain time is over
            assert echoes(kept, b"two")  # and the unchanged one's connection goes on


def test_hot_restart_keeps_established_tcp_connections(tmp_path: Path, echo: TcpEchoServer) -> None:
    args = ("--drain-time-s", "10", "--parent-shutdown-time-s", "20")
    p = ProxydProcess(tmp_path, tcp_config(echo.port), concurrency=1, extra_args=args)
    p.start()
    line = MasterLine(p)
    try:
        port = p.listener_port("tcp")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as old:
            assert echoes(old, b"first master")
            res = line.hot_restart()
            assert res.returncode == 0, res.stderr + p.log()
            assert echoes(old, b"still the first master")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as new:
                assert echoes(new, b"the new master")
                new.shutdown(socket.SHUT_WR)
                assert new.recv(100) == b"<eof>"
            old.shutdown(socket.SHUT_WR)
            assert old.recv(100) == b"<eof>"
    finally:
        line.stop()


def test_connect_failures_eject_a_dead_host(tmp_path: Path, echo: TcpEchoServer) -> None:
    dead = free_port()
    outlier = {
        "consecutive_5xx": 2,
        "interval": "1s",
        "base_ejection_time": "30s",
        "max_ejection_percent": 50,
    }
    config = tcp_config(
        echo.port,
        more_ports=(dead,),
        cluster_extra={"outlier_detection": outlier},
        max_connect_attempts=2,
    )
    with ProxydProcess(tmp_path, config, concurrency=1) as p:
        port = p.listener_port("tcp")

        def round_trips(n: int) -> None:
            for _ in range(n):  # round robin: every other one tries the dead host first
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    assert echoes(s, b"ping")  # the second attempt reaches the echo

        def flags() -> str:
            text = p.admin("/clusters")[1]
            key = f"echo::127.0.0.1:{dead}::health_flags::"
            return next(x for x in text.splitlines() if key in x).rsplit("::", 1)[1]

        round_trips(6)
        wait_for(lambda: flags() == "/failed_outlier_check")
        stats = wait_for(lambda: (s := p.stats())["tcp.tcp.downstream_cx_total"] == 6 and s)
        failed = stats["cluster.echo.upstream_cx_connect_fail"]
        assert failed >= 2
        round_trips(6)
        stats = wait_for(lambda: (s := p.stats())["tcp.tcp.downstream_cx_total"] == 12 and s)
        # Ejected: no connection tried the dead host again.
        assert stats["cluster.echo.upstream_cx_connect_fail"] == failed
        assert stats["cluster.echo.upstream_cx_total"] == 6 + failed + 6


def _health_checked(echo_port: int, hc_port: int, close: bool) -> str:
    """Cluster ``echo`` whose one host is health checked by connecting to ``hc_port``
    (the endpoint's health_check_config), with close_connections_on_host_health_failure."""
    doc = yaml.safe_load(tcp_config(echo_port))
    cluster = doc["static_resources"]["clusters"][0]
    (ep,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ep["endpoint"]["health_check_config"] = {"port_value": hc_port}
    cluster["close_connections_on_host_health_failure"] = close
    cluster["health_checks"] = [
        {
            "timeout": "0.5s",
            "interval": "0.2s",
            "no_traffic_interval": "0.2s",
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
            "tcp_health_check": {},
        }
    ]
    return yaml.safe_dump(doc, sort_keys=False)


def test_a_host_failing_health_checks_loses_its_connections_when_asked(
    tmp_path: Path, echo: TcpEchoServer
) -> None:
    """close_connections_on_host_health_failure: true closes the TCP proxy connections of
    a host once active health checking finds it unhealthy; false leaves them open."""
    for close in (True, False):
        hc = socket.create_server(("127.0.0.1", 0))
        hc_port = hc.getsockname()[1]
        config = _health_checked(echo.port, hc_port, close)
        workdir = tmp_path / str(close)
        workdir.mkdir()
        with ProxydProcess(workdir, config, concurrency=1) as p:
            wait_for(lambda: p.stats().get("cluster.echo.membership_healthy") == 1)
            conn = socket.create_connection(("127.0.0.1", p.listener_port("tcp")), timeout=10)
            with conn:
                assert echoes(conn, b"healthy")
                hc.close()  # the health check's port now refuses: the host fails
                wait_for(lambda: p.stats().get("cluster.echo.membership_healthy") == 0)
                if close:
                    conn.settimeout(5)
                    assert ended(conn)
                else:
                    assert echoes(conn, b"still served")
