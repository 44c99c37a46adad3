"""``proxyd.worker.peek``: the host a worker's balancer would pick next, taken from a
copy, so the balancer, its hosts and its counters stay as they were. A balancer that
draws at random (RANDOM, LEAST_REQUEST with equal weights) shares the process's random
generator with its copy: its peek is one draw of the same distribution."""

from __future__ import annotations

import pytest

from proxyd.epoch import Cluster, Endpoint
from proxyd.worker.peek import peek_pick
from proxyd.worker.stats import StatsStore
from proxyd.worker.upstream import ClusterState


def _state(policy: str, *endpoints: Endpoint, locality: bool = False) -> ClusterState:
    c = Cluster("c", "STATIC", 1.0, policy, endpoints, locality_weighted_lb=locality)
    return ClusterState(c, StatsStore())


ROUND_ROBIN = [Endpoint("127.0.0.1", p) for p in (1, 2, 3)]
WEIGHTED = [Endpoint("127.0.0.1", 1, weight=5), Endpoint("127.0.0.1", 2, weight=1)]
LOCALITIES = [
    Endpoint("127.0.0.1", 1, locality="r/a", locality_weight=3),
    Endpoint("127.0.0.1", 2, locality="r/b", locality_weight=1),
]
PRIORITIES = [Endpoint("127.0.0.1", 1, healthy=False), Endpoint("127.0.0.1", 2, priority=1)]


@pytest.mark.parametrize(
    ("policy", "endpoints", "locality"),
    [
        ("ROUND_ROBIN", ROUND_ROBIN, False),
        ("ROUND_ROBIN", WEIGHTED, False),
        ("LEAST_REQUEST", WEIGHTED, False),
        ("ROUND_ROBIN", LOCALITIES, True),
        ("ROUND_ROBIN", PRIORITIES, False),
    ],
    ids=["rotation", "weighted", "least_request_weighted", "localities", "priorities"],
)
def test_peek_is_the_next_pick_and_takes_nothing(
    policy: str, endpoints: list[Endpoint], locality: bool
) -> None:
    state = _state(policy, *endpoints, locality=locality)
    for _ in range(12):
        first = peek_pick(state)
        assert peek_pick(state) is first  # asking again changes nothing
        assert first is not None and first in state.hosts  # the worker's own host object
        assert state.balancer.pick() is first  # the real pick is the one peeked


@pytest.mark.parametrize("policy", ["RANDOM", "LEAST_REQUEST"])
def test_peek_of_a_random_balancer_is_one_of_its_hosts(policy: str) -> None:
    state = _state(policy, *ROUND_ROBIN)
    seen = {peek_pick(state) for _ in range(200)}
    assert seen == set(state.hosts)


def test_peek_in_panic_counts_nothing() -> None:
    state = _state("ROUND_ROBIN", *(Endpoint("127.0.0.1", p, healthy=False) for p in (1, 2)))
    before = state.stats.lb_healthy_panic
    host = peek_pick(state)
    assert host is not None
    assert state.stats.lb_healthy_panic == before
    assert state.balancer.pick() is host
    assert state.stats.lb_healthy_panic == before + 1


def test_peek_of_a_cluster_without_hosts() -> None:
    assert peek_pick(_state("ROUND_ROBIN")) is None
