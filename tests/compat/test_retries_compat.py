"""Route retry policies: real Envoy and real proxyd on the same YAML.

The bootstrap and the cases are tests/integration/retry_cases.py: one route per retry_on
condition (and per-try timeouts, the retry headers on and off the edge, a replayed
request body, a virtual host's policy with include_request_attempt_count and a route's
policy over it) in front of one scripted upstream that fails attempt by attempt as the
request says. Each case is played through Envoy, then through proxyd (one worker each),
and compared: the status and body the client got, which attempt answered, how many
attempts the upstream saw, and the x-envoy-attempt-count and
x-envoy-expected-rq-timeout-ms each attempt carried. The clusters' retry stats
(upstream_rq_retry, _success, _overflow, _limit_exceeded, upstream_rq_per_try_timeout
and upstream_rq_total) from both ``/stats`` are compared last.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.compat.envoy_runner import EnvoyRunner, envoy_available, envoy_stats
from tests.integration.retry_cases import CASES, Case, Outcome, play, retries_config, retry_stats
from tests.integration.scripted_upstream import scripted_upstream
from tests.support import ProxydProcess, free_port, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]


@dataclass
class Side:
    outcomes: dict[str, Outcome]
    stats: dict[str, int]


@dataclass
class Results:
    envoy: Side
    proxyd: Side


def play_all(ports: dict[str, int], upstream: Any, tag: str) -> dict[str, Outcome]:
    out = {}
    for c in CASES:
        o = play(c, ports, upstream, tag)
        # A retry's x-envoy-expected-rq-timeout-ms is what is left of the route
        # timeout: the same to within the few ms the attempts took.
        o.expected_timeouts = [
            v if v is None or int(v) < 1000 else str(round(int(v), -2)) for v in o.expected_timeouts
        ]
        out[c.name] = o
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    with scripted_upstream() as upstream:
        ports = {name: free_port() for name in ("ingress", "edge", "small", "internal")}
        admin = free_port()
        text = retries_config(
            ports["ingress"],
            ports["edge"],
            ports["small"],
            ports["internal"],
            admin,
            upstream.server_address[1],
            free_port(),
        )
        with EnvoyRunner(text) as envoy:
            envoy_side = Side(play_all(ports, upstream, "envoy"), {})
            envoy_side.stats = retry_stats(envoy_stats(envoy.admin_port))
        with ProxydProcess(tmp_path_factory.mktemp("proxyd"), text, admin, concurrency=1) as p:
            proxyd_side = Side(play_all(ports, upstream, "proxyd"), {})
            # Workers report stats in batches: wait until they say what Envoy said.
            try:
                wait_for(lambda: retry_stats(p.stats()) == envoy_side.stats, timeout=5)
            except TimeoutError:
                pass  # compared (and shown) by the test
            proxyd_side.stats = retry_stats(p.stats())
        yield Results(envoy_side, proxyd_side)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case_as_envoy(results: Results, case: Case) -> None:
    envoy = results.envoy.outcomes[case.name]
    proxyd = results.proxyd.outcomes[case.name]
    assert proxyd == envoy
    # And the case expects what Envoy does (so the integration test checks the same).
    assert (envoy.status, envoy.attempts) == (case.expect_status, case.expect_attempts)


def test_retry_stats_as_envoy(results: Results) -> None:
    assert results.proxyd.stats == results.envoy.stats
