"""The overload manager, the global downstream connection limit and the worker watchdog,
on a real proxyd with two workers, real sockets and real clients."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import psutil

from tests.support import ProxydProcess, free_port, http_config, wait_for

DC_TYPE = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
    "DownstreamConnectionsConfig"
)
FH_TYPE = "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"


def connection_limit(limit: int) -> str:
    return f"""overload_manager:
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": {DC_TYPE}
      max_active_downstream_connections: {limit}
"""


def open_served(port: int) -> socket.socket | None:
    """A connection that got a 200 for a keep-alive GET (and stays open), or None when
    proxyd closed it without an answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = s.recv(65536)
    except OSError:
        head = b""
    if head.startswith(b"HTTP/1.1 200"):
        return s
    s.close()
    return None


def held_by_worker(pids: list[int], port: int) -> list[int]:
    """How many connections on ``port`` each worker process still has open (a socket
    the peer closed stays open, in CLOSE_WAIT, until the worker closes it)."""
    out = []
    for pid in pids:
        conns = psutil.Process(pid).net_connections(kind="tcp")
        out.append(sum(1 for c in conns if c.status != psutil.CONN_LISTEN and c.laddr.port == port))
    return out


def test_connection_limit_is_global_across_two_workers(tmp_path: Path, upstream) -> None:
    up = upstream("up")
    port, admin = free_port(), free_port()
    limit = 6
    config = http_config(port, admin, {"up": [up.port]}) + connection_limit(limit)
    overflow = f"listener.127.0.0.1_{port}.downstream_global_cx_overflow"
    failed = "overload.envoy.resource_monitors.global_downstream_max_connections.failed_updates"
    with ProxydProcess(tmp_path, config, admin, concurrency=2) as p:
        pids = p.worker_pids()
        held = [open_served(port) for _ in range(limit)]
        assert all(s is not None for s in held)
        # Every connection beyond the limit is closed at accept, whichever worker's
        # socket the kernel hashes it to: the count is shared, not per worker.
        refused = [open_served(port) for _ in range(8)]
        assert refused == [None] * 8
        per_worker = held_by_worker(pids, port)
        assert sum(per_worker) == limit, per_worker
        wait_for(lambda: p.stats().get(overflow) == 8, timeout=5)
        assert p.stats()[failed] == 8
        # The admin is never limited by the overload manager's monitor.
        assert p.admin("/ready")[0] == 200
        # A closed connection frees its slot: a new one is served, the next refused.
        held.pop().close()  # type: ignore[union-attr]
        again = wait_for(lambda: open_served(port), timeout=5)
        assert open_served(port) is None
        for s in [*held, again]:
            s.close()  # type: ignore[union-attr]
        # All closed: the limit admits `limit` connections again.
        fresh = wait_for(lambda: [open_served(port) for _ in range(limit)] if sum(held_by_worker(pids, port)) == 0 else None, timeout=5)  # fmt: skip
        assert all(s is not None for s in fresh)
        for s in fresh:
            s.close()


def test_listener_with_ignore_global_conn_limit_is_not_refused(tmp_path: Path, upstream) -> None:
    up = upstream("up")
    port, admin = free_port(), free_port()
    config = http_config(port, admin, {"up": [up.port]}) + connection_limit(1)
    config = config.replace(
        "  - name: ingress\n", "  - name: ingress\n    ignore_global_conn_limit: true\n"
    )
    with ProxydProcess(tmp_path, config, admin, concurrency=2) as p:
        held = [open_served(port) for _ in range(4)]
        assert all(s is not None for s in held)
        assert p.stats().get(f"listener.127.0.0.1_{port}.downstream_global_cx_overflow", 0) == 0
        for s in held:
            s.close()  # type: ignore[union-attr]


def heap_actions(actions: list[str]) -> str:
    """A fixed_heap monitor far below proxyd's size (always saturated) and actions."""
    out = f"""overload_manager:
  refresh_interval: 0.1s
  resource_monitors:
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      "@type": {FH_TYPE}
      max_heap_size_bytes: 1048576
  actions:
"""
    for a in actions:
        out += f"""  - name: envoy.overload_actions.{a}
    triggers:
    - name: envoy.resource_monitors.fixed_heap
      threshold: {{ value: 0.9 }}
"""
    return out


