"""weighted_clusters and cluster_header: real Envoy and real proxyd on the same YAML.

One bootstrap, one listener, three demo upstreams (``a``, ``b``, ``c``; each answers
``/echo/...`` with what it received). The routes:

* ``/echo/w/``: weighted_clusters a:1, b:3 with ``header_name: x-pick`` (the header's uint64
  value modulo the weights' sum picks the cluster, so these cases are deterministic);
  ``a`` adds request and response headers of its own, ``b`` rewrites the Host; the
  route adds headers too, and both levels overwrite ``x-order`` (Envoy evaluates the
  cluster's before the route's, so the route's value is the one that stays);
* ``/echo/z/``: weighted a:0, b:5 (a weight of 0 is never picked);
* ``/echo/s/``: weighted a:1, b:1, c:2 with no header: random, compared as shares;
* ``/echo/d/``: a route with a ``decorator`` (no tracing: it changes nothing);
* ``/echo/h/``: cluster_header ``x-cluster``: the header names the cluster; missing or
  unknown, Envoy answers without an upstream (``/echo/n/`` and ``/echo/i/``: with the
  status of cluster_not_found_response_code).

Every case runs through Envoy and then proxyd; what the client got (status, body when
no upstream answered, the headers that matter) and what the upstream received (which
upstream, Host, the added headers) must be equal. Nothing here measures speed.
"""

from __future__ import annotations

import http.client
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.support import UpstreamServer, bootstrap, http_listener, static_cluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

UPSTREAMS = ("a", "b", "c")
# Random picks per side for the /echo/s/ shares (a:1, b:1, c:2): at this count the share of
# one cluster has a standard deviation under 0.021, and the tolerance is 0.09.
SPREAD_REQUESTS = 600
SPREAD_TOLERANCE = 0.09


def _add(key: str, value: str, action: str = "APPEND_IF_EXISTS_OR_ADD") -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append_action": action}


def config(ports: dict[str, int]) -> str:
    routes = [
        {
            "match": {"prefix": "/echo/w/"},
            "request_headers_to_add": [
                _add("x-route", "r"),
                _add("x-order", "route", "OVERWRITE_IF_EXISTS_OR_ADD"),
            ],
            "response_headers_to_add": [_add("x-route-resp", "r")],
            "route": {
                "weighted_clusters": {
                    "header_name": "x-pick",
                    "clusters": [
                        {
                            "name": "a",
                            "weight": 1,
                            "request_headers_to_add": [
                                _add("x-wc", "a"),
                                _add("x-order", "cluster", "OVERWRITE_IF_EXISTS_OR_ADD"),
                            ],
                            "request_headers_to_remove": ["x-drop"],
                            "response_headers_to_add": [_add("x-wc-resp", "a")],
                        },
                        {"name": "b", "weight": 3, "host_rewrite_literal": "bee.example"},
                    ],
                }
            },
        },
        {
            "match": {"prefix": "/echo/z/"},
            "route": {
                "weighted_clusters": {
                    "clusters": [{"name": "a", "weight": 0}, {"name": "b", "weight": 5}],
                    "total_weight": 100,  # deprecated: Envoy 1.40 ignores it
                }
            },
        },
        {
            "match": {"prefix": "/echo/s/"},
            "route": {
                "weighted_clusters": {
                    "clusters": [
                        {"name": "a", "weight": 1},
                        {"name": "b", "weight": 1},
                        {"name": "c", "weight": 2},
                    ]
                }
            },
        },
        {"match": {"prefix": "/echo/h/"}, "route": {"cluster_header": "x-cluster"}},
        {
            "match": {"prefix": "/echo/d/"},
            "decorator": {"operation": "op", "propagate": True},
            "route": {"cluster": "c"},
        },
        {
            "match": {"prefix": "/echo/n/"},
            "route": {
                "cluster_header": "x-cluster",
                "cluster_not_found_response_code": "NOT_FOUND",
            },
        },
        {
            "match": {"prefix": "/echo/i/"},
            "route": {
                "cluster_header": "x-cluster",
                "cluster_not_found_response_code": "INTERNAL_SERVER_ERROR",
            },
        },
    ]
    vhost = {"name": "all", "domains": ["*"], "routes": routes}
    listener = http_listener(
        "ingress", 0, {"name": "local", "virtual_hosts": [vhost]}, stat_prefix="ingress_http"
    )
    clusters = [static_cluster(n, [ports[n]]) for n in UPSTREAMS]
    return yaml.safe_dump(bootstrap([listener], clusters), sort_keys=False)


# name -> (path, request headers)
CASES: dict[str, tuple[str, dict[str, str]]] = {
    "pick_0_is_a": ("/echo/w/0", {"x-pick": "0", "x-drop": "gone"}),
    "pick_1_is_b": ("/echo/w/1", {"x-pick": "1", "x-drop": "kept"}),
    "pick_3_is_b": ("/echo/w/3", {"x-pick": "3"}),
    "pick_4_wraps_to_a": ("/echo/w/4", {"x-pick": "4"}),
    "pick_8_is_a": ("/echo/w/8", {"x-pick": "8", "x-order": "client"}),
    "pick_uint64_max": ("/echo/w/max", {"x-pick": str((1 << 64) - 1)}),
    "pick_large_a": ("/echo/w/large", {"x-pick": "1000000000000"}),
    "zero_weight_never": ("/echo/z/1", {}),
    "zero_weight_never_again": ("/echo/z/2", {"x-pick": "0"}),
    "cluster_header_a": ("/echo/h/a", {"x-cluster": "a"}),
    "cluster_header_c": ("/echo/h/c", {"x-cluster": "c"}),
    "cluster_header_b_path": ("/echo/h/b/deeper?q=1", {"x-cluster": "b"}),
    "cluster_header_unknown": ("/echo/h/nope", {"x-cluster": "nope"}),
    "cluster_header_wrong_case": ("/echo/h/A", {"x-cluster": "A"}),
    "cluster_header_missing": ("/echo/h/none", {}),
    "cluster_header_empty": ("/echo/h/empty", {"x-cluster": ""}),
    "not_found_code_404": ("/echo/n/x", {"x-cluster": "nope"}),
    "not_found_code_404_found": ("/echo/n/a", {"x-cluster": "a"}),
    "not_found_code_500": ("/echo/i/x", {}),
    "decorator_no_tracing": ("/echo/d/x", {"x-envoy-decorator-operation": "client"}),
    "decorator_no_header": ("/echo/d/y", {}),
}

