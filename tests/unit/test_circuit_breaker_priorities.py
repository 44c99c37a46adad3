"""Circuit breakers per routing priority: a HIGH thresholds entry compiles (Envoy's
defaults where it is missing), RouteAction.priority compiles and picks its pool at plan
compile time, and each priority counts, limits, queues and reports on its own."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from proxyd.config import load
from proxyd.epoch import CircuitBreakerThresholds, Cluster, Endpoint, Route, from_wire, to_wire
from proxyd.errors import ConfigError
from proxyd.protocol.circuit_breakers import DEFAULT, HIGH, ResourceManager, thresholds
from proxyd.worker.plan import RoutePlan
from proxyd.worker.stats import ClusterStats, StatsStore
from proxyd.worker.upstream import ClusterState, Overflow, UpstreamConnection
from tests.unit.test_circuit_breakers import with_breakers
from tests.unit.test_config_load import MINIMAL, write

ENVOY_DEFAULTS = CircuitBreakerThresholds(1024, 1024, 1024, 3, -1.0, 3)


def _cluster(tmp_path: Path, text: str) -> Cluster:
    (c,) = load(write(tmp_path, text)).epoch_template.clusters
    return c


def test_high_entry_compiles_and_first_one_wins(tmp_path: Path) -> None:
    c = _cluster(
        tmp_path,
        with_breakers(
            "      - {priority: HIGH, max_requests: 5, max_connections: 2}\n"
            "      - {priority: DEFAULT, max_requests: 1}\n"
            "      - {priority: HIGH, max_requests: 99}\n"  # same priority: first wins
        ),
    )
    assert c.cb_high == CircuitBreakerThresholds(2, 1024, 5, 3, -1.0, 3)
    assert (c.cb_max_requests, c.cb_max_connections) == (1, 1024)
    assert thresholds(c, DEFAULT) == CircuitBreakerThresholds(1024, 1024, 1, 3, -1.0, 3)
    assert thresholds(c, HIGH) is c.cb_high
    # The epoch carries it to the workers.
    assert from_wire(Cluster, to_wire(c)) == c


def test_high_retry_budget(tmp_path: Path) -> None:
    c = _cluster(
        tmp_path,
        with_breakers("      - {priority: HIGH, retry_budget: {min_retry_concurrency: 7}}\n"),
    )
    assert (c.cb_high.retry_budget_percent, c.cb_high.min_retry_concurrency) == (20.0, 7)
    assert c.cb_retry_budget_percent == -1.0  # DEFAULT has no budget


@pytest.mark.parametrize(
    "entries",
    [None, "      - {priority: DEFAULT, max_requests: 1, max_retries: 0}\n"],
    ids=["no-circuit-breakers", "default-entry-only"],
)
def test_envoy_defaults_apply_per_priority(tmp_path: Path, entries: str | None) -> None:
    c = _cluster(tmp_path, MINIMAL if entries is None else with_breakers(entries))
    assert c.cb_high == ENVOY_DEFAULTS
    # And a HIGH entry alone leaves DEFAULT at Envoy's defaults.
    c = _cluster(tmp_path, with_breakers("      - {priority: HIGH, max_requests: 2}\n"))
    assert thresholds(c, DEFAULT) == ENVOY_DEFAULTS


def _route(tmp_path: Path, action: str) -> Route:
    text = MINIMAL.replace("route: {cluster: c}", "route: {cluster: c" + action + "}")
    lst = load(write(tmp_path, text)).epoch_template.listeners[0]
    return lst.hcm.route_config.virtual_hosts[0].routes[0]


def test_route_priority_compiles(tmp_path: Path) -> None:
    assert _route(tmp_path, "").priority == "DEFAULT"
    assert _route(tmp_path, ", priority: DEFAULT").priority == "DEFAULT"
    route = _route(tmp_path, ", priority: HIGH")
    assert route.priority == "HIGH"
    assert from_wire(Route, to_wire(route)) == route


def test_route_priority_must_be_known(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _route(tmp_path, ", priority: URGENT")
    assert "route.priority" in str(info.value)


# -- the accounting, per priority ---------------------------------------------------------


def _state(workers: int = 1, **high: int) -> ClusterState:
    c = Cluster(
        "c", "STATIC", 1.0, "ROUND_ROBIN", (Endpoint("127.0.0.1", 9),),
        cb_max_requests=1, cb_high=CircuitBreakerThresholds(**{"max_requests": 5, **high}),
    )  # fmt: skip
    return ClusterState(c, StatsStore(), worker_count=workers)


def test_route_plan_resolves_its_pool() -> None:
    state = _state()
    assert RoutePlan("r", state, "c", 15.0).pool is state.pools[DEFAULT]
    assert RoutePlan("r", state, "c", 15.0, "HIGH").pool is state.pools[HIGH]
    assert RoutePlan("r", None, "gone", 15.0, "HIGH").pool is None


def test_max_requests_counts_per_priority() -> None:
    state = _state()
    default, high = state.pools
    assert default.attach()
    assert not default.attach()  # DEFAULT is full ...
    assert [high.attach() for _ in range(6)] == [True] * 5 + [False]  # ... HIGH has 5 of its own
    assert (default.requests, high.requests) == (1, 5)
    assert state.stats.rq_active_overflow == 2  # one cluster counter for both
    assert state.open_gauges() == (("default", (0, 0, 1, 0)), ("high", (0, 0, 1, 0)))
    high.detach()
    assert state.open_gauges()[1] == ("high", (0, 0, 0, 0))
    assert default.attach() is False and high.attach() is True


def test_limits_split_over_workers_per_priority() -> None:
    high = _state(workers=2, max_connections=3, max_retries=1).pools[HIGH]
    assert (high.cb_max_requests, high.cb_max_connections, high.cb_max_retries) == (3, 2, 1)
    assert high.cb_max_pending == 512


def test_retry_budget_counts_the_priority_own_requests() -> None:
    counters = ClusterStats("c")
    budget = CircuitBreakerThresholds(retry_budget_percent=50.0, min_retry_concurrency=1)
    rm = ResourceManager(budget, 1, counters, HIGH)
    assert rm.retry_limit() == 1
    for _ in range(4):
        assert rm.attach()
    rm.pending = 2
    assert rm.retry_limit() == 3  # 50 % of 4 active + 2 pending
    assert [rm.retry_allowed() for _ in range(4)] == [True, True, True, False]
    assert (counters.rq_retry, counters.rq_retry_overflow) == (3, 1)
    assert rm.open_gauges() == (0, 0, 0, 1)


def test_open_gauges_reported_for_both_priorities() -> None:
    store = StatsStore()
    c = Cluster("c", "STATIC", 1.0, "ROUND_ROBIN", (), cb_max_retries=0)
    state = ClusterState(c, store)
    state.pools[HIGH].attach()
    _, gauges = store.report()
    open_ = {k: v for k, v in gauges.items() if ".circuit_breakers." in k}
    assert open_ == {
        "cluster.c.circuit_breakers.default.cx_open": 0,
        "cluster.c.circuit_breakers.default.rq_pending_open": 0,
        "cluster.c.circuit_breakers.default.rq_open": 0,
        "cluster.c.circuit_breakers.default.rq_retry_open": 1,  # max_retries 0
        "cluster.c.circuit_breakers.high.cx_open": 0,
        "cluster.c.circuit_breakers.high.rq_pending_open": 0,
        "cluster.c.circuit_breakers.high.rq_open": 0,
        "cluster.c.circuit_breakers.high.rq_retry_open": 0,
    }


def test_pools_queue_and_reuse_per_priority() -> None:
    # Both pools at max_connections 1 with a busy connection each: a connection the
    # DEFAULT pool releases goes to DEFAULT's waiter (or idle list), never to HIGH's.
    one = CircuitBreakerThresholds(max_connections=1, max_pending_requests=1)
    c = Cluster(
        "c", "STATIC", 1.0, "ROUND_ROBIN", (Endpoint("127.0.0.1", 9),),
        cb_max_connections=1, cb_max_pending_requests=1, cb_high=one,
    )  # fmt: skip
    state = ClusterState(c, StatsStore())
    default, high = state.pools
    host = state.hosts[0]
    for pool in state.pools:
        pool.connections = host.connections[pool.priority] = 1
    socks: list[socket.socket] = []
    got: list[tuple[str, UpstreamConnection | None]] = []

    def conn() -> UpstreamConnection:
        a, b = socket.socketpair()
        socks.extend((a, b))
        return UpstreamConnection(a, host)

    async def request(name: str, pool_index: int) -> None:
        try:
            got.append((name, await state.pools[pool_index].acquire(host)))
        except Overflow:
            got.append((name, None))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request, "high", HIGH)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(request, "default", DEFAULT)
            await trio.testing.wait_all_tasks_blocked()
            # HIGH's queue (1) is full; DEFAULT's is not: each queue is its own.
            nursery.start_soon(request, "high-2", HIGH)
            await trio.testing.wait_all_tasks_blocked()
            assert got == [("high-2", None)]
            assert (default.pending, high.pending, state.stats.rq_pending_active) == (1, 1, 2)
            released = conn()
            default.put_back(released)
            await trio.testing.wait_all_tasks_blocked()
            assert got[1] == ("default", released)
            assert len(high.waiters) == 1 and not host.idle[HIGH]
            spare = conn()
            default.put_back(spare)  # nobody waits in DEFAULT: idle, for DEFAULT only
            assert host.idle == ([spare], [])
            assert high.take_idle(host) is None
            assert default.take_idle(host) is spare
            released = conn()
            high.put_back(released)
            await trio.testing.wait_all_tasks_blocked()
            assert got[2] == ("high", released)
            assert state.stats.rq_pending_overflow == 1

    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        for s in socks:
            s.close()
