"""The health_check HTTP filter: real Envoy and real proxyd on the same YAML.

One listener whose chain has several health_check filters, each taking the requests
one header matcher picks (by path, or by an ``x-hc`` header), then the router:

* not pass-through, with ``cluster_min_healthy_percentages`` over ``svc`` (one live
  host), ``half`` (a live host and a dead port, active health checking marks the dead one
  unhealthy: 50% healthy), ``empty`` (no hosts) and a cluster that does not exist;
* pass-through without cache (every check reaches the upstream) and with ``cache_time``
  (the first check reaches the upstream, the next ones get its status from the proxy).

The node has a cluster name, which every answer to a health check carries in
``x-envoy-upstream-healthchecked-cluster``. Every case runs through Envoy, then through
proxyd (one worker, so one cache), once the ``half`` cluster shows one healthy host on
each; status, body, the headers that matter and whether the upstream was reached must be
equal.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, run_pair
from tests.support import (
    FAST_HEALTH_CHECK,
    UpstreamServer,
    bootstrap,
    free_port,
    http_listener,
    static_cluster,
)

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

HC = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"


def _check(name: str, path: str | None, **fields: Any) -> dict[str, Any]:
    headers = (
        [{"name": ":path", "string_match": {"exact": path}}]
        if path is not None
        else [{"name": "x-hc", "string_match": {"exact": "yes"}}]
    )
    return {"name": name, "typed_config": {"@type": HC, "headers": headers, **fields}}


def config(live: int, dead: int) -> str:
    filters = [
        _check("ok", "/hc/ok", pass_through_mode=False),
        _check(
            "svc",
            "/hc/svc",
            pass_through_mode=False,
            cluster_min_healthy_percentages={"svc": {"value": 100}},
        ),
        _check(
            "half50",
            "/hc/half50",
            pass_through_mode=False,
            cluster_min_healthy_percentages={"half": {"value": 50.9}, "svc": {"value": 1}},
        ),
        _check(
            "half60",
            "/hc/half60",
            pass_through_mode=False,
            cluster_min_healthy_percentages={"half": {"value": 60}},
        ),
        _check(
            "missing",
            "/hc/missing",
            pass_through_mode=False,
            cluster_min_healthy_percentages={"nosuch": {"value": 0}},
        ),
        _check(
            "empty0",
            "/hc/empty0",
            pass_through_mode=False,
            cluster_min_healthy_percentages={"empty": {"value": 0}},
        ),
        _check(
            "empty1",
            "/hc/empty1",
            pass_through_mode=False,
            cluster_min_healthy_percentages={"empty": {"value": 1}},
        ),
        _check("pass", "/echo/pass", pass_through_mode=True),
        _check("cached", "/echo/cached", pass_through_mode=True, cache_time="60s"),
        _check("cached404", "/status/404", pass_through_mode=True, cache_time="60s"),
        _check("byheader", None, pass_through_mode=False),
    ]
    routes = [{"match": {"prefix": "/"}, "route": {"cluster": "svc"}}]
    vhost = {"name": "all", "domains": ["*"], "routes": routes}
    route_config = {"name": "local", "virtual_hosts": [vhost]}
    listener = http_listener("ingress", 0, route_config, filters, stat_prefix="ingress_http")
    clusters = [
        static_cluster("svc", [live]),
        {**static_cluster("half", [live, dead]), "health_checks": [FAST_HEALTH_CHECK]},
        static_cluster("empty", []),
    ]
    doc = bootstrap([listener], clusters, node={"id": "n1", "cluster": "front-proxy"})
    return yaml.safe_dump(doc, sort_keys=False)


# name -> (path, request headers); played in this order (the cache depends on it).
CASES: dict[str, tuple[str, dict[str, str]]] = {
    "plain_request_not_a_check": ("/echo/x", {}),
    "ok": ("/hc/ok", {}),
    "ok_query_is_another_path": ("/hc/ok?x=1", {}),
    "svc_all_healthy": ("/hc/svc", {}),
    "half_at_50": ("/hc/half50", {}),
    "half_below_60": ("/hc/half60", {}),
    "missing_cluster": ("/hc/missing", {}),
    "empty_at_0": ("/hc/empty0", {}),
    "empty_at_1": ("/hc/empty1", {}),
    "pass_through": ("/echo/pass", {}),
    "pass_through_again": ("/echo/pass", {}),
    "cached_first": ("/echo/cached", {}),
    "cached_second": ("/echo/cached", {}),
    "cached_404_first": ("/status/404", {}),
    "cached_404_second": ("/status/404", {}),
    "by_header": ("/echo/h", {"x-hc": "yes"}),
    "by_header_other_value": ("/echo/h", {"x-hc": "no"}),
}
COMPARED = (
    "x-envoy-upstream-healthchecked-cluster",
    "x-upstream-name",
    "content-type",
    "content-length",
)


def play(port: int, path: str, headers: dict[str, str]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        got = {
            "status": r.status,
            "headers": sorted((k.lower(), v) for k, v in r.getheaders() if k.lower() in COMPARED),
        }
        if r.getheader("x-upstream-name"):
            got["headers"] = [h for h in got["headers"] if h[0] != "content-length"]
            got["upstream"] = True
        else:
            got["body"] = body.decode("latin-1")
        return got
    finally:
        conn.close()


def healthy_in_half(stats: Callable[[], dict[str, int]]) -> bool:
    s = stats()
    return (
        s.get("cluster.half.membership_healthy") == 1
        and s.get("cluster.half.membership_total") == 2
    )


def play_all(port: int) -> dict[str, Any]:
    return {name: play(port, *case) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    upstream = UpstreamServer("svc").start()
    try:
        yield run_pair(
            config(upstream.port, free_port()),
            tmp_path_factory.mktemp("hc"),
            lambda port_of: play_all(port_of("ingress")),
            ready=healthy_in_half,
        )
    finally:
        upstream.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_proxyd_answers_health_checks_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    e = results.envoy.replies
    assert "upstream" in e["plain_request_not_a_check"]
    assert e["ok"]["status"] == 200 and "upstream" not in e["ok"]
    assert ("x-envoy-upstream-healthchecked-cluster", "front-proxy") in e["ok"]["headers"]
    assert e["half_at_50"]["status"] == 200 and e["half_below_60"]["status"] == 503
    assert e["missing_cluster"]["status"] == 503
    assert e["empty_at_0"]["status"] == 200 and e["empty_at_1"]["status"] == 503
    assert "upstream" in e["pass_through"] and "upstream" in e["pass_through_again"]
    assert "upstream" in e["cached_first"] and "upstream" not in e["cached_second"]
    assert e["cached_404_second"]["status"] == 404
