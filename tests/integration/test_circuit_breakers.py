"""Circuit breakers through a real proxyd: Envoy's 503 with x-envoy-overloaded, the
pending queue behind max_connections, the route timeout while pending, max_retries."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.master_fixtures import get
from tests.integration.worker_harness import RawUpstream, read_head
from tests.support import ProxydProcess, UpstreamServer, http_config, wait_for

OVERFLOW_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"

MAX_REQUESTS_1 = """    circuit_breakers:
      thresholds:
      - priority: DEFAULT
        max_requests: 1"""


def test_max_requests_overflow(tmp_path: Path) -> None:
    with UpstreamServer("a") as up:
        config = http_config(0, 0, {"a": [up.port]}, cluster_extra=MAX_REQUESTS_1)
        with ProxydProcess(tmp_path, config, concurrency=1) as p:
            listen = p.listener_port()
            listen = p.listener_port()
            results: list[tuple[int, dict[str, str], bytes]] = []

            def slow() -> None:
                results.append(get(listen, "/hold/"))

            first = threading.Thread(target=slow)
            first.start()
            try:
                up.wait_requests(1)  # the first request is in flight upstream
                status, headers, body = get(listen, "/")
            finally:
                up.release()
                first.join()
            assert results[0][0] == 200
            assert status == 503
            assert headers["x-envoy-overloaded"] == "true"
            assert (
                body == b"upstream connect error or disconnect/reset before headers. "
                b"reset reason: overflow"
            )
            stats = settled(p, 2)  # workers report each second
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

# /hold/ (held by the upstream until the test releases it) may take its time; anything
# else times out after 0.3 s (also while pending).
SLOW_AND_IMPATIENT = """
              - match: { prefix: "/hold/" }
                route: { cluster: a, timeout: 10s }
              - match: { prefix: "/" }
                route: { cluster: a, timeout: 0.3s }"""

Answer = tuple[int, dict[str, str], bytes, float]
# A request's path, and how to wait until it is where it should be before the next one
# starts (None: until it is answered).
Step = tuple[str, Callable[[], object] | None]


def staggered(port: int, up: UpstreamServer, steps: list[Step]) -> list[Answer]:
    """One request per step, each on its own connection and in its own thread, in order:
    the next one starts once the step's wait returned (this one reached the upstream, or
    the pending queue) or, without one, once this one is answered. The ``/hold/``
    requests are held by ``up`` until all have started, then released.
    (status, headers, body, monotonic end time) for each."""
    answers: dict[int, Answer] = {}

    def one(i: int, path: str) -> None:
        status, headers, body = get(port, path, timeout=10)
        answers[i] = (status, headers, body, time.monotonic())

    threads: list[threading.Thread] = []
    up.hold()
    try:
        for i, (path, wait) in enumerate(steps):
            t = threading.Thread(target=one, args=(i, path))
            t.start()
            threads.append(t)
            if wait is None:
                t.join()
            else:
                wait()
    finally:
        up.release()
        for t in threads:
            t.join()
    return [answers[i] for i in range(len(steps))]


def at_upstream(up: UpstreamServer, n: int) -> Callable[[], None]:
    """A step's wait: until ``up`` has received ``n`` more requests than it has now."""
    base = up.requests
    return lambda: up.wait_requests(base + n)


def stat_is(stats: Callable[[], dict[str, int]], name: str, value: int) -> Callable[[], object]:
    """A step's wait: until the proxy's stat ``name`` (of cluster a) is ``value``."""
    return lambda: wait_for(lambda: stats().get(f"cluster.a.{name}") == value)


def queue_steps(up: UpstreamServer, stats: Callable[[], dict[str, int]]) -> list[Step]:
    """The first request takes the one connection and is held there, the second waits
    in the pending queue (Envoy counts the first as pending too, while its connection
    opened), the third overflows."""
    return [
        ("/hold/", at_upstream(up, 1)),
        ("/", stat_is(stats, "upstream_rq_pending_total", 2)),
        ("/", None),
    ]


def timeout_steps(up: UpstreamServer) -> list[Step]:
    """A held request on the one connection, then one that times out while pending."""
    return [("/hold/", at_upstream(up, 1)), ("/delay/10", None)]


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
        config = http_config(0, 0, {"a": [up.port]}, cluster_extra=ONE_CONNECTION_ONE_PENDING)
        with ProxydProcess(tmp_path, config, concurrency=1) as p:
            listen = p.listener_port()
            listen = p.listener_port()
            first, second, third = staggered(listen, up, queue_steps(up, p.stats))
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
        config = http_config(
            0,
            0,
            {"a": [up.port]},
            SLOW_AND_IMPATIENT,
            cluster_extra=ONE_CONNECTION_ONE_PENDING,
        )
        with ProxydProcess(tmp_path, config, concurrency=1) as p:
            listen = p.listener_port()
            listen = p.listener_port()
            slow, impatient = staggered(listen, up, timeout_steps(up))
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
        extra = MAX_REQUESTS_1.replace("max_requests: 1", f"max_retries: {max_retries}")
        config = http_config(0, 0, {"a": [up.port]}, cluster_extra=extra)
        with ProxydProcess(tmp_path, config, concurrency=1) as p:
            listen = p.listener_port()
            listen = p.listener_port()
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

# /hold/high goes to cluster a at HIGH priority; everything else at DEFAULT.
HIGH_ROUTE = """
              - match: { path: "/hold/high" }
                route: { cluster: a, priority: HIGH }
              - match: { prefix: "/" }
                route: { cluster: a }"""


def priority_steps(up: UpstreamServer) -> list[Step]:
    """A held DEFAULT request first, then three held HIGH ones, then a second DEFAULT
    one, all while the first is in flight."""
    return [
        ("/hold/", at_upstream(up, 1)),
        ("/hold/high", at_upstream(up, 2)),
        ("/hold/high", at_upstream(up, 3)),
        ("/hold/high", at_upstream(up, 4)),
        ("/hold/", None),
    ]


def test_high_priority_has_its_own_thresholds(tmp_path: Path) -> None:
    with UpstreamServer("a") as up:
        config = http_config(0, 0, {"a": [up.port]}, HIGH_ROUTE, cluster_extra=DEFAULT_1_HIGH_5)
        with ProxydProcess(tmp_path, config, concurrency=1) as p:
            listen = p.listener_port()
            listen = p.listener_port()
            answers = staggered(listen, up, priority_steps(up))
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
        extra = """    circuit_breakers:
      thresholds:
      - priority: HIGH
        max_requests: 1"""
        config = http_config(0, 0, {"a": [up.port]}, HIGH_ROUTE, cluster_extra=extra)
        with ProxydProcess(tmp_path, config, concurrency=1) as p:
            listen = p.listener_port()
            listen = p.listener_port()
            steps = [
                ("/hold/high", at_upstream(up, 1)),
                ("/hold/", at_upstream(up, 2)),
                ("/hold/high", None),
            ]
            answers = staggered(listen, up, steps)
            assert [a[0] for a in answers] == [200, 200, 503]
            assert answers[2][1]["x-envoy-overloaded"] == "true"
            stats = settled(p, 3)
            assert stats["cluster.a.upstream_rq_active_overflow"] == 1
