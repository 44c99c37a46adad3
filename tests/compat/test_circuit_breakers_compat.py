"""Circuit breakers: real Envoy and proxyd on the same YAML answer a burst the same way.

A cluster allowed one connection and one pending request, in front of a demo upstream
that holds the first request: of three requests started in turn (each once the one
before is at the upstream or in the pending queue) the first is served, the second waits
for the first's connection and is served, the third overflows (503,
``x-envoy-overloaded``).
And a request whose route timeout passes while it is pending gets Envoy's 504. And with
DEFAULT and HIGH thresholds (RouteAction.priority), a second DEFAULT request overflows
while HIGH requests to the same cluster pass, on connections of their own. Both proxies
must give the same statuses, headers and bodies, count the same stats and show the
same thresholds in /clusters.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.compat.envoy_runner import envoy_stats as _envoy_stats
from tests.integration.test_circuit_breakers import (
    DEFAULT_1_HIGH_5,
    HIGH_ROUTE,
    ONE_CONNECTION_ONE_PENDING,
    SLOW_AND_IMPATIENT,
    Answer,
    Step,
    priority_steps,
    queue_steps,
    staggered,
    timeout_steps,
)
from tests.support import ProxydProcess, UpstreamServer, http_config, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

STATS = (
    "upstream_rq_total",
    "upstream_rq_200",
    "upstream_rq_503",
    "upstream_rq_504",
    "upstream_rq_timeout",
    "upstream_rq_cancelled",
    "upstream_rq_pending_total",
    "upstream_rq_pending_overflow",
    "upstream_rq_pending_active",
    "upstream_cx_total",
    "upstream_cx_overflow",
    "circuit_breakers.default.cx_open",
    "circuit_breakers.default.rq_pending_open",
    "circuit_breakers.default.rq_open",
    "circuit_breakers.default.rq_retry_open",
    "circuit_breakers.high.cx_open",
    "circuit_breakers.high.rq_pending_open",
    "circuit_breakers.high.rq_open",
    "circuit_breakers.high.rq_retry_open",
)
# Also compared for the routing-priority case.
PRIORITY_STATS = (
    *STATS,
    "upstream_rq_active_overflow",
    "upstream_cx_active",
    "upstream_rq_active",
)


def _seen(answers: list[Answer]) -> list[tuple[int, str | None, bytes]]:
    return [(status, h.get("x-envoy-overloaded"), body) for status, h, body, _ in answers]


def _pick(stats: dict[str, int], names: tuple[str, ...] = STATS) -> dict[str, int]:
    return {name: stats.get(f"cluster.a.{name}", 0) for name in names}


def _breakers_json(clusters_json: str) -> Any:
    """Cluster a's circuit_breakers in /clusters?format=json."""
    (status,) = [c for c in json.loads(clusters_json)["cluster_statuses"] if c["name"] == "a"]
    return status["circuit_breakers"]


def _thresholds(clusters_text: str) -> list[str]:
    """The /clusters lines with cluster a's circuit breaker thresholds."""
    return sorted(line for line in clusters_text.splitlines() if "_priority::" in line)


def _answered(stats: dict[str, int]) -> int:
    return sum(stats[f"upstream_rq_{code}"] for code in (200, 503, 504))


StepsFor = Callable[[UpstreamServer, Callable[[], dict[str, int]]], list[Step]]


@pytest.mark.parametrize(
    ("routes", "steps_for", "total"),
    [
        (None, queue_steps, 2),
        (SLOW_AND_IMPATIENT, lambda up, _stats: timeout_steps(up), 1),
    ],
    ids=["queue-then-overflow", "route-timeout-while-pending"],
)
def test_envoy_and_proxyd_agree(
    tmp_path: Path, routes: str | None, steps_for: StepsFor, total: int
) -> None:
    with UpstreamServer("a") as up:
        config = http_config(
            0, 0, {"a": [up.port]}, routes, cluster_extra=ONE_CONNECTION_ONE_PENDING
        )
        with EnvoyRunner(config) as envoy:
            listen = envoy.listener_port("ingress")
            steps = steps_for(up, lambda: _envoy_stats(envoy.admin_port))
            envoy_answers = _seen(staggered(listen, up, steps))
            envoy_stats = _pick(_envoy_stats(envoy.admin_port))
        with ProxydProcess(tmp_path, config, concurrency=1) as p:
            listen = p.listener_port()
            steps = steps_for(up, p.stats)
            proxyd_answers = _seen(staggered(listen, up, steps))
            # Workers report each second: wait until every answer is counted.
            proxyd_stats = wait_for(
                lambda: (s := _pick(p.stats())) and _answered(s) == len(steps) and s
            )
    assert proxyd_answers == envoy_answers
    assert proxyd_stats == envoy_stats
    assert envoy_stats["upstream_rq_total"] == total


def test_routing_priorities_agree(tmp_path: Path) -> None:
    with UpstreamServer("a") as up:
        config = http_config(0, 0, {"a": [up.port]}, HIGH_ROUTE, cluster_extra=DEFAULT_1_HIGH_5)
        with EnvoyRunner(config) as envoy:
            listen = envoy.listener_port("ingress")
            envoy_answers = _seen(staggered(listen, up, priority_steps(up)))
            envoy_stats = _pick(_envoy_stats(envoy.admin_port), PRIORITY_STATS)
            url = f"http://127.0.0.1:{envoy.admin_port}/clusters"
            with urllib.request.urlopen(url, timeout=5) as r:
                envoy_thresholds = _thresholds(r.read().decode())
            with urllib.request.urlopen(url + "?format=json", timeout=5) as r:
                envoy_json = _breakers_json(r.read().decode())
        with ProxydProcess(tmp_path, config, concurrency=1) as p:
            listen = p.listener_port()
            steps = priority_steps(up)
            proxyd_answers = _seen(staggered(listen, up, steps))
            proxyd_stats = wait_for(
                lambda: (s := _pick(p.stats(), PRIORITY_STATS)) and _answered(s) == len(steps) and s
            )
            proxyd_thresholds = _thresholds(p.admin("/clusters")[1])
            proxyd_json = _breakers_json(p.admin("/clusters?format=json")[1])
    assert [a[0] for a in envoy_answers] == [200, 200, 200, 200, 503]
    assert proxyd_answers == envoy_answers
    assert proxyd_stats == envoy_stats
    # HIGH's connections are its own (at its max_connections, 3): a pool per priority.
    assert envoy_stats["upstream_cx_total"] == 5
    assert envoy_stats["circuit_breakers.high.cx_open"] == 1
    assert "a::high_priority::max_requests::5" in envoy_thresholds
    assert proxyd_thresholds == envoy_thresholds
    assert proxyd_json == envoy_json
