"""RING_HASH and MAGLEV with RouteAction.hash_policy: real Envoy and real proxyd, one YAML.

Five demo upstreams (``u0`` .. ``u4``) behind four clusters: ``ring`` (RING_HASH, xxHash,
endpoint weights 1 2 1 3 1), ``murmur`` (RING_HASH with MURMUR_HASH_2 and a small ring),
``maglev`` (MAGLEV, Envoy's default table) and ``maglev_w`` (MAGLEV, a small prime table,
the same weights as ``ring``, in the typed ``load_balancing_policy`` form). In the weighted
clusters ``u1`` has an ``envoy.lb`` ``hash_key`` metadata, which is hashed in place of its
address. The routes hash
on a header, a query parameter, a cookie (made by the proxy when missing, with ttl, path
and attributes, or as a session cookie), the client's IP and several policies combined;
two retry every request (each attempt gets a 503) with ``previous_hosts``, so the host that
answers last is the one the hash's further attempts picked. Three health-checked clusters
have dead ports among their hosts (one of them over two priority levels): once both
proxies have failed them, keys must land on healthy hosts only, of the level
``hash % 100`` picks, the same ones in both.

Each proxy gets every key twice; a key must land on one upstream both times, and since
proxyd builds its rings and tables the way Envoy does from the same endpoints, on the same
upstream as in Envoy. A request with no key is balanced at random (any upstream answers).
Nothing here measures speed.
"""

from __future__ import annotations

import http.client
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.support import ProxydProcess, UpstreamServer, free_port, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
MAGLEV_TYPE = "type.googleapis.com/envoy.extensions.load_balancing_policies.maglev.v3.Maglev"
PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)
UPSTREAMS = tuple(f"u{i}" for i in range(5))
WEIGHTS = (1, 2, 1, 3, 1)
KEYS = 60
# Client addresses (all loopback) for the source_ip policy.
SOURCE_IPS = tuple(f"127.0.0.{i}" for i in range(1, 13))


HEALTH_CHECK = {
    "timeout": "0.5s",
    "interval": "0.2s",
    "no_traffic_interval": "0.2s",
    "unhealthy_threshold": 1,
    "healthy_threshold": 1,
    "reuse_connection": False,
    "http_health_check": {"path": "/healthz"},
}


def _endpoint(port: int) -> dict[str, Any]:
    return {
        "endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}
    }


def health_clusters(ports: list[int], dead: list[int]) -> list[dict[str, Any]]:
    """Clusters whose dead ports fail active health checks: ``ring_hc`` and ``maglev_hc``
    (u0..u3 and a dead port, one level), and ``prio_hc`` (RING_HASH; P0: u0 and two dead
    ports, so P0 keeps 46 % of the load and P1, u3 and u4, takes the rest)."""

    def hc(name: str, policy: str, levels: list[list[int]]) -> dict[str, Any]:
        return {
            "name": name,
            "connect_timeout": "1s",
            "lb_policy": policy,
            "health_checks": [HEALTH_CHECK],
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {"priority": i, "lb_endpoints": [_endpoint(p) for p in level]}
                    for i, level in enumerate(levels)
                ],
            },
        }

    return [
        hc("ring_hc", "RING_HASH", [[*ports[:2], dead[0], *ports[2:4]]]),
        hc("maglev_hc", "MAGLEV", [[*ports[:2], dead[0], *ports[2:4]]]),
        hc("prio_hc", "RING_HASH", [[ports[0], dead[0], dead[1]], [ports[3], ports[4]]]),
    ]


