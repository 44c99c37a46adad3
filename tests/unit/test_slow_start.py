"""Slow start (slow_start_config): Envoy's weight factor, the balancers that apply it,
the master's stamps and the config, without sockets (tests/integration/test_slow_start.py
adds a host to a running proxyd)."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import pytest

from proxyd.config import compile_bootstrap
from proxyd.epoch import Cluster, Endpoint, Epoch, HealthCheck, RuntimeValue
from proxyd.errors import ConfigError
from proxyd.master.slow_start import SlowStartStamps
from proxyd.protocol.balancers import make_balancer
from proxyd.protocol.runtime import Snapshot
from proxyd.protocol.slow_start import SlowStart

# -- the factor -------------------------------------------------------------------------


def test_factor_is_linear_with_aggression_1_and_floored() -> None:
    s = SlowStart(10.0, 1.0, 0.1)
    assert s.factor(0.0) == 0.1  # max(1 ms, 0) / 10 s, floored at 10%
    assert s.factor(0.5) == 0.1
    assert s.factor(2.0) == pytest.approx(0.2)
    assert s.factor(7.5) == pytest.approx(0.75)
    assert s.factor(10.0) == 1.0  # the window is over
    assert s.factor(100.0) == 1.0


def test_factor_with_aggression() -> None:
    s = SlowStart(10.0, 2.0, 0.0)
    assert s.factor(2.5) == pytest.approx(math.sqrt(0.25))
    assert SlowStart(10.0, 0.5, 0.0).factor(5.0) == pytest.approx(0.25)
    # Not above 0 (or not a number): Envoy takes 1.0.
    assert SlowStart(10.0, 0.0, 0.0).factor(5.0) == pytest.approx(0.5)
    assert SlowStart(10.0, -3.0, 0.0).factor(5.0) == pytest.approx(0.5)
    assert SlowStart(10.0, float("nan"), 0.0).factor(5.0) == pytest.approx(0.5)
    # The smallest time factor is 1 ms of the window.
    assert SlowStart(10.0, 1.0, 0.0).factor(0.0) == pytest.approx(0.0001)


def test_in_window() -> None:
    s = SlowStart(10.0)
    assert s.in_window(100.0, 105.0)
    assert not s.in_window(100.0, 110.0)
    assert not s.in_window(0.0, 5.0)  # never stamped


# -- balancers --------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class FakeHost:
    name: str
    weight: int = 1
    active_requests: int = 0
    active_since: float = 0.0


def shares(
    policy: str, hosts: list[FakeHost], slow: SlowStart, now: float, n: int
) -> dict[str, int]:
    b = make_balancer(policy, hosts, rng=random.Random(3), slow_start=slow, clock=lambda: now)
    counts = {h.name: 0 for h in hosts}
    for _ in range(n):
        h = b.pick()
        assert h is not None
        counts[h.name] += 1
    return counts


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST"])
def test_a_new_host_gets_its_slow_start_share(policy: str) -> None:
    old = FakeHost("old", active_since=1.0)
    new = FakeHost("new", active_since=1000.0)
    slow = SlowStart(100.0, 1.0, 0.1)
    # 25 s into a 100 s window: weight 0.25 against 1 → a fifth of the picks.
    counts = shares(policy, [old, new], slow, 1025.0, 1000)
    assert 150 <= counts["new"] <= 250
    # Floored at min_weight_percent right after it joined: 1/11 of them.
    counts = shares(policy, [old, new], slow, 1000.5, 1100)
    assert 60 <= counts["new"] <= 140
    # The window is over (and was when the balancer was made): an even split.
    counts = shares(policy, [old, new], slow, 1200.0, 1000)
    assert 450 <= counts["new"] <= 550


def test_weights_multiply_with_the_static_weight() -> None:
    old = FakeHost("old", weight=1, active_since=1.0)
    new = FakeHost("new", weight=4, active_since=1000.0)
    counts = shares("ROUND_ROBIN", [old, new], SlowStart(100.0, 1.0, 0.1), 1050.0, 900)
    # 4 × 0.5 = 2 against 1: two thirds.
    assert 540 <= counts["new"] <= 660


def test_the_factor_follows_the_clock_between_picks() -> None:
    old = FakeHost("old", active_since=1.0)
    new = FakeHost("new", active_since=1000.0)
    now = [1000.0]
    b = make_balancer(
        "ROUND_ROBIN", [old, new], rng=random.Random(1), slow_start=SlowStart(10.0),
        clock=lambda: now[0],
    )  # fmt: skip
    first = sum(b.pick() is new for _ in range(200))
    now[0] = 1020.0  # past the window: the same balancer splits evenly
    later = sum(b.pick() is new for _ in range(200))
    assert first < 40 and 80 <= later <= 120


def test_random_ignores_slow_start() -> None:
    old = FakeHost("old", active_since=1.0)
    new = FakeHost("new", active_since=1000.0)
    counts = shares("RANDOM", [old, new], SlowStart(100.0), 1000.5, 2000)
    assert counts["new"] > 800


# -- the master's stamps ----------------------------------------------------------------


def epoch(*clusters: Cluster) -> Epoch:
    return Epoch(1, (), clusters)


def cluster(ports: list[int], healthy: dict[int, bool] | None = None, **kw: Any) -> Cluster:
    healthy = healthy or {}
    eps = tuple(Endpoint("127.0.0.1", p, healthy=healthy.get(p, True)) for p in ports)
    return Cluster("svc", "STATIC", 1.0, "ROUND_ROBIN", eps, slow_start_window_s=30.0, **kw)


def since(e: Epoch) -> dict[int, float]:
    return {ep.port: ep.active_since for ep in e.clusters[0].endpoints}


def test_stamps_join_time_and_keep_it() -> None:
    now = [100.0]
    stamps = SlowStartStamps(lambda: now[0])
    assert since(stamps.stamp(epoch(cluster([1])))) == {1: 100.0}
    now[0] = 105.0
    e = stamps.stamp(epoch(cluster([1, 2])))
    assert since(e) == {1: 100.0, 2: 105.0}
    assert stamps.stamp(e) == e  # idempotent
    now[0] = 110.0
    stamps.stamp(epoch(cluster([2])))  # 1 left the cluster ...
    assert since(stamps.stamp(epoch(cluster([1, 2])))) == {1: 110.0, 2: 105.0}  # ... and is new


def test_health_checked_hosts_restart_when_they_turn_healthy() -> None:
    now = [100.0]
    stamps = SlowStartStamps(lambda: now[0])
    hc = (HealthCheck("tcp", 1.0, 1.0, 1, 1),)
    stamps.stamp(epoch(cluster([1, 2], {2: False}, health_checks=hc)))
    now[0] = 120.0
    e = stamps.stamp(epoch(cluster([1, 2], health_checks=hc)))
    assert since(e) == {1: 100.0, 2: 120.0}
    # Without health checks a health change does not restart the window.
    stamps = SlowStartStamps(lambda: now[0])
    stamps.stamp(epoch(cluster([1], {1: False})))
    now[0] = 130.0
    assert since(stamps.stamp(epoch(cluster([1])))) == {1: 120.0}


def test_clusters_without_slow_start_are_untouched() -> None:
    stamps = SlowStartStamps(lambda: 5.0)
    plain = Cluster("p", "STATIC", 1.0, "ROUND_ROBIN", (Endpoint("127.0.0.1", 1),))
    e = epoch(plain)
    assert stamps.stamp(e) is e


# -- runtime and config -----------------------------------------------------------------


def test_runtime_double() -> None:
    snap = Snapshot([RuntimeValue("a", "2.5"), RuntimeValue("b", "x"), RuntimeValue("c", "1_0")])
    assert snap.double("a", 1.0) == 2.5
    assert snap.double("b", 1.0) == 1.0
    assert snap.double("c", 1.0) == 1.0
    assert snap.double("missing", 3.0) == 3.0


def compiled(**fields: Any) -> Cluster:
    c = {
        "name": "svc",
        "type": "STATIC",
        "load_assignment": {
            "cluster_name": "svc",
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": 1}}}}]}
            ],
        },
        **fields,
    }  # fmt: skip
    loaded = compile_bootstrap({"static_resources": {"clusters": [c]}}, "conf.yaml")
    (out,) = loaded.epoch_template.clusters
    return out


SLOW = {
    "slow_start_window": "30s",
    "aggression": {"default_value": 2.0, "runtime_key": "ss.aggression"},
    "min_weight_percent": {"value": 25},
}


def test_config_round_robin_and_least_request() -> None:
    c = compiled(round_robin_lb_config={"slow_start_config": SLOW})
    assert (c.slow_start_window_s, c.slow_start_aggression, c.slow_start_aggression_key) == (
        30.0, 2.0, "ss.aggression",
    )  # fmt: skip
    assert c.slow_start_min_weight == 0.25
    c = compiled(lb_policy="LEAST_REQUEST", least_request_lb_config={"slow_start_config": SLOW})
    assert c.slow_start_window_s == 30.0
    # Defaults: aggression 1.0, min_weight_percent 10; no window: no slow start.
    c = compiled(round_robin_lb_config={"slow_start_config": {"slow_start_window": "5s"}})
    assert (c.slow_start_aggression, c.slow_start_min_weight) == (1.0, 0.1)
    c = compiled(round_robin_lb_config={"slow_start_config": {}})
    assert c.slow_start_window_s == 0.0
    # Another policy's config is ignored, as Envoy ignores it.
    c = compiled(lb_policy="RANDOM", round_robin_lb_config={"slow_start_config": SLOW})
    assert c.slow_start_window_s == 0.0


def test_config_negative_window_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        compiled(round_robin_lb_config={"slow_start_config": {"slow_start_window": "-1s"}})
    assert "round_robin_lb_config.slow_start_config.slow_start_window" in str(info.value)
    assert "Expected positive duration" in str(info.value)


def test_config_typed_policies() -> None:
    lb = "type.googleapis.com/envoy.extensions.load_balancing_policies."
    for name, policy in (
        ("round_robin.v3.RoundRobin", "rr"),
        ("least_request.v3.LeastRequest", "lr"),
    ):
        c = compiled(
            load_balancing_policy={
                "policies": [
                    {"typed_extension_config": {"name": policy, "typed_config": {
                        "@type": lb + name, "slow_start_config": SLOW}}}
                ]
            }
        )  # fmt: skip
        assert c.slow_start_window_s == 30.0 and c.slow_start_min_weight == 0.25
