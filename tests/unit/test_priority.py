"""Priority load, panic mode and locality weighted balancing (proxyd.protocol.priority).

The tables are Envoy's (docs/root/intro/arch_overview/upstream/load_balancing/
priority.rst, panic_threshold.rst and locality_weight.rst). Where the docs' numbers are
rounded by hand, the expected value is what Envoy's code computes (distributeLoad: each
level's share is truncated and the remainder goes to the first level with health); those
rows say so.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from proxyd.protocol.balancers import POLICIES
from proxyd.protocol.priority import make_priority_balancer, priority_load


def pct(*percents: int) -> list[tuple[int, int]]:
    """(usable, hosts) per level for levels of 100 hosts with these usable percents."""
    return [(p, 100) for p in percents]


# -- priority load --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p0", "load"),
    [(100, (100, 0)), (72, (100, 0)), (71, (99, 1)), (50, (70, 30)), (25, (35, 65)), (0, (0, 100))],
)
def test_two_levels_p1_fully_healthy(p0: int, load: tuple[int, int]) -> None:
    state = priority_load(pct(p0, 100))
    assert state.load == load
    assert state.panic == (False, False)  # normalized total health is 100


@pytest.mark.parametrize(
    ("p0", "p1", "load"),
    [
        (100, 100, (100, 0)),
        (72, 72, (100, 0)),
        (71, 71, (99, 1)),
        (50, 50, (70, 30)),
        (25, 100, (35, 65)),
        (25, 25, (50, 50)),
    ],
)
def test_two_levels(p0: int, p1: int, load: tuple[int, int]) -> None:
    assert priority_load(pct(p0, p1)).load == load


@pytest.mark.parametrize(
    ("health", "load"),
    [
        ((100, 100, 100), (100, 0, 0)),
        ((72, 72, 100), (100, 0, 0)),
        ((71, 71, 100), (99, 1, 0)),
        ((50, 50, 100), (70, 30, 0)),
        ((25, 100, 100), (35, 65, 0)),
        ((25, 25, 100), (35, 35, 30)),
        # The docs show 36/36/28; the code truncates 35.7 to 35 twice and gives the
        # remainder (2) to P0. (The priority docs leave panic aside; with the default
        # threshold all three levels would be in panic, see test_panic_table.)
        ((25, 25, 20), (37, 35, 28)),
    ],
)
def test_three_levels(health: tuple[int, int, int], load: tuple[int, int, int]) -> None:
    assert priority_load(pct(*health), panic_threshold=0).load == load


def test_health_is_integer_arithmetic_with_the_factor() -> None:
    # 1 of 3 usable: 140 * 1 // 3 = 46.
    assert priority_load([(1, 3), (1, 1)]).health == (46, 100)
    assert priority_load([(1, 3), (1, 1)]).load == (46, 54)
    # A factor of 100: no overprovisioning, 80% usable is 80% of the traffic.
    assert priority_load(pct(80, 100), overprovisioning_factor=100).load == (80, 20)
    # A big factor keeps a thin level whole.
    assert priority_load(pct(10, 100), overprovisioning_factor=1000).load == (100, 0)


def test_panic_table() -> None:
    # P1 fully usable: normalized total health stays 100, nothing panics.
    for p0 in (72, 71, 50, 25, 0):
        assert priority_load(pct(p0, 100)).panic == (False, False)
    # Both at 25%: total 70 → both in panic → total panic, load by host counts.
    assert priority_load(pct(25, 25)).panic == (True, True)
    assert priority_load(pct(25, 25)).load == (50, 50)
    assert priority_load([(1, 4), (1, 12)]).load == (25, 75)
    # 5% and 65%: total 98, P0 in panic, P1 not. (The docs show 7/93; the code's
    # remainder makes it 8/92.)
    state = priority_load(pct(5, 65))
    assert state.panic == (True, False)
    assert state.load == (8, 92)
    # Three levels all below the threshold with a total under 100: total panic.
    assert priority_load(pct(25, 25, 20)).load == (34, 33, 33)


def test_one_level_in_panic() -> None:
    # 1 of 3 usable is 33% < 50%: panic, all traffic to P0 (all its hosts).
    state = priority_load([(1, 3)])
    assert state.panic == (True,) and state.load == (100,)
    # Exactly at the threshold is not panic (Envoy: healthy_percent < threshold).
    assert priority_load([(1, 2)]).panic == (False,)
    assert priority_load([(1, 2)], panic_threshold=51).panic == (True,)


def test_panic_disabled() -> None:
    state = priority_load([(1, 3)], panic_threshold=0)
    assert state.panic == (False,) and state.load == (100,)
    # Nothing usable: P0 takes the load (and will have no host to give).
    state = priority_load([(0, 3), (0, 2)], panic_threshold=0)
    assert state.panic == (False, False) and state.load == (100, 0)


def test_nothing_usable_is_total_panic() -> None:
    state = priority_load([(0, 3), (0, 1)])
    assert state.panic == (True, True)
    assert state.load == (75, 25)


def test_degenerate_levels() -> None:
    assert priority_load([]).load == (100,)
    assert priority_load([]).panic == (True,)
    assert priority_load([(0, 0)]).load == (100,)
    # A gap (no P1 hosts) is an empty level with no health.
    assert priority_load([(0, 1), (0, 0), (1, 1)]).load == (0, 0, 100)
    assert priority_load([(0, 1), (0, 0), (1, 1)]).panic == (False, False, False)
    # Total panic with an empty P0: the remainder goes to the first non-empty level.
    assert priority_load([(0, 0), (0, 3)]).load == (0, 100)


def test_load_always_sums_to_100() -> None:
    for counts in itertools.product([(0, 0), (0, 3), (1, 3), (2, 3), (3, 3), (1, 7)], repeat=3):
        for threshold in (0, 50, 100):
            state = priority_load(list(counts), 140, threshold)
            assert sum(state.load) == 100, (counts, threshold)
            assert all(x >= 0 for x in state.load)


# -- the balancer ---------------------------------------------------------------------


@dataclass(eq=False)
class H:
    name: str
    priority: int = 0
    usable: bool = True
    locality: str = ""
    locality_weight: int = 0
    weight: int = 1
    active_requests: int = 0


@dataclass
class Stats:
    lb_healthy_panic: int = 0


def names(b: object, n: int) -> Counter[str]:
    return Counter(b.pick().name for _ in range(n))  # type: ignore[attr-defined]


@pytest.mark.parametrize("policy", POLICIES)
def test_all_traffic_to_p0_then_failover(policy: str) -> None:
    p0, p1 = H("p0"), H("p1", priority=1)
    b = make_priority_balancer(policy, [p0, p1], rng=random.Random(1))
    assert set(names(b, 50)) == {"p0"}
    p0.usable = False
    b = make_priority_balancer(policy, [p0, p1], rng=random.Random(1))
    assert set(names(b, 50)) == {"p1"}


def test_partial_failover_follows_the_load() -> None:
    # P0: 1 of 2 usable → health 70: about 70% to P0's usable host, 30% to P1.
    hs = [H("a"), H("b", usable=False), H("c", priority=1)]
    b = make_priority_balancer("ROUND_ROBIN", hs, rng=random.Random(7))
    got = names(b, 10_000)
    assert set(got) == {"a", "c"}
    assert 6_700 < got["a"] < 7_300


def test_panic_routes_to_all_hosts_and_counts() -> None:
    hs = [H("a"), H("b", usable=False), H("c", usable=False)]
    stats = Stats()
    b = make_priority_balancer("ROUND_ROBIN", hs, stats=stats, rng=random.Random(3))
    assert names(b, 30) == Counter({"a": 10, "b": 10, "c": 10})
    assert stats.lb_healthy_panic == 30
    stats = Stats()
    b = make_priority_balancer("ROUND_ROBIN", hs, panic_threshold=0, stats=stats)
    assert set(names(b, 30)) == {"a"}
    assert stats.lb_healthy_panic == 0


def test_no_usable_host_without_panic_picks_none() -> None:
    hs = [H("a", usable=False), H("b", usable=False, priority=1)]
    b = make_priority_balancer("ROUND_ROBIN", hs, panic_threshold=0)
    assert b.pick() is None
    assert make_priority_balancer("ROUND_ROBIN", []).pick() is None
    # With panic (the default) every host of both levels is used, by host count.
    b = make_priority_balancer("ROUND_ROBIN", hs, rng=random.Random(5))
    assert set(names(b, 200)) == {"a", "b"}


def test_one_level_all_usable_is_the_plain_balancer() -> None:
    from proxyd.protocol.balancers import make_balancer

    hs = [H("a"), H("b")]
    b = make_priority_balancer("ROUND_ROBIN", hs)
    assert type(b) is type(make_balancer("ROUND_ROBIN", hs))


# -- localities -----------------------------------------------------------------------


def localities(x_usable: int, x_total: int = 100) -> list[H]:
    """Locality X (weight 1) with x_total hosts, Y (weight 2) with 10 usable hosts."""
    xs = [
        H(f"x{i}", locality="r/x/", locality_weight=1, usable=i < x_usable) for i in range(x_total)
    ]
    ys = [H(f"y{i}", locality="r/y/", locality_weight=2) for i in range(10)]
    return xs + ys


@pytest.mark.parametrize(
    ("x_percent", "x_share"),
    [(100, 33), (70, 33), (69, 32), (50, 26), (25, 15), (0, 0)],
)
def test_locality_weight_table(x_percent: int, x_share: int) -> None:
    # panic is off so X's unusable hosts never count; Y is 100% available.
    b = make_priority_balancer(
        "ROUND_ROBIN",
        localities(x_percent),
        locality_weighted=True,
        panic_threshold=0,
        rng=random.Random(11),
    )
    n = 30_000
    to_x = sum(1 for _ in range(n) if b.pick().name.startswith("x"))  # type: ignore[union-attr]
    # The docs' percents are rounded by hand (32.6% is "32", 14.9% is "15").
    assert abs(100 * to_x / n - x_share) < 1.0
    # EDF makes the split exact: weight × min(1, 1.4 × availability), Y's weight 2.
    x = min(1.0, 1.4 * x_percent / 100)
    assert abs(to_x / n - x / (x + 2)) < 0.001


def test_locality_picks_only_usable_hosts_within_it() -> None:
    b = make_priority_balancer("ROUND_ROBIN", localities(50), locality_weighted=True)
    picked = {b.pick().name for _ in range(3000)}  # type: ignore[union-attr]
    assert {f"x{i}" for i in range(50, 100)}.isdisjoint(picked)


def test_locality_without_weight_gets_no_traffic() -> None:
    hs = [H("a", locality="r/a/", locality_weight=3), H("b", locality="r/b/")]
    b = make_priority_balancer("ROUND_ROBIN", hs, locality_weighted=True)
    assert set(names(b, 50)) == {"a"}
    # When no locality has weight, the level's usable hosts are used as a whole.
    hs = [H("a", locality="r/a/"), H("b", locality="r/b/")]
    b = make_priority_balancer("ROUND_ROBIN", hs, locality_weighted=True)
    assert set(names(b, 50)) == {"a", "b"}
    # Nor when the weighted locality has no usable host left: then b serves.
    hs = [
        H("a", locality="r/a/", locality_weight=3, usable=False),
        H("b", locality="r/b/"),
        H("c", locality="r/b/"),
    ]
    b = make_priority_balancer("ROUND_ROBIN", hs, locality_weighted=True)
    assert set(names(b, 50)) == {"b", "c"}


def test_localities_ignored_without_locality_weighted_lb() -> None:
    hs = [H("a", locality="r/a/", locality_weight=1), H("b", locality="r/b/", locality_weight=9)]
    assert names(make_priority_balancer("ROUND_ROBIN", hs), 100) == Counter({"a": 50, "b": 50})


def test_locality_in_panic_uses_all_hosts() -> None:
    hs = [
        H("a", locality="r/a/", locality_weight=1),
        H("b", locality="r/a/", locality_weight=1, usable=False),
        H("c", locality="r/b/", locality_weight=1, usable=False),
    ]
    stats = Stats()
    b = make_priority_balancer("ROUND_ROBIN", hs, locality_weighted=True, stats=stats)
    assert set(names(b, 30)) == {"a", "b", "c"}
    assert stats.lb_healthy_panic == 30


def test_localities_per_priority() -> None:
    # P0 all unusable (no panic): P1's localities share by weight, 1:3.
    hs = [
        H("p0", locality="r/a/", locality_weight=5, usable=False),
        H("a", priority=1, locality="r/a/", locality_weight=1),
        H("b", priority=1, locality="r/b/", locality_weight=3),
    ]
    b = make_priority_balancer("ROUND_ROBIN", hs, locality_weighted=True, panic_threshold=0)
    assert names(b, 400) == Counter({"a": 100, "b": 300})
