"""VirtualHost.matcher (Envoy's generic matching API in place of a route list), proxyd
beside real Envoy on the same YAML.

Three virtual hosts: a ``matcher_tree`` on ``:path`` with a prefix map (nested trees,
a RouteList, a route whose own match fails, on_no_match), a ``matcher_list`` of
and/or/not predicates over headers (a nested matcher that finds nothing), and an exact
map on ``:path`` (a query string is part of it). Each case compares the status, which
upstream answered and the path it saw (rewrites apply as on any route).
"""

from __future__ import annotations

import http.client
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

ROUTE = "type.googleapis.com/envoy.config.route.v3.Route"
ROUTE_LIST = "type.googleapis.com/envoy.config.route.v3.RouteList"
HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
NAMES = ("a", "b", "c", "d")


def header_input(name: str) -> dict[str, Any]:
    return {"name": "header", "typed_config": {"@type": HEADER_INPUT, "header_name": name}}


def to(cluster: str, prefix: str = "", **route: Any) -> dict[str, Any]:
    """An on_match whose action is one Route (its own match: ``prefix``)."""
    return {
        "action": {
            "name": f"to-{cluster}",
            "typed_config": {
                "@type": ROUTE,
                "match": {"prefix": prefix},
                "route": {"cluster": cluster, **route},
            },
        }
    }


def single(name: str, **string_match: Any) -> dict[str, Any]:
    return {"single_predicate": {"input": header_input(name), "value_match": string_match}}


TREE = {
    "matcher_tree": {
        "input": header_input(":path"),
        "prefix_match_map": {
            "map": {
                "/api/": {
                    "matcher": {
                        "matcher_tree": {
                            "input": header_input("x-version"),
                            "exact_match_map": {"map": {"v1": to("a"), "v2": to("b")}},
                        },
                        "on_no_match": to("c"),
                    }
                },
                "/api/special/": to("d", "/api/special/only"),
                "/api/nested/": {
                    "matcher": {
                        "matcher_tree": {
                            "input": header_input("x-nested"),
                            "exact_match_map": {"map": {"yes": to("d")}},
                        }
                    }
                },
                "/static/": {
                    "action": {
                        "name": "static",
                        "typed_config": {
                            "@type": ROUTE_LIST,
                            "routes": [
                                {
                                    "match": {"prefix": "/static/img"},
                                    "route": {"cluster": "a", "prefix_rewrite": "/images"},
                                },
                                {"match": {"prefix": "/static/"}, "route": {"cluster": "b"}},
                            ],
                        },
                    }
                },
            }
        },
    },
    "on_no_match": {
        "action": {
            "name": "none",
            "typed_config": {
                "@type": ROUTE,
                "match": {"prefix": ""},
                "direct_response": {"status": 418, "body": {"inline_string": "no match\n"}},
            },
        }
    },
}

LIST = {
    "matcher_list": {
        "matchers": [
            {
                "predicate": {
                    "and_matcher": {
                        "predicate": [
                            single("x-a", exact="1"),
                            {"not_matcher": single("x-b", prefix="no")},
                        ]
                    }
                },
                "on_match": to("a"),
            },
            {
                "predicate": {
                    "or_matcher": {
                        "predicate": [
                            single(":path", safe_regex={"google_re2": {}, "regex": "^/r/[0-9]+$"}),
                            single("x-c", suffix="yes"),
                        ]
                    }
                },
                "on_match": to("b"),
            },
            {
                "predicate": single("x-d", contains="mid"),
                "on_match": {
                    "matcher": {
                        "matcher_tree": {
                            "input": header_input("x-e"),
                            "exact_match_map": {"map": {"k": to("c")}},
                        }
                    }
                },
            },
            {"predicate": single("x-d", contains="id"), "on_match": to("d")},
            {"predicate": single("x-f", exact="UP", ignore_case=True), "on_match": to("a")},
        ]
    },
    "on_no_match": to("d", "/fallback"),
}

EXACT = {
    "matcher_tree": {
        "input": header_input(":path"),
        "exact_match_map": {"map": {"/one": to("a"), "/two?x=1": to("b")}},
    },
    "on_no_match": to("c"),
}