# Response headers a client may see that the cases compare (the rest vary: date,
# x-envoy-upstream-service-time, content-length of the echo).
COMPARED = ("x-upstream-name", "x-wc-resp", "x-route-resp", "server", "content-type")
# What the upstream received that the cases compare.
ECHOED = (
    "host", "x-wc", "x-route", "x-order", "x-drop", "x-pick", "x-cluster",
    "x-envoy-decorator-operation",
)  # fmt: skip


def play(port: int, path: str, headers: dict[str, str]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"host": "front.example", **headers})
        r = conn.getresponse()
        body = r.read()
        got: dict[str, Any] = {
            "status": r.status,
            "headers": sorted((k.lower(), v) for k, v in r.getheaders() if k.lower() in COMPARED),
        }
        if r.getheader("x-upstream-name"):
            echo = json.loads(body)
            seen = {k: v for k, v in echo["headers"] if k in ECHOED}
            got["upstream"] = {"name": echo["upstream"], "path": echo["path"], "headers": seen}
        else:
            got["body"] = body.decode("latin-1")
        return got
    finally:
        conn.close()


def spread(port: int) -> dict[str, float]:
    """Shares of /echo/s/ requests per upstream, on one keep-alive connection."""
    got: Counter[str] = Counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for i in range(SPREAD_REQUESTS):
            conn.request("GET", f"/echo/s/{i}")
            r = conn.getresponse()
            r.read()
            got[r.getheader("x-upstream-name") or str(r.status)] += 1
    finally:
        conn.close()
    return {k: v / SPREAD_REQUESTS for k, v in got.items()}


def play_all(port_of: PortOf) -> dict[str, Any]:
    port = port_of("ingress")
    return {
        "cases": {name: play(port, *case) for name, case in CASES.items()},
        "shares": spread(port),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    upstreams = {n: UpstreamServer(n).start() for n in UPSTREAMS}
    try:
        text = config({n: u.port for n, u in upstreams.items()})
        yield run_pair(text, tmp_path_factory.mktemp("weighted"), play_all)
    finally:
        for u in upstreams.values():
            u.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_proxyd_routes_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies["cases"][name] == results.envoy.replies["cases"][name]


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    """The facts the cases were written from, checked on Envoy itself (so the equality
    above compares something that varies)."""
    e = results.envoy.replies["cases"]

    def upstream(name: str) -> str:
        return str(e[name]["upstream"]["name"])

    assert [upstream(n) for n in ("pick_0_is_a", "pick_1_is_b", "pick_3_is_b")] == ["a", "b", "b"]
    assert upstream("pick_4_wraps_to_a") == "a" and upstream("pick_8_is_a") == "a"
    assert upstream("pick_uint64_max") == "b"  # (2**64 - 1) % 4 == 3
    assert upstream("pick_large_a") == "a"  # 10**12 % 4 == 0
    a_seen = e["pick_0_is_a"]["upstream"]["headers"]
    assert a_seen["x-wc"] == "a" and a_seen["x-route"] == "r" and "x-drop" not in a_seen
    assert a_seen["x-order"] == "route"  # the route's evaluated after the cluster's
    assert e["pick_1_is_b"]["upstream"]["headers"]["host"] == "bee.example"
    assert e["pick_1_is_b"]["upstream"]["headers"]["x-drop"] == "kept"
    assert ("x-wc-resp", "a") in e["pick_0_is_a"]["headers"]
    assert ("x-wc-resp", "a") not in e["pick_1_is_b"]["headers"]
    assert upstream("zero_weight_never") == "b" and upstream("zero_weight_never_again") == "b"
    assert upstream("cluster_header_c") == "c"
    assert e["cluster_header_b_path"]["upstream"]["path"] == "/echo/h/b/deeper?q=1"
    for name in ("unknown", "wrong_case", "missing", "empty"):
        assert "upstream" not in e[f"cluster_header_{name}"], name
        assert e[f"cluster_header_{name}"]["status"] == 503, name
    assert e["not_found_code_404"]["status"] == 404 and e["not_found_code_500"]["status"] == 500
    assert upstream("not_found_code_404_found") == "a"
    # No tracing: a route's decorator changes nothing; the client's header goes on.
    seen = e["decorator_no_tracing"]["upstream"]["headers"]
    assert seen["x-envoy-decorator-operation"] == "client"
    assert "x-envoy-decorator-operation" not in e["decorator_no_header"]["upstream"]["headers"]


def test_random_picks_follow_the_weights(results: Pair) -> None:
    expected = {"a": 0.25, "b": 0.25, "c": 0.5}
    for side in (results.envoy, results.proxyd):
        shares = side.replies["shares"]
        assert set(shares) == set(expected), shares
        for name, share in expected.items():
            assert abs(shares[name] - share) <= SPREAD_TOLERANCE, shares
