"""Every routing case through real Envoy and through a real proxyd, on the same YAML.

The bootstrap is ``tests/compat/routing_cases.py``'s (one listener, one demo upstream per
cluster, each answering with its name in ``x-upstream-name``), plus an ``admin`` block.
Envoy (``EnvoyRunner``, which only swaps the admin port) and then proxyd (``proxyd
--concurrency 2``) run on that very text, one after the other on the same listener port,
and every case is sent to each; the (status, x-upstream-name) pairs must be equal, and
equal to what the case says.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import yaml

from proxyd.protocol.routing import RouteTable
from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.compat.routing_cases import (
    CASES,
    KNOWN_DIVERGENCES,
    UPSTREAMS,
    RoutingCase,
    envoy_config,
    epoch_route_config,
    send,
)
from tests.support import ProxydProcess, UpstreamServer

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

Answer = tuple[int, str | None]


def send_all(port: int, cases: list[RoutingCase]) -> dict[str, Answer | str]:
    out: dict[str, Answer | str] = {}
    for case in cases:
        try:
            out[case.id] = send(port, case)
        except (OSError, http.client.HTTPException) as exc:
            out[case.id] = f"{type(exc).__name__}: {exc}"
    return out


@dataclass
class Answers:
    envoy: dict[str, Answer | str]
    proxyd: dict[str, Answer | str]


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Answers]:
    upstreams = [UpstreamServer(name).start() for name in UPSTREAMS]
    try:
        # Listener and admin on port 0: each proxy binds its own, /listeners says which.
        boot = envoy_config(0, {u.name: u.port for u in upstreams})
        boot = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            **boot,
        }
        text = yaml.safe_dump(boot, sort_keys=False)
        cases = CASES + KNOWN_DIVERGENCES
        with EnvoyRunner(text) as runner:
            envoy = send_all(runner.listener_port("compat_listener"), cases)
        with ProxydProcess(tmp_path_factory.mktemp("proxyd"), text, concurrency=2) as p:
            proxyd = send_all(p.listener_port("compat_listener"), cases)
            assert len(p.worker_pids()) == 2
        yield Answers(envoy, proxyd)
    finally:
        for u in upstreams:
            u.stop()


def test_at_least_52_cases() -> None:
    assert len(CASES) >= 52
    assert len({c.id for c in CASES + KNOWN_DIVERGENCES}) == len(CASES) + len(KNOWN_DIVERGENCES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_proxyd_answers_like_envoy(answers: Answers, case: RoutingCase) -> None:
    envoy, ours = answers.envoy[case.id], answers.proxyd[case.id]
    assert ours == envoy, "proxyd and Envoy disagree"
    assert ours == (case.status, case.upstream)


# The repeated-header cases are left out of the comparison with Envoy on purpose: Envoy
# 1.40 matches a repeated non-inline header when any one of its values matches, proxyd's
# RouteTable sees the values joined with "," (routing_cases.KNOWN_DIVERGENCES, already
# xfailed against Envoy in test_routing_compat.py). What proxyd must do there is be
# consistent: the running worker routes exactly as its own RouteTable does.
@pytest.mark.parametrize("case", KNOWN_DIVERGENCES, ids=lambda c: c.id)
def test_known_divergences_route_as_route_table_does(answers: Answers, case: RoutingCase) -> None:
    route = RouteTable(epoch_route_config()).match(case.host, case.path, case.joined_headers())
    expected: Answer = (200, route.cluster) if route is not None else (404, None)
    assert answers.proxyd[case.id] == expected
    assert answers.envoy[case.id] == (case.status, case.upstream)  # Envoy's side, for the record
