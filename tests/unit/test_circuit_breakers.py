"""circuit_breakers compile to the epoch with Envoy's defaults; what proxyd lacks is
rejected by name; workers split the proxy-wide limits; the pending queue hands released
connections over in FIFO order and counts as Envoy does; retries are bounded by
max_retries or the retry budget."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from proxyd.config import load
from proxyd.epoch import Cluster, Endpoint
from proxyd.errors import ConfigError
from proxyd.protocol.circuit_breakers import DEFAULT, per_worker, retry_limit
from proxyd.worker.stats import StatsStore
from proxyd.worker.upstream import ClusterState, ConnPool, Overflow, UpstreamConnection
from tests.unit.test_config_load import MINIMAL, write

ANCHOR = "  - name: c\n"


def with_breakers(thresholds: str) -> str:
    return MINIMAL.replace(
        ANCHOR, ANCHOR + "    circuit_breakers:\n      thresholds:\n" + thresholds
    )


def test_defaults(tmp_path: Path) -> None:
    (c,) = load(write(tmp_path, MINIMAL)).epoch_template.clusters
    assert (c.cb_max_connections, c.cb_max_pending_requests, c.cb_max_requests) == (
        1024,
        1024,
        1024,
    )
    assert (c.cb_max_retries, c.cb_retry_budget_percent) == (3, -1.0)


def test_default_priority_thresholds(tmp_path: Path) -> None:
    text = with_breakers(
        "      - {priority: DEFAULT, max_requests: 7, max_pending_requests: 0, max_retries: 1}\n"
        "      - {max_requests: 99, max_connections: 3}\n"  # same priority: first wins
    )
    (c,) = load(write(tmp_path, text)).epoch_template.clusters
    assert (c.cb_max_connections, c.cb_max_pending_requests, c.cb_max_requests) == (1024, 0, 7)
    assert c.cb_max_retries == 1


def test_retry_budget_defaults_and_values(tmp_path: Path) -> None:
    (c,) = load(
        write(tmp_path, with_breakers("      - {retry_budget: {}}\n"))
    ).epoch_template.clusters
    assert (c.cb_retry_budget_percent, c.cb_min_retry_concurrency) == (20.0, 3)
    text = with_breakers(
        "      - retry_budget: {budget_percent: {value: 12.5}, min_retry_concurrency: 1}\n"
    )
    (c,) = load(write(tmp_path, text)).epoch_template.clusters
    assert (c.cb_retry_budget_percent, c.cb_min_retry_concurrency) == (12.5, 1)


@pytest.mark.parametrize(
    ("thresholds", "where"),
    [
        ("      - {track_remaining: true}\n", "track_remaining"),
        ("      - {max_connection_pools: 2}\n", "max_connection_pools"),
        ("      - {retry_budget: {budget_percent: {value: 101}}}\n", "budget_percent"),
    ],
)
def test_unsupported_rejected_by_name(tmp_path: Path, thresholds: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, with_breakers(thresholds)))
    assert where in str(info.value)


def test_workers_split_limits() -> None:
    c = Cluster(
        "c", "STATIC", 1.0, "ROUND_ROBIN", (), cb_max_connections=5, cb_max_requests=1,
        cb_max_pending_requests=3, cb_max_retries=3, cb_min_retry_concurrency=5,
    )  # fmt: skip
    pool = ClusterState(c, StatsStore(), worker_count=2).pools[DEFAULT]
    assert (pool.cb_max_connections, pool.cb_max_requests, pool.cb_max_pending) == (3, 1, 2)
    assert (pool.cb_max_retries, pool.cb_min_retry_concurrency) == (2, 3)
    assert pool.attach()
    assert not pool.attach()
    assert (pool.requests, pool.stats.rq_active_overflow) == (1, 1)
    pool.detach()
    assert pool.attach()
    assert per_worker(0, 4) == 0 and per_worker(1024, 3) == 342


def test_retry_limit() -> None:
    # max_retries alone; a budget replaces it: percent of active + pending, truncated,
    # never below min_retry_concurrency.
    assert retry_limit(3, -1.0, 3, active=500, pending=0) == 3
    assert retry_limit(3, 20.0, 3, active=0, pending=0) == 3
    assert retry_limit(3, 20.0, 3, active=40, pending=9) == 9
    assert retry_limit(3, 25.0, 1, active=100, pending=0) == 25
    assert retry_limit(0, 50.0, 0, active=1, pending=0) == 0


def test_retries_outstanding_are_bounded() -> None:
    state = ClusterState(
        Cluster("c", "STATIC", 1.0, "ROUND_ROBIN", (), cb_max_retries=1), StatsStore()
    ).pools[DEFAULT]
    assert state.retry_allowed()
    assert not state.retry_allowed()
    stats = state.stats
    assert (stats.rq_retry, stats.rq_retry_overflow) == (1, 1)
    assert state.open_gauges() == (0, 0, 0, 1)
    state.retry_done(success=True)
    assert stats.rq_retry_success == 1
    assert state.retry_allowed()


def _limited(max_connections: int, max_pending: int) -> tuple[ConnPool, list[socket.socket]]:
    """The DEFAULT pool of a one-host cluster whose connection slots are all taken by
    busy connections."""
    c = Cluster(
        "c", "STATIC", 1.0, "ROUND_ROBIN", (Endpoint("127.0.0.1", 9),),
        cb_max_connections=max_connections, cb_max_pending_requests=max_pending,
    )  # fmt: skip
    state = ClusterState(c, StatsStore()).pools[DEFAULT]
    state.connections = state.cluster.hosts[0].connections[DEFAULT] = max_connections
    return state, []


def _conn(state: ConnPool, keep: list[socket.socket]) -> UpstreamConnection:
    a, b = socket.socketpair()
    keep += [a, b]
    return UpstreamConnection(a, state.cluster.hosts[0])


def test_pending_queue_fifo_overflow_and_cancel() -> None:
    state, socks = _limited(max_connections=1, max_pending=2)
    host = state.cluster.hosts[0]
    got: list[tuple[str, UpstreamConnection | None]] = []

    async def request(name: str) -> None:
        try:
            got.append((name, await state.acquire(host)))
        except Overflow:
            got.append((name, None))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request, "first")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(request, "second")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(request, "third")  # the queue holds 2: overflow
            await trio.testing.wait_all_tasks_blocked()
            assert got == [("third", None)]
            stats = state.stats
            assert (stats.rq_pending_total, stats.rq_pending_active) == (2, 2)
            assert (stats.rq_pending_overflow, stats.cx_overflow) == (1, 2)
            assert state.open_gauges() == (1, 1, 0, 0)
            released = [_conn(state, socks), _conn(state, socks)]
            state.put_back(released[0])  # to the oldest waiter, not to the idle list
            await trio.testing.wait_all_tasks_blocked()
            assert got[1] == ("first", released[0]) and not host.idle[DEFAULT]
            state.put_back(released[1])
            await trio.testing.wait_all_tasks_blocked()
            assert got[2] == ("second", released[1])
            assert (stats.rq_pending_active, state.pending, len(state.waiters)) == (0, 0, 0)
            # Cancelled while waiting (the route timeout): out of the queue, counted.
            with trio.move_on_after(0.5):
                await state.acquire(host)
            assert (stats.rq_cancelled, len(state.waiters), state.pending) == (1, 0, 0)
            # With nobody waiting, a released connection goes idle.
            state.put_back(released[0])
            assert host.idle[DEFAULT] == [released[0]]

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        for s in socks:
            s.close()


def test_zero_pending_requests_overflow_at_once() -> None:
    # max_pending_requests 0: even a request that would open a connection overflows,
    # as in Envoy (a request is pending while its connection is being opened).
    state, _ = _limited(max_connections=5, max_pending=0)
    state.connections = state.cluster.hosts[0].connections[DEFAULT] = 0

    async def main() -> None:
        with pytest.raises(Overflow):
            await state.acquire(state.cluster.hosts[0])

    trio.run(main)
    assert (state.stats.rq_pending_overflow, state.stats.cx_total) == (1, 0)
