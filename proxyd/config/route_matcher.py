"""An xds.type.matcher.v3.Matcher over a request → proxyd.epoch.RouteMatcher.

Two users: VirtualHost.matcher, whose actions are routes, and the HTTP filters'
ExtensionWithMatcher (proxyd.config.http_filters), whose actions are SkipFilter and the
composite filter's ExecuteFilterAction. The allow-list (proxyd.config.supported,
``matcher_spec``) has already refused every field this does not read: matcher_tree on
HttpRequestHeaderMatchInput with exact_match_map or prefix_match_map, matcher_list with
single/and/or/not predicates whose value_match is a StringMatcher, on_no_match, nested
matchers, and the user's action types. Each action is compiled by the caller's
``on_action(type_name, message, path)``, which returns the indexes the epoch keeps for it
(the routes of a Route or RouteList action, compiled by the same code as the virtual
host's ``routes``; a filter action's place in the filter's action table).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxyd.config.matchers import string_match
from proxyd.config.proto import join, unpack
from proxyd.epoch import RouteMatchEntry, RouteMatcher, RouteOnMatch, RoutePredicate
from proxyd.errors import ConfigError

ROUTE_TYPE = "envoy.config.route.v3.Route"
ROUTE_LIST_TYPE = "envoy.config.route.v3.RouteList"
HEADER_INPUT_TYPE = "envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
# The pseudo-headers a route can see (the others are not routing inputs in proxyd).
_PSEUDO = (":path", ":authority")

AddRoute = Callable[[Any, str], int]
OnAction = Callable[[str, Any, str], tuple[int, ...]]


def route_actions(add_route: AddRoute, file: str) -> OnAction:
    """VirtualHost.matcher's actions: a Route, or a RouteList's routes (tried in order)."""

    def on_action(type_name: str, action: Any, here: str) -> tuple[int, ...]:
        if type_name == ROUTE_TYPE:
            return (add_route(action, here),)
        if type_name == ROUTE_LIST_TYPE:
            return tuple(
                add_route(r, f"{join(here, 'routes')}[{i}]") for i, r in enumerate(action.routes)
            )
        raise ConfigError(file, here, f"route action {type_name} not supported by proxyd")

    return on_action


def compile_matcher(m: Any, path: str, file: str, on_action: OnAction) -> RouteMatcher:
    on_no_match = (
        _on_match(m.on_no_match, join(path, "on_no_match"), file, on_action)
        if m.HasField("on_no_match")
        else None
    )
    if m.HasField("matcher_tree"):
        tree = m.matcher_tree
        here = join(path, "matcher_tree")
        header = _input(tree.input, join(here, "input"), file)
        if tree.HasField("exact_match_map"):
            kind, table, where = "exact", tree.exact_match_map.map, "exact_match_map.map"
        elif tree.HasField("prefix_match_map"):
            kind, table, where = "prefix", tree.prefix_match_map.map, "prefix_match_map.map"
        else:
            raise ConfigError(
                file, here, "a matcher_tree needs exact_match_map or prefix_match_map"
            )
        entries = tuple(
            RouteMatchEntry(
                key, None, _on_match(table[key], f"{join(here, where)}[{key!r}]", file, on_action)
            )
            for key in sorted(table)
        )
        return RouteMatcher(kind, header, entries, on_no_match)
    if m.HasField("matcher_list"):
        here = join(path, "matcher_list.matchers")
        items = []
        for i, fm in enumerate(m.matcher_list.matchers):
            at = f"{here}[{i}]"
            predicate = _predicate(fm.predicate, join(at, "predicate"), file)
            items.append(
                RouteMatchEntry(
                    "", predicate, _on_match(fm.on_match, join(at, "on_match"), file, on_action)
                )
            )
        return RouteMatcher("list", "", tuple(items), on_no_match)
    raise ConfigError(file, path, "a matcher needs matcher_tree or matcher_list")


def _on_match(om: Any, path: str, file: str, on_action: OnAction) -> RouteOnMatch:
    if om.HasField("matcher"):
        return RouteOnMatch(
            matcher=compile_matcher(om.matcher, join(path, "matcher"), file, on_action)
        )
    if not om.HasField("action"):
        raise ConfigError(file, path, "an on_match needs a matcher or an action")
    here = join(path, "action.typed_config")
    action = unpack(om.action.typed_config)
    assert action is not None  # the allow-list took only the two known types
    type_name = om.action.typed_config.type_url.rsplit("/", 1)[-1]
    return RouteOnMatch(routes=on_action(type_name, action, here))


def _input(inp: Any, path: str, file: str) -> str:
    type_name = inp.typed_config.type_url.rsplit("/", 1)[-1]
    if type_name != HEADER_INPUT_TYPE:
        raise ConfigError(file, path, f"matcher input {type_name} not supported by proxyd")
    header_input = unpack(inp.typed_config)
    assert header_input is not None  # the allow-list took only the known type
    name = header_input.header_name.lower()
    if name.startswith(":") and name not in _PSEUDO:
        raise ConfigError(
            file,
            join(path, "typed_config.header_name"),
            f"header {name} is not supported by proxyd as a matcher input "
            f"(supported pseudo-headers: {', '.join(_PSEUDO)})",
        )
    return name


def _predicate(p: Any, path: str, file: str) -> RoutePredicate:
    kind = p.WhichOneof("match_type")
    if kind == "single_predicate":
        sp = p.single_predicate
        here = join(path, "single_predicate")
        if not sp.HasField("value_match"):
            raise ConfigError(file, here, "custom_match is not supported by proxyd")
        return RoutePredicate(
            "single",
            _input(sp.input, join(here, "input"), file),
            string_match(sp.value_match, join(here, "value_match"), file),
        )
    if kind in ("or_matcher", "and_matcher"):
        children = tuple(
            _predicate(c, f"{join(path, kind)}.predicate[{i}]", file)
            for i, c in enumerate(getattr(p, kind).predicate)
        )
        return RoutePredicate("and" if kind == "and_matcher" else "or", children=children)
    if kind == "not_matcher":
        return RoutePredicate("not", children=(_predicate(p.not_matcher, join(path, kind), file),))
    raise ConfigError(
        file,
        path,
        "a predicate needs one of single_predicate, or_matcher, and_matcher, not_matcher",
    )