def config(ports: dict[str, int]) -> str:
    route_config = {
        "name": "local",
        "virtual_hosts": [
            {"name": "tree", "domains": ["tree.example"], "matcher": TREE},
            {"name": "list", "domains": ["list.example"], "matcher": LIST},
            {"name": "exact", "domains": ["exact.example"], "matcher": EXACT},
        ],
    }
    doc = bootstrap(
        [http_listener("ingress", 0, route_config, stat_prefix="ingress_http")],
        [static_cluster(n, [ports[n]]) for n in NAMES],
    )
    return yaml.safe_dump(doc, sort_keys=False)


# name: (host, path, headers)
CASES: dict[str, tuple[str, str, dict[str, str]]] = {
    "tree_api_v1": ("tree.example", "/api/x", {"x-version": "v1"}),
    "tree_api_v2": ("tree.example", "/api/x", {"x-version": "v2"}),
    "tree_api_other_version": ("tree.example", "/api/x", {"x-version": "v3"}),
    "tree_api_no_version": ("tree.example", "/api/x", {}),
    "tree_special_own_match": ("tree.example", "/api/special/only/1", {}),
    "tree_special_own_match_fails": ("tree.example", "/api/special/other", {"x-version": "v1"}),
    "tree_nested_match": ("tree.example", "/api/nested/1", {"x-nested": "yes"}),
    "tree_nested_no_match_falls_back": ("tree.example", "/api/nested/1", {"x-version": "v2"}),
    "tree_nested_nothing": ("tree.example", "/api/nested/1", {}),
    "tree_static_img_rewritten": ("tree.example", "/static/img/cat.png", {}),
    "tree_static_other": ("tree.example", "/static/css/site.css", {}),
    "tree_no_prefix": ("tree.example", "/elsewhere", {}),
    "tree_prefix_is_case_sensitive": ("tree.example", "/API/x", {"x-version": "v1"}),
    "tree_query_in_path": ("tree.example", "/api/?q=1", {"x-version": "v2"}),
    "list_and": ("list.example", "/p", {"x-a": "1"}),
    "list_and_not_fails": ("list.example", "/p", {"x-a": "1", "x-b": "nope"}),
    "list_or_regex": ("list.example", "/r/42", {}),
    "list_or_regex_with_query": ("list.example", "/r/42?x=1", {}),
    "list_or_suffix": ("list.example", "/p", {"x-c": "say-yes"}),
    "list_nested_match": ("list.example", "/p", {"x-d": "amidst", "x-e": "k"}),
    "list_nested_no_match_next": ("list.example", "/p", {"x-d": "amidst"}),
    "list_contains": ("list.example", "/p", {"x-d": "valid"}),
    "list_ignore_case": ("list.example", "/p", {"x-f": "up"}),
    "list_fallback_own_match": ("list.example", "/fallback/x", {}),
    "list_fallback_fails": ("list.example", "/p", {}),
    "exact_one": ("exact.example", "/one", {}),
    "exact_one_with_query": ("exact.example", "/one?y=2", {}),
    "exact_two_with_query": ("exact.example", "/two?x=1", {}),
    "exact_two_without_query": ("exact.example", "/two", {}),
    "exact_other": ("exact.example", "/three", {}),
}


def play(port: int, host: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"host": host, **headers})
        r = conn.getresponse()
        return {
            "status": r.status,
            "upstream": r.getheader("x-upstream-name"),
            "body": r.read().decode("latin-1"),
        }
    finally:
        conn.close()


def play_all(port_of: PortOf) -> dict[str, Any]:
    port = port_of("ingress")
    return {name: play(port, *case) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    upstreams = {n: UpstreamServer(n).start() for n in NAMES}
    try:
        ports = {n: u.port for n, u in upstreams.items()}
        yield run_pair(config(ports), tmp_path_factory.mktemp("matcher"), play_all)
    finally:
        for u in upstreams.values():
            u.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_proxyd_routes_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    """The cases exercise what they are named for (so a silent 404 everywhere fails)."""
    e = results.envoy.replies
    assert (e["tree_api_v1"]["upstream"], e["tree_api_v2"]["upstream"]) == ("a", "b")
    assert e["tree_api_no_version"]["upstream"] == "c"
    assert e["tree_static_img_rewritten"]["upstream"] == "a"
    assert "/images/cat.png" in e["tree_static_img_rewritten"]["body"]
    assert e["tree_no_prefix"]["status"] == 418
    assert e["list_and"]["upstream"] == "a" and e["list_or_regex"]["upstream"] == "b"
    assert e["list_contains"]["upstream"] == "d"
    assert e["exact_one"]["upstream"] == "a" and e["exact_other"]["upstream"] == "c"