def config(ports: list[int], dead: list[int]) -> str:
    def cluster(name: str, weighted: bool, **lb: Any) -> dict[str, Any]:
        endpoints = []
        for i, (port, weight) in enumerate(zip(ports, WEIGHTS, strict=True)):
            ep: dict[str, Any] = {
                "endpoint": {
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}
                }
            }
            if weighted:
                ep["load_balancing_weight"] = weight
                if i == 1:  # hashed by this key in place of its address
                    ep["metadata"] = {"filter_metadata": {"envoy.lb": {"hash_key": "host-one"}}}
            endpoints.append(ep)
        return {
            "name": name,
            "connect_timeout": "1s",
            **lb,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
        }

    def route(prefix: str, cluster_name: str, *policies: dict[str, Any]) -> dict[str, Any]:
        return {
            "match": {"prefix": prefix},
            "route": {"cluster": cluster_name, "hash_policy": list(policies)},
        }

    key_header = {"header": {"header_name": "x-key"}}
    retry = {
        "retry_on": "5xx",
        "num_retries": 2,
        "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.002s"},
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": PREVIOUS_HOSTS},
            }
        ],
        "host_selection_retry_max_attempts": 4,
    }

    def retrying(cluster_name: str) -> dict[str, Any]:
        return {
            "match": {
                "prefix": "/status/",
                "headers": [{"name": "x-lb", "string_match": {"exact": cluster_name}}],
            },
            "route": {"cluster": cluster_name, "hash_policy": [key_header], "retry_policy": retry},
        }

    routes = [
        route("/hc/ring/", "ring_hc", key_header),
        route("/hc/maglev/", "maglev_hc", key_header),
        route("/hc/prio/", "prio_hc", key_header),
        retrying("ring"),
        retrying("maglev_w"),
        route("/h/ring/", "ring", key_header),
        route("/h/murmur/", "murmur", key_header),
        route("/h/maglev/", "maglev", key_header),
        route("/h/maglev_w/", "maglev_w", key_header),
        route("/q/ring/", "ring", {"query_parameter": {"name": "k"}}),
        route("/q/maglev/", "maglev", {"query_parameter": {"name": "k"}}),
        route(
            "/c/ring/",
            "ring",
            {
                "cookie": {
                    "name": "sess",
                    "ttl": "3600s",
                    "path": "/c",
                    "attributes": [{"name": "SameSite", "value": "Lax"}, {"name": "Secure"}],
                }
            },
        ),
        route("/c0/maglev/", "maglev", {"cookie": {"name": "s0", "ttl": "0s"}}),
        route("/cn/ring/", "ring", {"cookie": {"name": "plain"}}),
        route("/ip/ring/", "ring", {"connection_properties": {"source_ip": True}}),
        route("/ip/maglev/", "maglev", {"connection_properties": {"source_ip": True}}),
        route(
            "/m/ring/",
            "ring",
            {"header": {"header_name": "x-a"}},
            {"header": {"header_name": "x-b"}, "terminal": True},
            {"query_parameter": {"name": "k"}},
        ),
        route(
            "/r/ring/",
            "ring",
            {
                "header": {
                    "header_name": "x-key",
                    "regex_rewrite": {
                        "pattern": {"regex": "^k(\\d)\\d*$"},
                        "substitution": "digit-\\1",
                    },
                }
            },
        ),
    ]
    hcm = {
        "@type": HCM,
        "stat_prefix": "ingress_http",
        "route_config": {
            "name": "local",
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                *health_clusters(ports, dead),
                cluster("ring", True, lb_policy="RING_HASH"),
                cluster(
                    "murmur",
                    False,
                    lb_policy="RING_HASH",
                    ring_hash_lb_config={
                        "minimum_ring_size": 64,
                        "maximum_ring_size": 256,
                        "hash_function": "MURMUR_HASH_2",
                    },
                ),
                cluster("maglev", False, lb_policy="MAGLEV"),
                cluster(
                    "maglev_w",
                    True,
                    load_balancing_policy={
                        "policies": [
                            {
                                "typed_extension_config": {
                                    "name": "maglev",
                                    "typed_config": {"@type": MAGLEV_TYPE, "table_size": 251},
                                }
                            }
                        ]
                    },
                ),
            ],
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _key(i: int) -> str:
    return f"k{i * 7919 % 100003}"


# name -> list of (path, headers) cases; the same key in each pass.
def cases() -> dict[str, list[tuple[str, dict[str, str]]]]:
    keys = [_key(i) for i in range(KEYS)]
    return {
        "header_ring": [("/h/ring/x", {"x-key": k}) for k in keys],
        "header_murmur": [("/h/murmur/x", {"x-key": k}) for k in keys],
        "header_maglev": [("/h/maglev/x", {"x-key": k}) for k in keys],
        "header_maglev_weighted": [("/h/maglev_w/x", {"x-key": k}) for k in keys],
        "query_ring": [(f"/q/ring/x?a=1&k={k}&k=other", {}) for k in keys],
        "query_maglev": [(f"/q/maglev/x?k={k}", {}) for k in keys],
        "cookie_ring": [("/c/ring/x", {"cookie": f"a=b; sess={k}; c=d"}) for k in keys],
        "cookie_quoted_maglev": [("/c0/maglev/x", {"cookie": f's0="{k}"'}) for k in keys],
        "combined_ring": [
            ("/m/ring/x?k=q" + k, {"x-a": k, "x-b": k[::-1]}) for k in keys[: KEYS // 2]
        ]
        + [("/m/ring/x?k=" + k, {"x-a": k}) for k in keys[KEYS // 2 :]],
        "regex_rewrite_ring": [("/r/ring/x", {"x-key": k}) for k in keys],
        # No use_remote_address: the trusted client address is x-forwarded-for's last.
        "source_ip_from_xff_ring": [
            ("/ip/ring/x", {"x-forwarded-for": f"192.0.2.1, 10.1.{i // 200}.{i % 200}"})
            for i in range(KEYS)
        ],
        "query_encoded_maglev": [(f"/q/maglev/x?k={k}%20x&k=2", {}) for k in keys],
        # Only healthy hosts, in the level hash % 100 picks.
        "health_ring": [("/hc/ring/x", {"x-key": k}) for k in keys],
        "health_maglev": [("/hc/maglev/x", {"x-key": k}) for k in keys],
        "health_priorities_ring": [("/hc/prio/x", {"x-key": k}) for k in keys],
        # Every attempt fails (503): the last of three attempts answers, its host picked
        # with the key's hash and previous_hosts' further attempts.
        "retries_ring": [("/status/503", {"x-key": k, "x-lb": "ring"}) for k in keys[:30]],
        "retries_maglev": [("/status/503", {"x-key": k, "x-lb": "maglev_w"}) for k in keys[:30]],
    }


@dataclass
class Side:
    # case name -> the upstream of each key, per pass
    picks: dict[str, list[list[str]]]
    by_source_ip: dict[str, list[list[str]]]
    set_cookie: dict[str, list[str]]
    no_key: list[str]


def _read(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


def _get(
    port: int, path: str, headers: dict[str, str], source: str = "127.0.0.1"
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    conn.request("GET", path, headers={"host": "front.example", **headers})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r


def play(port: int) -> Side:
    picks: dict[str, list[list[str]]] = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for name, items in cases().items():
            passes = []
            for _ in range(2):
                got = []
                for path, headers in items:
                    conn.request("GET", path, headers={"host": "front.example", **headers})
                    r = conn.getresponse()
                    r.read()
                    got.append(r.getheader("x-upstream-name") or str(r.status))
                passes.append(got)
            picks[name] = passes
    finally:
        conn.close()
    by_ip: dict[str, list[list[str]]] = {}
    for path in ("/ip/ring/x", "/ip/maglev/x"):
        by_ip[path] = [
            [_get(port, path, {}, ip).getheader("x-upstream-name") or "" for ip in SOURCE_IPS]
            for _ in range(2)
        ]
    set_cookie = {
        path: _get(port, path, {}).headers.get_all("set-cookie") or []
        for path in ("/c/ring/x", "/c0/maglev/x", "/cn/ring/x")
    }
    # An empty cookie counts as none: one is made.
    set_cookie["empty"] = (
        _get(port, "/c/ring/x", {"cookie": "sess="}).headers.get_all("set-cookie") or []
    )
    no_key = [_get(port, "/h/ring/x", {}).getheader("x-upstream-name") or "" for _ in range(5)]
    return Side(picks, by_ip, set_cookie, no_key)


def wait_health_checked(clusters_text: Any, dead: list[int]) -> None:
    """Until every health-checked host has its verdict: dead ports failed, others healthy."""

    def settled() -> bool:
        lines = [x for x in clusters_text().splitlines() if "::health_flags::" in x]
        checked = [x for x in lines if x.split("::", 1)[0].endswith("_hc")]
        return len(checked) == 15 and all(
            x.endswith("/failed_active_hc")
            if any(f":{port}::" in x for port in dead)
            else x.endswith("::healthy")
            for x in checked
        )

    wait_for(settled, timeout=15)


@dataclass
class Results:
    envoy: Side
    proxyd: Side


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    upstreams = [UpstreamServer(n).start() for n in UPSTREAMS]
    try:
        dead = [free_port(), free_port()]
        text = config([u.port for u in upstreams], dead)
        with EnvoyRunner(text) as envoy:
            admin = f"http://127.0.0.1:{envoy.admin_port}/clusters"
            wait_health_checked(lambda: _read(admin), dead)
            envoy_side = play(envoy.listener_port("ingress"))
        with ProxydProcess(tmp_path_factory.mktemp("hashlb"), text, concurrency=2) as p:
            wait_health_checked(lambda: p.admin("/clusters")[1], dead)
            proxyd_side = play(p.listener_port("ingress"))
        yield Results(envoy_side, proxyd_side)
    finally:
        for u in upstreams:
            u.stop()


@pytest.mark.parametrize("name", list(cases()))
def test_a_key_keeps_its_upstream(results: Results, name: str) -> None:
    for side in (results.envoy, results.proxyd):
        first, second = side.picks[name]
        assert first == second
        assert set(first) <= set(UPSTREAMS), first
        # The keys spread: more than one upstream gets some.
        assert len(set(first)) > 1, first


@pytest.mark.parametrize("name", list(cases()))
def test_a_key_picks_the_upstream_envoy_picks(results: Results, name: str) -> None:
    assert results.proxyd.picks[name] == results.envoy.picks[name]


def test_source_ip_picks_like_envoy(results: Results) -> None:
    for path in ("/ip/ring/x", "/ip/maglev/x"):
        e = results.envoy.by_source_ip[path]
        assert e[0] == e[1] and len(set(e[0])) > 1, e
        assert results.proxyd.by_source_ip[path] == e


def _shape(cookie: str) -> str:
    """A Set-Cookie value with the generated value (16 hex digits) masked."""
    return re.sub(r'="[0-9a-f]{16}"', '="<hash>"', cookie)


def test_generated_cookie_is_set_like_envoy(results: Results) -> None:
    e = results.envoy.set_cookie
    p = results.proxyd.set_cookie
    assert [_shape(c) for c in e["/c/ring/x"]] == [
        'sess="<hash>"; Max-Age=3600; Path=/c; SameSite=Lax; Secure; HttpOnly'
    ]
    assert [_shape(c) for c in e["/c0/maglev/x"]] == ['s0="<hash>"; HttpOnly']
    assert e["/cn/ring/x"] == []  # no ttl: no cookie is made
    assert [_shape(c) for c in e["empty"]] == [_shape(c) for c in e["/c/ring/x"]]
    for path in e:
        assert [_shape(c) for c in p[path]] == [_shape(c) for c in e[path]], path


def test_a_request_without_a_key_is_balanced(results: Results) -> None:
    for side in (results.envoy, results.proxyd):
        assert set(side.no_key) <= set(UPSTREAMS) and all(side.no_key), side.no_key


def test_retries_move_off_the_hosts_they_tried(results: Results) -> None:
    """The answer to a retried request comes from another host than the key's own (the
    first attempt's), for most keys, in Envoy and in proxyd alike."""
    for side in (results.envoy, results.proxyd):
        for retried, plain in (
            ("retries_ring", "header_ring"),
            ("retries_maglev", "header_maglev_weighted"),
        ):
            last, first = (
                side.picks[retried][0],
                side.picks[plain][0][: len(side.picks[retried][0])],
            )
            assert sum(a != b for a, b in zip(last, first, strict=True)) > len(last) // 2


def test_health_checked_clusters_use_healthy_hosts_of_both_levels(results: Results) -> None:
    for side in (results.envoy, results.proxyd):
        assert set(side.picks["health_ring"][0]) == {"u0", "u1", "u2", "u3"}
        # P0 (u0 healthy, two dead) keeps 46 % of the keys; P1 (u3, u4) takes the rest.
        prio = side.picks["health_priorities_ring"][0]
        assert set(prio) == {"u0", "u3", "u4"}
        assert 0.2 < prio.count("u0") / len(prio) < 0.7
