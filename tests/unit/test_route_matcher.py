"""VirtualHost.matcher: what the config layer refuses, and the compiled tree's choices
without sockets (the compat test compares the same shapes with real Envoy)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proxyd.config import compile_bootstrap
from proxyd.epoch import (
    Route,
    RouteConfig,
    RouteMatch,
    RouteMatchEntry,
    RouteMatcher,
    RouteOnMatch,
    RoutePredicate,
    StringMatch,
    VirtualHost,
)
from proxyd.errors import ConfigError
from proxyd.protocol.route_explain import explain_match
from proxyd.protocol.routing import RouteTable
from tests.unit.test_config_errors import BASE, hcm

ROUTE = "type.googleapis.com/envoy.config.route.v3.Route"
HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
MATCHER_PATH = (
    "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
    ".route_config.virtual_hosts[0].matcher"
)


def header_input(name: str, type_url: str = HEADER_INPUT) -> dict[str, Any]:
    return {"name": "in", "typed_config": {"@type": type_url, "header_name": name}}


def to(cluster: str) -> dict[str, Any]:
    return {
        "action": {
            "name": "a",
            "typed_config": {
                "@type": ROUTE,
                "match": {"prefix": ""},
                "route": {"cluster": cluster},
            },
        }
    }


def with_matcher(matcher: dict[str, Any], keep_routes: bool = False) -> dict[str, Any]:
    d = copy.deepcopy(BASE)
    vh = hcm(d)["route_config"]["virtual_hosts"][0]
    cluster = d["static_resources"]["clusters"][0]["name"]
    if not keep_routes:
        del vh["routes"]
    vh["matcher"] = matcher

    def fill(x: Any) -> Any:  # the base config's cluster name in every action
        if isinstance(x, dict):
            return {k: (cluster if k == "cluster" and v == "C" else fill(v)) for k, v in x.items()}
        if isinstance(x, list):
            return [fill(v) for v in x]
        return x

    vh["matcher"] = fill(matcher)
    return d


def reject(d: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(d, "conf.yaml")
    return info.value


def tree(name: str, **more: Any) -> dict[str, Any]:
    return {
        "matcher_tree": {"input": header_input(name), "exact_match_map": {"map": {"/": to("C")}}},
        **more,
    }


def test_a_tree_compiles_into_the_virtual_host() -> None:
    epoch = compile_bootstrap(with_matcher(tree(":path", on_no_match=to("C"))), "conf.yaml")
    vh = epoch.epoch_template.listeners[0].hcm.route_config.virtual_hosts[0]  # type: ignore[union-attr]
    assert vh.matcher is not None and vh.matcher.kind == "exact"
    assert vh.matcher.input == ":path"
    assert len(vh.routes) == 2  # the map's action and on_no_match's


def test_routes_and_matcher_together_are_refused() -> None:
    err = reject(with_matcher(tree(":path"), keep_routes=True))
    assert err.path.endswith("virtual_hosts[0].matcher")
    assert "only one of routes or matcher" in err.reason


def test_an_input_other_than_a_request_header_is_refused() -> None:
    m = tree(":path")
    m["matcher_tree"]["input"] = header_input(
        "x", "type.googleapis.com/envoy.type.matcher.v3.HttpResponseHeaderMatchInput"
    )
    err = reject(with_matcher(m))
    assert err.path == f"{MATCHER_PATH}.matcher_tree.input"
    assert "not supported by proxyd" in err.reason


def test_a_pseudo_header_routing_does_not_see_is_refused() -> None:
    err = reject(with_matcher(tree(":method")))
    assert "header :method is not supported by proxyd" in err.reason


def test_custom_match_and_keep_matching_are_refused_by_name() -> None:
    m = {
        "matcher_tree": {
            "input": header_input(":path"),
            "custom_match": {"name": "x", "typed_config": {"@type": HEADER_INPUT}},
        }
    }
    assert reject(with_matcher(m)).path == f"{MATCHER_PATH}.matcher_tree.custom_match"
    m = tree(":path")
    m["matcher_tree"]["exact_match_map"]["map"]["/"]["keep_matching"] = True
    assert reject(with_matcher(m)).reason == "field not supported by proxyd"


def _route(name: str, prefix: str = "") -> Route:
    return Route(name=name, match=RouteMatch("prefix", prefix), cluster=name)


def _table(matcher: RouteMatcher, routes: tuple[Route, ...]) -> RouteTable:
    vh = VirtualHost("v", ("*",), routes, matcher)
    return RouteTable(RouteConfig("rc", (vh,)))


def test_longest_prefix_first_and_shorter_when_nested_finds_nothing() -> None:
    nested = RouteMatcher(
        "exact", "x-k", (RouteMatchEntry("yes", None, RouteOnMatch(routes=(2,))),)
    )
    m = RouteMatcher(
        "prefix",
        ":path",
        (
            RouteMatchEntry("/a/", None, RouteOnMatch(routes=(0,))),
            RouteMatchEntry("/a/b/", None, RouteOnMatch(matcher=nested)),
            RouteMatchEntry("/z/", None, RouteOnMatch(routes=(1,))),
        ),
    )
    table = _table(m, (_route("short"), _route("own", "/z/only"), _route("nested")))
    assert table.needed_headers >= {"x-k"}
    assert table.match("h", "/a/b/c", {"x-k": "yes"}).name == "nested"  # type: ignore[union-attr]
    assert table.match("h", "/a/b/c", {}).name == "short"  # type: ignore[union-attr]
    # The action's route must match on its own; no fallback after that.
    assert table.match("h", "/z/other", {}) is None
    assert table.match("h", "/z/only/1", {}).name == "own"  # type: ignore[union-attr]
    assert table.match("h", "/q", {}) is None


def test_list_predicates_and_or_not() -> None:
    def single(name: str, kind: str, value: str) -> RoutePredicate:
        return RoutePredicate("single", name, StringMatch(kind, value))

    both = RoutePredicate(
        "and",
        children=(
            single("x-a", "exact", "1"),
            RoutePredicate("not", children=(single("x-b", "prefix", "n"),)),
        ),
    )
    m = RouteMatcher(
        "list",
        "",
        (RouteMatchEntry("", both, RouteOnMatch(routes=(0,))),),
        on_no_match=RouteOnMatch(routes=(1,)),
    )
    table = _table(m, (_route("both"), _route("else")))
    assert table.match("h", "/", {"x-a": "1"}).name == "both"  # type: ignore[union-attr]
    assert table.match("h", "/", {"x-a": "1", "x-b": "no"}).name == "else"  # type: ignore[union-attr]
    assert table.match("h", "/", {}).name == "else"  # type: ignore[union-attr]


def test_explain_names_the_route_the_tree_chose() -> None:
    m = RouteMatcher(
        "exact",
        "x-k",
        (RouteMatchEntry("yes", None, RouteOnMatch(routes=(1,))),),
        on_no_match=RouteOnMatch(routes=(0,)),
    )
    table = _table(m, (_route("fallback", "/only"), _route("keyed")))
    got = explain_match(table, "h", "/p", {"x-k": "yes"})
    assert (got["route"], got["route_index"]) == ("keyed", 1)
    assert "matcher" in got["routes"][0]["reason"]
    missed = explain_match(table, "h", "/p", {})
    assert missed["route"] is None and missed["routes"][0]["verdict"] == "no"
