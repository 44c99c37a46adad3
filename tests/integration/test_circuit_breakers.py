"""Circuit breakers through a real proxyd: Envoy's 503 with x-envoy-overloaded, the
pending queue behind max_connections, the route timeout while pending, max_retries."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from tests.integration.master_fixtures import get
from tests.integration.worker_harness import RawUpstream, read_head
from tests.support import ProxydProcess, UpstreamServer, free_port, http_config, wait_for

OVERFLOW_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"

MAX_REQUESTS_1 = """    circuit_breakers:
      thresholds:
      - priority: DEFAULT
        max_requests: 1"""


def test_max_requests_overflow(tmp_path: Path) -> None:
    with UpstreamServer("a") as up:
        listen, admin = free_port(), free_port()
        config = http_config(listen, admin, {"a": [up.port]}, cluster_extra=MAX_REQUESTS_1)
        with ProxydProcess(tmp_path, config, admin, concurrency=1) as p:
            results: list[tuple[int, dict[str, str], bytes]] = []

            def slow() -> None:
                results.append(get(listen, "/delay/1000"))

            first = threading.Thread(target=slow)
            first.start()
            time.sleep(0.3)  # the first request is in flight upstream
            status, headers, body = get(listen, "/delay/1000")
            first.join()
            assert results[0][0] == 200
            assert status == 503
            assert headers["x-envoy-overloaded"] == "true"
            assert (
                body == b"upstream connect error or disconnect/reset before headers. "
                b"reset reason: overflow"
            )
            stats = p.stats()
            assert stats["cluster.a.upstream_rq_active_overflow"] == 1
            assert stats["cluster.a.upstream_rq_503"] == 1
            # The breaker closes again once the first request is done.
            assert get(listen, "/")[0] == 200


# -- the pending queue (max_connections, max_pending_requests) --------------------------

ONE_CONNECTION_ONE_PENDING = """    circuit_breakers:
      thresholds:
      - priority: DEFAULT
        max_connections: 1
        max_pending_requests: 1"""

# /delay/2000 may take its time; anything else times out after 0.3 s (also while pending).
SLOW_AND_IMPATIENT = """
              - match: { path: "/delay/2000" }
                route: { cluster: a, timeout: 5s }
              - match: { prefix: "/" }
                route: { cluster: a, timeout: 0.3s }"""

Answer = tuple[int, dict[str, str], bytes, float]


def staggered(port: int, paths: list[str], gap: float = 0.3) -> list[Answer]:
    """One request per path, each on its own connection, started ``gap`` seconds apart
    (so they reach the proxy in order); (status, headers, body, monotonic end time)."""
    answers: dict[int, Answer] = {}

    def one(i: int, path: str) -> None:
        status, headers, body = get(port, path, timeout=10)
        answers[i] = (status, headers, body, time.monotonic())

    threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(paths)]
    for t in threads:
        t.start()
        time.sleep(gap)
    for t in threads:
        t.join()
    return [answers[i] for i in range(len(paths))]


def settled(p: ProxydProcess, answers: int) -> dict[str, int]:
    """The proxy's stats once cluster ``a`` counted ``answers`` responses (workers
    report each second)."""

    def counted() -> dict[str, int] | None:
        s = p.stats()
        n = s.get("cluster.a.upstream_rq_2xx", 0) + s.get("cluster.a.upstream_rq_5xx", 0)
        return s if n == answers else None

    return wait_for(counted)


def test_pending_queue_waits_for_the_connection_then_overflows(tmp_path: Path) -> None:
    with UpstreamServer("a") as up:
        listen, admin = free_port(), free_port()
        config = http_config(
            listen, admin, {"a": [up.port]}, cluster_extra=ONE_CONNECTION_ONE_PENDING
        )
        with ProxydProcess(tmp_path, config, admin, concurrency=1) as p:
            first, second, third = staggered(listen, ["/delay/1000"] * 3)
            assert (first[0], second[0], third[0]) == (200, 200, 503)
            # The second waited for the first's connection and went out on it.
            assert second[3] > first[3]
            assert up.connections == 1
            assert third[1]["x-envoy-overloaded"] == "true"
            assert third[2] == OVERFLOW_BODY
            stats = settled(p, 3)
            assert stats["cluster.a.upstream_rq_total"] == 2
            assert stats["cluster.a.upstream_rq_pending_overflow"] == 1
            # Envoy counts a request pending while its connection opens, too.
            assert stats["cluster.a.upstream_rq_pending_total"] == 2
            assert stats["cluster.a.upstream_rq_pending_active"] == 0
            assert stats["cluster.a.upstream_cx_overflow"] == 1
            assert stats["cluster.a.upstream_cx_total"] == 1
            assert stats["cluster.a.upstream_rq_503"] == 1
            # The one connection allowed is still open: that breaker stays open.
            assert stats["cluster.a.circuit_breakers.default.cx_open"] == 1
            assert stats["cluster.a.circuit_breakers.default.rq_pending_open"] == 0


def test_route_timeout_while_pending_is_a_504(tmp_path: Path) -> None:
    with UpstreamServer("a") as up:
        listen, admin = free_port(), free_port()
        config = http_config(
            listen,
            admin,
            {"a": [up.port]},
            SLOW_AND_IMPATIENT,
            cluster_extra=ONE_CONNECTION_ONE_PENDING,
        )
        with ProxydProcess(tmp_path, config, admin, concurrency=1) as p:
            slow, impatient = staggered(listen, ["/delay/2000", "/delay/10"])
            assert slow[0] == 200
            assert (impatient[0], impatient[2]) == (504, b"upstream request timeout")
            assert impatient[3] < slow[3]  # it never got the connection
            stats = settled(p, 2)
            assert stats["cluster.a.upstream_rq_total"] == 1  # never attached: not counted
            assert stats["cluster.a.upstream_rq_timeout"] == 1
            assert stats["cluster.a.upstream_rq_cancelled"] == 1
            assert stats["cluster.a.upstream_rq_504"] == 1
            assert stats["cluster.a.upstream_rq_pending_total"] == 2


# -- max_retries --------------------------------------------------------------------------


def _answers_once(conn: socket.socket) -> None:
    """An upstream that answers one request per connection and closes on the next one
    without a word: the keep-alive race proxyd retries."""
    read_head(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    read_head(conn)


@pytest.mark.parametrize(("max_retries", "second_status"), [(3, 200), (0, 503)])
def test_retry_is_counted_and_bounded_by_max_retries(
    tmp_path: Path, max_retries: int, second_status: int
) -> None:
    with RawUpstream(_answers_once) as up:
        listen, admin = free_port(), free_port()
        extra = MAX_REQUESTS_1.replace("max_requests: 1", f"max_retries: {max_retries}")
        config = http_config(listen, admin, {"a": [up.port]}, cluster_extra=extra)
        with ProxydProcess(tmp_path, config, admin, concurrency=1) as p:
            assert get(listen, "/")[0] == 200
            status, _, body = get(listen, "/")  # on the reused connection, which dies
            assert status == second_status
            stats = settled(p, 2)
            if max_retries:
                assert stats["cluster.a.upstream_rq_retry"] == 1
                assert stats["cluster.a.upstream_rq_retry_success"] == 1
                assert stats.get("cluster.a.upstream_rq_retry_overflow", 0) == 0
                assert up.connections == 2
            else:
                assert body.endswith(b"reset reason: connection termination")
                assert stats.get("cluster.a.upstream_rq_retry", 0) == 0
                assert stats["cluster.a.upstream_rq_retry_overflow"] == 1
                assert stats["cluster.a.circuit_breakers.default.rq_retry_open"] == 1


# -- routing priority (RouteAction.priority: DEFAULT / HIGH thresholds) -------------------

DEFAULT_1_HIGH_5 = """    circuit_breakers:
      thresholds:
      - priority: DEFAULT
        max_requests: 1
      - priority: HIGH
        max_requests: 5
        max_connections: 3"""

# /delay/2000/high goes to cluster a at HIGH priority; everything else at DEFAULT.
HIGH_ROUTE = """
              - match: { path: "/delay/2000/high" }
                route: { cluster: a, priority: HIGH }
              - match: { prefix: "/" }
                route: { cluster: a }"""

# A slow DEFAULT request first, then three HIGH ones and a second DEFAULT one, all
# while the first is in flight.
PRIORITY_PATHS = ["/delay/2000", *["/delay/2000/high"] * 3, "/delay/2000"]


def test_high_priority_has_its_own_thresholds(tmp_path: Path) -> None:
    with UpstreamServer("a") as up:
        listen, admin = free_port(), free_port()
        config = http_config(
            listen, admin, {"a": [up.port]}, HIGH_ROUTE, cluster_extra=DEFAULT_1_HIGH_5
        )
        with ProxydProcess(tmp_path, config, admin, concurrency=1) as p:
            answers = staggered(listen, PRIORITY_PATHS, gap=0.15)
            # DEFAULT allows one request at a time; HIGH's five are not touched by it.
            assert [a[0] for a in answers] == [200, 200, 200, 200, 503]
            assert answers[4][1]["x-envoy-overloaded"] == "true"
            assert answers[4][2] == OVERFLOW_BODY
            stats = settled(p, 5)
            assert stats["cluster.a.upstream_rq_active_overflow"] == 1
            assert stats["cluster.a.upstream_rq_200"] == 4
            assert stats["cluster.a.upstream_rq_503"] == 1
            # Envoy keeps a connection pool per priority: HIGH never reuses DEFAULT's.
            assert stats["cluster.a.upstream_cx_total"] == 5
            # HIGH's three connections (its max_connections) stay open; DEFAULT has two.
            assert stats["cluster.a.circuit_breakers.high.cx_open"] == 1
            assert stats["cluster.a.circuit_breakers.default.cx_open"] == 0
            for name in ("rq_pending_open", "rq_open", "rq_retry_open"):
                assert stats[f"cluster.a.circuit_breakers.high.{name}"] == 0
            # /clusters shows each priority's configured thresholds.
            text = p.admin("/clusters")[1]
            assert "a::default_priority::max_requests::1\n" in text
            assert "a::high_priority::max_requests::5\n" in text
            assert "a::high_priority::max_connections::3\n" in text
            assert "a::high_priority::max_pending_requests::1024\n" in text
            # With the DEFAULT request done, DEFAULT admits one again.
            assert get(listen, "/")[0] == 200


def test_high_priority_overflows_at_its_own_limit(tmp_path: Path) -> None:
    # The other way round: HIGH allows 1, DEFAULT the default 1024.
    with UpstreamServer("a") as up:
        listen, admin = free_port(), free_port()
        extra = """    circuit_breakers:
      thresholds:
      - priority: HIGH
        max_requests: 1"""
        config = http_config(listen, admin, {"a": [up.port]}, HIGH_ROUTE, cluster_extra=extra)
        with ProxydProcess(tmp_path, config, admin, concurrency=1) as p:
            paths = ["/delay/2000/high", "/delay/2000", "/delay/2000/high"]
            answers = staggered(listen, paths, gap=0.3)
            assert [a[0] for a in answers] == [200, 200, 503]
            assert answers[2][1]["x-envoy-overloaded"] == "true"
            stats = settled(p, 3)
            assert stats["cluster.a.upstream_rq_active_overflow"] == 1