def test_disable_http_keepalive_closes_after_each_response(tmp_path: Path, upstream) -> None:
    up = upstream("up")
    port, admin = free_port(), free_port()
    config = http_config(port, admin, {"up": [up.port]}) + heap_actions(["disable_http_keepalive"])
    with ProxydProcess(tmp_path, config, admin, concurrency=2) as p:
        active = "overload.envoy.overload_actions.disable_http_keepalive.active"
        wait_for(lambda: p.stats().get(active) == 1, timeout=5)
        assert p.stats()["overload.envoy.resource_monitors.fixed_heap.pressure"] == 100

        def closes() -> bool:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk  # proxyd closes after the response
                return data.startswith(b"HTTP/1.1 200") and b"connection: close" in data.lower()

        # The action reaches both workers (the kernel picks the worker per connection).
        assert wait_for(lambda: all(closes() for _ in range(8)), timeout=5)


def test_stop_accepting_connections_leaves_them_in_the_backlog(tmp_path: Path, upstream) -> None:
    up = upstream("up")
    port, admin = free_port(), free_port()
    config = http_config(port, admin, {"up": [up.port]}) + heap_actions(
        ["stop_accepting_connections"]
    )
    with ProxydProcess(tmp_path, config, admin, concurrency=2) as p:
        active = "overload.envoy.overload_actions.stop_accepting_connections.active"
        wait_for(lambda: p.stats().get(active) == 1, timeout=5)
        # The kernel completes the handshake into the backlog; nobody answers.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(1.0)
            try:
                got = s.recv(100)
            except TimeoutError:
                got = None
            assert got is None
        assert p.admin("/ready")[0] == 200  # the admin is not a worker listener


def test_worker_watchdog_counts_misses_and_kills_a_silent_worker(tmp_path: Path, upstream) -> None:
    up = upstream("up")
    port, admin = free_port(), free_port()
    config = (
        http_config(port, admin, {"up": [up.port]})
        + """watchdogs:
  worker_watchdog:
    miss_timeout: 0.3s
    megamiss_timeout: 0.6s
    kill_timeout: 2s
"""
    )
    with ProxydProcess(tmp_path, config, admin, concurrency=2) as p:
        workers = p.status()["workers"]
        victim = workers[0]
        before = p.stats()
        os.kill(victim["pid"], signal.SIGSTOP)
        try:

            def replaced() -> bool:
                pids = [w["pid"] for w in p.status()["workers"] if w["epoch"] >= 1]
                return victim["pid"] not in pids and len(pids) == 2

            wait_for(replaced, timeout=20)
        finally:
            try:
                os.kill(victim["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass  # killed, as expected
        stats = p.stats()
        slot = victim["id"]
        assert stats[f"server.worker_{slot}.watchdog_miss"] > before.get(f"server.worker_{slot}.watchdog_miss", 0)  # fmt: skip
        assert stats[f"server.worker_{slot}.watchdog_mega_miss"] > before.get(f"server.worker_{slot}.watchdog_mega_miss", 0)  # fmt: skip
        assert stats["workers.watchdog_miss"] >= 1
        # Killed by the watchdog's kill_timeout, not the 10 s heartbeat timeout.
        kills = [line for line in p.log().splitlines() if "watchdog_kill" in line]
        assert len(kills) == 1 and str(victim["pid"]) in kills[0]
        assert "worker_unresponsive" not in p.log()


def test_admin_stdout_access_log_and_profile_path(tmp_path: Path, upstream) -> None:
    up = upstream("up")
    port, admin = free_port(), free_port()
    config = http_config(port, admin, {"up": [up.port]}).replace(
        "admin:\n",
        """admin:
  profile_path: /tmp/proxyd-unused.prof
  access_log:
  - name: envoy.access_loggers.stdout
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
""",
        1,
    )
    with ProxydProcess(tmp_path, config, admin, concurrency=1) as p:
        assert p.admin("/server_info?probe=stdout")[0] == 200
        # The master's standard output is the test's log file: Envoy's default format.
        line = wait_for(
            lambda: next(
                (x for x in p.log().splitlines() if "/server_info?probe=stdout" in x), None
            ),
            timeout=5,
        )
        assert '"GET /server_info?probe=stdout HTTP/1.1" 200 -' in line
