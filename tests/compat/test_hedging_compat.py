"""hedge_policy hedge_on_per_try_timeout: real Envoy and real proxyd on the same YAML.

Routes (by the ``x-case`` header) with a per-try timeout of 0.2 s in front of the
scripted upstream (:mod:`tests.integration.scripted_upstream`): an attempt that is slow
(``200@1.0``) or never answers (``hang``) is not ended by its per-try timeout when the
route hedges; a retry runs beside it and the first usable response wins. Each case is
played through Envoy, then through proxyd (one worker each), and compared: the status,
which attempt answered and how many requests the upstream saw. The cluster's retry stats
from both ``/stats`` are compared last.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.compat.envoy_runner import EnvoyRunner, envoy_available, envoy_stats
from tests.integration.retry_cases import Case, Outcome, play, retry_stats
from tests.integration.scripted_upstream import scripted_upstream
from tests.support import ProxydProcess, free_port, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

_BACKOFF = "retry_back_off: {base_interval: 0.001s, max_interval: 0.002s}"
_HEDGE = "hedge_policy: {hedge_on_per_try_timeout: true}"


def _route(case: str, policy: str, extra: str = "") -> str:
    return f"""
              - match: {{prefix: /, headers: [{{name: x-case, string_match: {{exact: {case}}}}}]}}
                route: {{cluster: svc, timeout: 3s, retry_policy: {{{policy}, per_try_timeout: 0.2s, {_BACKOFF}}}{extra}}}"""


ROUTES = "".join(
    [
        _route("hedge", "retry_on: 5xx, num_retries: 1", ", " + _HEDGE),
        _route("hedge-2", "retry_on: 5xx, num_retries: 2", ", timeout: 1.5s, " + _HEDGE),
        _route("plain", "retry_on: 5xx, num_retries: 1"),
        _route("hedge-reset", "retry_on: reset, num_retries: 1", ", timeout: 2s, " + _HEDGE),
    ]
)


def hedging_config(port: int, admin: int, upstream: int) -> str:
    return f"""
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            name: local
            virtual_hosts:
            - name: vh
              domains: [vh.example]
              hedge_policy: {{hedge_on_per_try_timeout: true, initial_requests: 2}}
              retry_policy: {{retry_on: 5xx, num_retries: 1, per_try_timeout: 0.2s, {_BACKOFF}}}
              routes:
              - match: {{prefix: /off}}
                route: {{cluster: svc, timeout: 3s, hedge_policy: {{hedge_on_per_try_timeout: false}}}}
              - match: {{prefix: /}}
                route: {{cluster: svc, timeout: 3s}}
            - name: all
              domains: ["*"]
              routes:{ROUTES}
  clusters:
  - name: svc
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: svc
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
"""


CASES = [
    # The first attempt never answers: the hedged retry's response wins.
    Case("slow-first", "hedge", "hang,200", 200, 2),
    # The first attempt answers late: it wins over the retry that hangs...
    Case("first-wins", "hedge", "200@1.0,hang", 200, 2),
    # ... which, without hedging, ends the first attempt and times out itself.
    Case("plain-first-ends", "plain", "200@1.0,hang", 504, 2),
    # The retry's 503 cannot be retried (no retry left): dropped, the first one wins.
    Case("retry-503-dropped", "hedge", "200@1.0,503", 200, 2),
    # A retry's 503 with a retry left is retried (beside the first attempt).
    Case("retry-503-retried", "hedge-2", "200@1.0,503,hang", 200, 3),
    # Nothing answers: only the route timeout ends the request.
    Case("all-hang", "hedge-2", "hang", 504, 3),
    # The first attempt resets after its per-try timeout while the retry is out.
    Case("timed-out-reset", "hedge-reset", "reset@0.5,200@1.0", 200, 2),
    Case("timed-out-reset-last", "hedge-reset", "reset@0.5,hang", 504, 2),
    # A virtual host's hedge_policy, and a route's that turns it off.
    Case("vh-hedge", "", "200@1.0,hang", 200, 2, host="vh.example"),
    Case("route-off", "", "200@1.0,hang", 504, 2, host="vh.example", path="/off"),
]


@dataclass
class Side:
    outcomes: dict[str, Outcome]
    stats: dict[str, int]


def _stats(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in retry_stats(stats).items() if k.startswith("svc.")}


def play_all(port: int, upstream: Any, tag: str) -> dict[str, Outcome]:
    ports = {"ingress": port}
    out = {}
    for c in CASES:
        o = play(c, ports, upstream, tag)
        o.expected_timeouts = []  # what is left of the route timeout: not compared
        out[c.name] = o
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Side]]:
    with scripted_upstream() as upstream:
        port, admin = free_port(), free_port()
        text = hedging_config(port, admin, upstream.server_address[1])
        with EnvoyRunner(text) as envoy:
            envoy_side = Side(play_all(port, upstream, "envoy"), {})
            envoy_side.stats = _stats(envoy_stats(envoy.admin_port))
        with ProxydProcess(tmp_path_factory.mktemp("proxyd"), text, admin, concurrency=1) as p:
            proxyd_side = Side(play_all(port, upstream, "proxyd"), {})
            try:
                wait_for(lambda: _stats(p.stats()) == envoy_side.stats, timeout=5)
            except TimeoutError:
                pass  # compared (and shown) by the test
            proxyd_side.stats = _stats(p.stats())
        yield {"envoy": envoy_side, "proxyd": proxyd_side}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case_as_envoy(results: dict[str, Side], case: Case) -> None:
    envoy = results["envoy"].outcomes[case.name]
    proxyd = results["proxyd"].outcomes[case.name]
    assert proxyd == envoy
    assert (envoy.status, envoy.attempts) == (case.expect_status, case.expect_attempts)


def test_hedging_stats_as_envoy(results: dict[str, Side]) -> None:
    assert results["proxyd"].stats == results["envoy"].stats
