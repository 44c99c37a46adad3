"""Priorities, locality weights and panic mode: real Envoy and proxyd on the same YAML
send traffic in the same shape.

Each case is a listener and its cluster (demo upstreams, dead ports that an active
health check marks unhealthy). One bootstrap holds every case; it runs through Envoy and
then proxyd; both get the same requests (each case's on its own thread, one after
another) and the share of answers per upstream (or 503) must match what Envoy's
algorithm gives, within a loose tolerance (the draws are random), and match each other.
Nothing here measures speed.
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.integration.master_fixtures import get
from tests.support import (
    FAST_HEALTH_CHECK,
    ProxydProcess,
    UpstreamServer,
    dump_yaml,
    free_port,
    http_listener,
    lb_endpoint,
    static_cluster,
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


def panic_count(stats_text: str, cluster: str) -> int:
    for line in stats_text.splitlines():
        name, _, value = line.partition(": ")
        if name == f"cluster.{cluster}.lb_healthy_panic":
            return int(value)
    return 0


Outcome = tuple[dict[str, float], int]


@dataclass(frozen=True)
class Case:
    """A listener (stat prefix ``name``) routing to a cluster ``name`` whose
    load_assignment.endpoints are ``groups``, checked by FAST_HEALTH_CHECK."""

    name: str
    groups: list[dict[str, Any]]
    cluster: dict[str, Any]


def cases(a: UpstreamServer, b: UpstreamServer) -> list[Case]:
    return [
        # P0 = {a, dead}: 50% healthy → health 70, so P0 gets 70% and P1 = {b} 30%.
        Case(
            "partial_failover",
            [
                {"lb_endpoints": [lb_endpoint(a.port), lb_endpoint(free_port())]},
                {"priority": 1, "lb_endpoints": [lb_endpoint(b.port)]},
            ],
            {},
        ),
        # P0 = {dead}: P1 takes everything and nothing panics (total health is 100).
        Case(
            "full_failover",
            [
                {"lb_endpoints": [lb_endpoint(free_port())]},
                {"priority": 1, "lb_endpoints": [lb_endpoint(b.port)]},
            ],
            {},
        ),
        # X (weight 1) = {a}; Y (weight 3) = {b, dead}, 50% available → 3 × min(1, 0.7)
        # = 2.1: a gets 1 / 3.1 of the traffic, b the rest (no panic: 2 of 3 healthy).
        Case(
            "locality_weights",
            [
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
            ],
            {"common_lb_config": {"locality_weighted_lb_config": {}}},
        ),
        # {a, dead, dead}: 33% healthy < 50% → panic: all three hosts take traffic.
        Case(
            "panic",
            [
                {
                    "lb_endpoints": [
                        lb_endpoint(a.port),
                        lb_endpoint(free_port()),
                        lb_endpoint(free_port()),
                    ]
                }
            ],
            {},
        ),
    ]


def bootstrap(all_cases: list[Case]) -> str:
    """Every case's listener and cluster; listeners and admin on port 0, so each proxy
    binds its own."""
    listeners, clusters = [], []
    for case in all_cases:
        route_config = {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": case.name}}],
                }
            ]
        }
        listeners.append(http_listener(case.name, 0, route_config))
        cluster = static_cluster(case.name, [])
        cluster["load_assignment"]["endpoints"] = case.groups
        cluster["health_checks"] = [FAST_HEALTH_CHECK]
        cluster.update(case.cluster)
        clusters.append(cluster)
    boot = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
    return dump_yaml(boot)


def all_shares(names: list[str], port_of: Any) -> dict[str, dict[str, float]]:
    """Each case's shares; the cases run side by side, each its requests one by one."""
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        results = pool.map(lambda name: shares(port_of(name)), names)
        return dict(zip(names, results, strict=True))


@pytest.fixture(scope="module")
def outcomes(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, dict[str, Outcome]]]:
    """{"envoy"/"proxyd": {case: (shares, lb_healthy_panic)}}, Envoy's then proxyd's."""
    ups = [UpstreamServer(n).start() for n in ("a", "b")]
    try:
        all_cases = cases(*ups)
        names = [c.name for c in all_cases]
        text = bootstrap(all_cases)
        out: dict[str, dict[str, Outcome]] = {}
        with EnvoyRunner(text) as envoy:
            got = all_shares(names, envoy.listener_port)
            url = f"http://127.0.0.1:{envoy.admin_port}/stats"
            with urllib.request.urlopen(url, timeout=5) as r:
                stats = r.read().decode()
            out["envoy"] = {n: (got[n], panic_count(stats, n)) for n in names}
        with ProxydProcess(tmp_path_factory.mktemp("proxyd"), text) as p:
            got = all_shares(names, p.listener_port)
            # Workers report counters in batches: wait until all requests are in.
            for n in names:
                wait_for(lambda n=n: p.stats().get(f"http.{n}.downstream_rq_total", 0) >= REQUESTS)
            stats = p.admin("/stats")[1]
            out["proxyd"] = {n: (got[n], panic_count(stats, n)) for n in names}
        yield out
    finally:
        for u in ups:
            u.stop()


def both(outcomes: dict[str, dict[str, Outcome]], case: str) -> tuple[Outcome, Outcome]:
    return outcomes["envoy"][case], outcomes["proxyd"][case]


def assert_shape(got: dict[str, float], expected: dict[str, float], tolerance: float) -> None:
    assert set(got) == set(expected), got
    for key, share in expected.items():
        assert abs(got[key] - share) <= tolerance, (key, got)


def test_partial_failover_to_p1(outcomes: dict[str, dict[str, Outcome]]) -> None:
    """P0 = {a, dead}: 50% healthy → health 70, so P0 gets 70% and P1 = {b} 30%."""
    envoy, ours = both(outcomes, "partial_failover")
    for got, panics in (envoy, ours):
        assert_shape(got, {"a": 0.7, "b": 0.3}, 0.1)
        assert panics == 0
    assert abs(envoy[0]["a"] - ours[0]["a"]) <= 0.15


def test_full_failover_to_p1(outcomes: dict[str, dict[str, Outcome]]) -> None:
    """P0 = {dead}: P1 takes everything and nothing panics (total health is 100)."""
    envoy, ours = both(outcomes, "full_failover")
    assert envoy == ours == ({"b": 1.0}, 0)


def test_locality_weights(outcomes: dict[str, dict[str, Outcome]]) -> None:
    """X (weight 1) = {a}; Y (weight 3) = {b, dead}, 50% available → 3 × min(1, 0.7) = 2.1.
    a gets 1 / 3.1 of the traffic, b the rest; the dead host none (no panic: 2 of 3 are
    healthy)."""
    for got, panics in both(outcomes, "locality_weights"):
        assert_shape(got, {"a": 1 / 3.1, "b": 2.1 / 3.1}, 0.05)
        assert panics == 0


def test_panic_routes_to_all_hosts(outcomes: dict[str, dict[str, Outcome]]) -> None:
    """{a, dead, dead}: 33% healthy < 50% → panic: about a third answered by a, the rest
    503 from the dead hosts; every request counted in lb_healthy_panic."""
    for got, panics in both(outcomes, "panic"):
        assert_shape(got, {"a": 1 / 3, "503": 2 / 3}, 0.1)
        assert panics >= REQUESTS
