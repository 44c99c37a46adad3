"""make_balancer: Envoy's ROUND_ROBIN, LEAST_REQUEST and RANDOM."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from proxyd.protocol.balancers import POLICIES, make_balancer


@dataclass(eq=False)
class H:
    name: str
    weight: int = 1
    active_requests: int = 0


def hosts(*weights: int) -> list[H]:
    return [H(chr(ord("a") + i), w) for i, w in enumerate(weights)]


def counts(policy: str, hs: list[H], n: int, **kw: object) -> Counter[str]:
    b = make_balancer(policy, hs, **kw)  # type: ignore[arg-type]
    return Counter(b.pick().name for _ in range(n))  # type: ignore[union-attr]


@pytest.mark.parametrize("policy", POLICIES)
def test_no_hosts_picks_none(policy: str) -> None:
    assert make_balancer(policy, []).pick() is None


@pytest.mark.parametrize("policy", POLICIES)
def test_single_host(policy: str) -> None:
    (h,) = hs = hosts(3)
    b = make_balancer(policy, hs)
    assert all(b.pick() is h for _ in range(10))


def test_unknown_policy() -> None:
    with pytest.raises(ValueError, match="CLUSTER_PROVIDED"):
        make_balancer("CLUSTER_PROVIDED", hosts(1))


def test_round_robin_equal_weights_rotates_from_a_random_start() -> None:
    hs = hosts(1, 1, 1, 1)
    starts = set()
    for seed in range(20):
        b = make_balancer("ROUND_ROBIN", hs, rng=random.Random(seed))
        seq = [b.pick().name for _ in range(8)]  # type: ignore[union-attr]
        assert seq[4:] == seq[:4]
        assert sorted(seq[:4]) == ["a", "b", "c", "d"]
        names = [h.name for h in hs]
        assert seq[1] == names[(names.index(seq[0]) + 1) % 4]
        starts.add(seq[0])
    assert len(starts) > 1  # workers do not all start at the same host


def test_round_robin_weighted_is_exact_over_each_cycle() -> None:
    hs = hosts(1, 2, 5)
    b = make_balancer("ROUND_ROBIN", hs, rng=random.Random(7))
    for _ in range(50):
        window = Counter(b.pick().name for _ in range(8))  # type: ignore[union-attr]
        for h in hs:
            assert abs(window[h.name] - h.weight) <= 1
    assert counts("ROUND_ROBIN", hs, 8000, rng=random.Random(1)) == {
        "a": 1000,
        "b": 2000,
        "c": 5000,
    }


def test_round_robin_weighted_interleaves() -> None:
    # EDF spreads the heavy host out instead of sending its whole share in a burst.
    b = make_balancer("ROUND_ROBIN", hosts(1, 1, 4), rng=random.Random(3))
    seq = "".join(b.pick().name for _ in range(60))  # type: ignore[union-attr]
    assert "ccccc" not in seq


def test_least_request_equal_weights_prefers_idle_hosts() -> None:
    hs = hosts(1, 1, 1, 1)
    for h in hs:
        h.active_requests = 10
    hs[1].active_requests = 0
    c = counts("LEAST_REQUEST", hs, 20000, rng=random.Random(11))
    # P2C: the idle host wins unless both samples miss it: 1 - (3/4)^2 = 7/16.
    assert 0.41 < c["b"] / 20000 < 0.465
    c = counts("LEAST_REQUEST", hs, 2000, choice_count=40, rng=random.Random(12))
    assert c["b"] == 2000


def test_least_request_equal_load_is_uniform() -> None:
    c = counts("LEAST_REQUEST", hosts(1, 1, 1), 30000, rng=random.Random(5))
    for name in "abc":
        assert 9400 < c[name] < 10600


def test_least_request_reads_active_requests_at_pick_time() -> None:
    hs = hosts(1, 1)
    b = make_balancer("LEAST_REQUEST", hs, rng=random.Random(2))
    hs[0].active_requests = 5
    picks = Counter(b.pick().name for _ in range(1000))  # type: ignore[union-attr]
    assert picks["b"] > 700
    hs[0].active_requests, hs[1].active_requests = 0, 5
    picks = Counter(b.pick().name for _ in range(1000))  # type: ignore[union-attr]
    assert picks["a"] > 700


def test_least_request_weighted_uses_weights_when_idle() -> None:
    assert counts("LEAST_REQUEST", hosts(1, 3), 4000, rng=random.Random(4)) == {
        "a": 1000,
        "b": 3000,
    }


def test_least_request_weighted_divides_by_active_requests_plus_one() -> None:
    hs = hosts(1, 2)
    hs[1].active_requests = 3  # effective weight 2 / 4 = 0.5 against 1 / 1
    c = counts("LEAST_REQUEST", hs, 3000, rng=random.Random(4))
    assert abs(c["a"] - 2000) <= 2 and abs(c["b"] - 1000) <= 2


def test_random_is_uniform_and_ignores_weights_as_envoy_does() -> None:
    c = counts("RANDOM", hosts(1, 1, 8), 30000, rng=random.Random(9))
    for name in "abc":
        assert 9400 < c[name] < 10600


def test_module_random_seed_makes_picks_repeatable() -> None:
    hs = hosts(1, 2, 3)
    for policy in POLICIES:
        random.seed(1234)
        b = make_balancer(policy, hs)
        first = [b.pick().name for _ in range(50)]  # type: ignore[union-attr]
        random.seed(1234)
        b = make_balancer(policy, hs)
        assert [b.pick().name for _ in range(50)] == first  # type: ignore[union-attr]
