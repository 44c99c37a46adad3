"""Every routing case through real Envoy and through RouteTable: both must agree.

The upstreams are ``proxyd.demo`` servers, one per cluster, each answering with an
``x-upstream-name`` header, so the answer tells which route Envoy chose. The same cases
then go through :class:`proxyd.protocol.routing.RouteTable` built on the epoch form of
the same route table.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from proxyd.protocol.routing import RouteTable
from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.compat.routing_cases import (
    CASES,
    KNOWN_DIVERGENCES,
    UPSTREAMS,
    RoutingCase,
    envoy_config_yaml,
    epoch_route_config,
    send,
)
from tests.support import UpstreamServer

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]


@pytest.fixture(scope="module")
def envoy_port() -> Iterator[int]:
    upstreams = [UpstreamServer(name).start() for name in UPSTREAMS]
    try:
        ports = {u.name: u.port for u in upstreams}
        with EnvoyRunner(envoy_config_yaml(0, ports)) as envoy:  # port 0: Envoy binds one
            yield envoy.listener_port("compat_listener")
    finally:
        for u in upstreams:
            u.stop()


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return RouteTable(epoch_route_config())


def test_enough_cases() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_envoy_and_route_table_agree(envoy_port: int, table: RouteTable, case: RoutingCase) -> None:
    envoy_status, envoy_upstream = send(envoy_port, case)
    route = table.match(case.host, case.path, case.joined_headers())
    ours = (200, route.cluster) if route is not None else (404, None)
    assert (envoy_status, envoy_upstream) == ours, "Envoy and RouteTable disagree"
    assert ours == (case.status, case.upstream)


@pytest.mark.parametrize("case", KNOWN_DIVERGENCES, ids=lambda c: c.id)
@pytest.mark.xfail(reason="repeated non-inline headers: Envoy matches any one value")
def test_known_divergences(envoy_port: int, table: RouteTable, case: RoutingCase) -> None:
    assert send(envoy_port, case) == (case.status, case.upstream)  # Envoy's answer
    route = table.match(case.host, case.path, case.joined_headers())
    assert route is not None and route.cluster == case.upstream


def test_runner_reports_a_config_envoy_rejects() -> None:
    bad = "static_resources:\n  clusters:\n  - name: x\n    type: NOT_A_TYPE\n"
    runner = EnvoyRunner(bad)
    with pytest.raises(RuntimeError, match="NOT_A_TYPE"), runner:
        pass
    assert runner.workdir is None and runner.proc is None
