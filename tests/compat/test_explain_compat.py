"""``proxyctl explain`` on the compat suite's route tables: for every case, the route and
cluster explain names are the ones the request then really took through proxyd.

Two scenarios, one proxyd each: the routing cases (:mod:`tests.compat.routing_cases`:
every route leads to its own cluster, whose upstream names itself in
``x-upstream-name``), and the route-match cases (:mod:`tests.compat.test_route_match_compat`:
query parameters, path_separated_prefix, grpc; every route is a direct_response whose
body names it). Envoy is not needed here: those suites already compare proxyd with it.
The explanation is asked over the control socket as ``proxyctl`` asks it
(:func:`proxyd.ctl.main.request`), without a process per case.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from proxyd.ctl.main import request
from tests.compat import routing_cases as rc
from tests.compat import test_route_match_compat as rm
from tests.support import ProxydProcess, UpstreamServer

pytestmark = pytest.mark.compat

ROUTE_OF_CLUSTER = {cluster: route for _, _, routes in rc.VIRTUAL_HOSTS for route, _, cluster in routes}  # fmt: skip


def explain(p: ProxydProcess, method: str, path: str, headers: list[str]) -> dict[str, Any]:
    reply = request(
        p.control_socket,
        "explain",
        {"method": method, "url": path, "headers": headers, "listener": ""},
    )
    assert reply.ok, reply.error
    return reply.result


@pytest.fixture(scope="module")
def routing_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxydProcess]:
    ups = [UpstreamServer(name).start() for name in rc.UPSTREAMS]
    doc = rc.envoy_config(0, {u.name: u.port for u in ups})
    doc["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
    try:
        text = yaml.safe_dump(doc, sort_keys=False)
        with ProxydProcess(tmp_path_factory.mktemp("explain_routing"), text, concurrency=1) as p:
            yield p
    finally:
        for u in ups:
            u.stop()


@pytest.mark.parametrize("case", [*rc.CASES, *rc.KNOWN_DIVERGENCES], ids=lambda c: c.id)
def test_explain_names_the_route_a_routing_case_took(
    routing_proxy: ProxydProcess, case: rc.RoutingCase
) -> None:
    status, upstream = rc.send(routing_proxy.listener_port("compat_listener"), case)
    doc = explain(
        routing_proxy,
        "GET",
        case.path,
        [f"Host: {case.host}", *(f"{k}: {v}" for k, v in case.headers)],  # fmt: skip
    )
    result = doc["result"]
    if upstream is None:
        assert status == 404
        assert (result["status"], result.get("route")) == (404, None)
    else:
        assert status == 200
        assert (result["route"], result["cluster"]) == (ROUTE_OF_CLUSTER[upstream], upstream)


@pytest.fixture(scope="module")
def match_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxydProcess]:
    with ProxydProcess(tmp_path_factory.mktemp("explain_match"), rm.config(), concurrency=1) as p:
        yield p


def _answer(port: int, method: str, path: str, headers: dict[str, str]) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None, headers=headers)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


MATCH_CASES: list[tuple[str, str, str, str | None]] = [
    *((name, "GET", path, None) for name, path in rm.CASES.items()),
    *((name, "POST", path, ctype) for name, (path, ctype) in rm.GRPC_CASES.items()),
]


@pytest.mark.parametrize("case", MATCH_CASES, ids=lambda c: c[0])
def test_explain_names_the_route_a_match_case_took(
    match_proxy: ProxydProcess, case: tuple[str, str, str, str | None]
) -> None:
    _, method, path, ctype = case
    headers = {"content-type": ctype} if ctype else {}
    status, body = _answer(match_proxy.listener_port("ingress"), method, path, headers)
    doc = explain(match_proxy, method, path, ["Host: compat.test", *(f"{k}: {v}" for k, v in headers.items())])  # fmt: skip
    taken = "fallback" if body == "none" else body  # the fallback route answers "none"
    assert doc["result"]["route"] == taken
    assert doc["result"]["status"] == status
