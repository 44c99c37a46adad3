"""Priorities, locality weights and panic mode: real Envoy and proxyd on the same YAML
send traffic in the same shape.

Each case is one bootstrap (demo upstreams, dead ports that an active health check marks
unhealthy) run through Envoy and then proxyd; both get the same requests and the share
of answers per upstream (or 503) must match what Envoy's algorithm gives, within a loose
tolerance (the draws are random), and match each other. Nothing here measures speed.
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.integration.master_fixtures import get
from tests.support import (
    ProxydProcess,
    UpstreamServer,
    free_port,
    grouped_config,
    lb_endpoint,
    wait_for,
)

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

REQUESTS = 300


def shares(listen: int) -> dict[str, float]:
    """Share of REQUESTS answered by each upstream name, or by a status other than 200."""
    got: Counter[str] = Counter()
    for _ in range(REQUESTS):
        status, headers, _ = get(listen)
        got[headers["x-upstream-name"] if status == 200 else str(status)] += 1
    return {k: v / REQUESTS for k, v in got.items()}


def panic_count(stats_text: str) -> int:
    for line in stats_text.splitlines():
        name, _, value = line.partition(": ")
        if name == "cluster.svc.lb_healthy_panic":
            return int(value)
    return 0


Outcome = tuple[dict[str, float], int]


def run_both(tmp_path: Path, make: Callable[[int, int], str]) -> tuple[Outcome, Outcome]:
    """(shares, lb_healthy_panic) from Envoy, then from proxyd, on the same YAML."""
    text = make(0, 0)  # listener and admin on port 0: each proxy binds its own
    with EnvoyRunner(text) as envoy:
        listen = envoy.listener_port("ingress")
        envoy_shares = shares(listen)
        url = f"http://127.0.0.1:{envoy.admin_port}/stats"
        with urllib.request.urlopen(url, timeout=5) as r:
            envoy_panic = panic_count(r.read().decode())
    with ProxydProcess(tmp_path, text) as p:
        listen = p.listener_port()
        proxyd_shares = shares(listen)
        # Workers report counters in batches: wait until all requests are in.
        wait_for(lambda: p.stats().get("http.ingress_http.downstream_rq_total", 0) >= REQUESTS)
        proxyd_panic = p.stats().get("cluster.svc.lb_healthy_panic", 0)
    return (envoy_shares, envoy_panic), (proxyd_shares, proxyd_panic)


def assert_shape(got: dict[str, float], expected: dict[str, float], tolerance: float) -> None:
    assert set(got) == set(expected), got
    for key, share in expected.items():
        assert abs(got[key] - share) <= tolerance, (key, got)


@pytest.fixture
def upstreams() -> Any:
    ups = [UpstreamServer(n).start() for n in ("a", "b")]
    yield ups
    for u in ups:
        u.stop()


def test_partial_failover_to_p1(tmp_path: Path, upstreams: list[UpstreamServer]) -> None:
    """P0 = {a, dead}: 50% healthy → health 70, so P0 gets 70% and P1 = {b} 30%."""
    a, b = upstreams
    dead = free_port()
    groups = [
        {"lb_endpoints": [lb_endpoint(a.port), lb_endpoint(dead)]},
        {"priority": 1, "lb_endpoints": [lb_endpoint(b.port)]},
    ]
    envoy, ours = run_both(tmp_path, lambda listen, admin: grouped_config(0, 0, groups))
    for got, panics in (envoy, ours):
        assert_shape(got, {"a": 0.7, "b": 0.3}, 0.1)
        assert panics == 0
    assert abs(envoy[0]["a"] - ours[0]["a"]) <= 0.15


def test_full_failover_to_p1(tmp_path: Path, upstreams: list[UpstreamServer]) -> None:
    """P0 = {dead}: P1 takes everything and nothing panics (total health is 100)."""
    _, b = upstreams
    groups = [
        {"lb_endpoints": [lb_endpoint(free_port())]},
        {"priority": 1, "lb_endpoints": [lb_endpoint(b.port)]},
    ]
    envoy, ours = run_both(tmp_path, lambda listen, admin: grouped_config(0, 0, groups))
    assert envoy == ours == ({"b": 1.0}, 0)


def test_locality_weights(tmp_path: Path, upstreams: list[UpstreamServer]) -> None:
    """X (weight 1) = {a}; Y (weight 3) = {b, dead}, 50% available → 3 × min(1, 0.7) = 2.1.
    a gets 1 / 3.1 of the traffic, b the rest; the dead host none (no panic: 2 of 3 are
    healthy)."""
    a, b = upstreams
    groups = [
        {
            "locality": {"zone": "zone-x"},
            "load_balancing_weight": 1,
            "lb_endpoints": [lb_endpoint(a.port)],
        },
        {
            "locality": {"zone": "zone-y"},
            "load_balancing_weight": 3,
            "lb_endpoints": [lb_endpoint(b.port), lb_endpoint(free_port())],
        },
    ]
    envoy, ours = run_both(
        tmp_path,
        lambda listen, admin: grouped_config(
            0, 0, groups, common_lb_config={"locality_weighted_lb_config": {}}
        ),
    )
    for got, panics in (envoy, ours):
        assert_shape(got, {"a": 1 / 3.1, "b": 2.1 / 3.1}, 0.05)
        assert panics == 0


def test_panic_routes_to_all_hosts(tmp_path: Path, upstreams: list[UpstreamServer]) -> None:
    """{a, dead, dead}: 33% healthy < 50% → panic: about a third answered by a, the rest
    503 from the dead hosts; every request counted in lb_healthy_panic."""
    a, _ = upstreams
    groups = [
        {"lb_endpoints": [lb_endpoint(a.port), lb_endpoint(free_port()), lb_endpoint(free_port())]}
    ]
    envoy, ours = run_both(tmp_path, lambda listen, admin: grouped_config(0, 0, groups))
    for got, panics in (envoy, ours):
        assert_shape(got, {"a": 1 / 3, "503": 2 / 3}, 0.1)
        assert panics >= REQUESTS
