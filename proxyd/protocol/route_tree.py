"""A virtual host's ``matcher`` (Envoy's generic matching API over a request), compiled.

Envoy lets a virtual host name its routes through an ``xds.type.matcher.v3.Matcher``
instead of a list tried in order: a ``matcher_tree`` looks one request header up in an
``exact_match_map`` (a dict lookup) or a ``prefix_match_map`` (the longest matching
prefix first; when what it leads to does not match, the next shorter one), a
``matcher_list`` takes the first predicate that holds, each may nest another matcher,
and ``on_no_match`` is the fallback. An action is a Route (or a RouteList, whose routes
are tried in order); the route's own ``match`` must still hold, else the request has no
route (404), as in Envoy.

:class:`RouteTree` evaluates the epoch's :class:`proxyd.epoch.RouteMatcher`; the routes
themselves are matched by :class:`proxyd.protocol.routing.RouteTable`, which hands in
``route_at(index, ...)`` (no import back from here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from proxyd.epoch import RouteMatcher, RouteOnMatch, RoutePredicate, StringMatch

if TYPE_CHECKING:
    from proxyd.epoch import Route

# route_at(index, host, path, bare, headers): the route at ``index`` if its own match
# holds, else None.
RouteAt = Callable[[int, str, str, str, dict[str, str]], "Route | None"]
_Test = Callable[[str], bool]

# What evaluating a node gives when nothing in it matched (None is "matched an action
# whose routes did not match": no route, no fallback).
_NO_MATCH = object()


class _Node:
    __slots__ = ("kind", "input", "exact", "prefixes", "items", "on_no_match")

    def __init__(self, m: RouteMatcher, compile_string: Callable[[StringMatch], _Test]) -> None:
        self.kind = m.kind
        self.input = m.input
        self.exact: dict[str, _OnMatch] = {}
        # Longest prefix first.
        self.prefixes: tuple[tuple[str, _OnMatch], ...] = ()
        self.items: tuple[tuple[_Predicate, _OnMatch], ...] = ()
        if m.kind == "exact":
            self.exact = {e.key: _OnMatch(e.on_match, compile_string) for e in m.entries}
        elif m.kind == "prefix":
            self.prefixes = tuple(
                sorted(
                    ((e.key, _OnMatch(e.on_match, compile_string)) for e in m.entries),
                    key=lambda kv: len(kv[0]),
                    reverse=True,
                )
            )
        else:
            self.items = tuple(
                (
                    _Predicate(e.predicate, compile_string),
                    _OnMatch(e.on_match, compile_string),
                )
                for e in m.entries
                if e.predicate is not None
            )
        self.on_no_match = (
            _OnMatch(m.on_no_match, compile_string) if m.on_no_match is not None else None
        )

    def evaluate(self, req: _Request) -> object:
        """An action's route (or None: its routes did not match), or _NO_MATCH."""
        kind = self.kind
        if kind == "exact":
            value = req.value(self.input)
            if value is not None:
                om = self.exact.get(value)
                if om is not None:
                    result = om.evaluate(req)
                    if result is not _NO_MATCH:
                        return result
        elif kind == "prefix":
            value = req.value(self.input)
            if value is not None:
                for prefix, om in self.prefixes:
                    if value.startswith(prefix):
                        result = om.evaluate(req)
                        if result is not _NO_MATCH:
                            return result
        else:
            for predicate, om in self.items:
                if predicate.holds(req):
                    result = om.evaluate(req)
                    if result is not _NO_MATCH:
                        return result
        if self.on_no_match is not None:
            return self.on_no_match.evaluate(req)
        return _NO_MATCH


class _OnMatch:
    __slots__ = ("matcher", "routes")

    def __init__(self, om: RouteOnMatch, compile_string: Callable[[StringMatch], _Test]) -> None:
        self.matcher = _Node(om.matcher, compile_string) if om.matcher is not None else None
        self.routes = om.routes

    def evaluate(self, req: _Request) -> object:
        if self.matcher is not None:
            return self.matcher.evaluate(req)
        for index in self.routes:
            route = req.route_at(index, req.host, req.path, req.bare, req.headers)
            if route is not None:
                return route
        return None


class _Predicate:
    __slots__ = ("kind", "input", "test", "children")

    def __init__(self, p: RoutePredicate, compile_string: Callable[[StringMatch], _Test]) -> None:
        self.kind = p.kind
        self.input = p.input
        self.test: _Test | None = compile_string(p.match) if p.match is not None else None
        self.children = tuple(_Predicate(c, compile_string) for c in p.children)

    def holds(self, req: _Request) -> bool:
        kind = self.kind
        if kind == "single":
            value = req.value(self.input)
            # No value (a header the request lacks): the predicate does not hold.
            return value is not None and self.test is not None and bool(self.test(value))
        if kind == "and":
            return all(c.holds(req) for c in self.children)
        if kind == "or":
            return any(c.holds(req) for c in self.children)
        return not self.children[0].holds(req)  # "not"


class _Request:
    __slots__ = ("host", "path", "bare", "headers", "route_at")

    def __init__(
        self, host: str, path: str, bare: str, headers: dict[str, str], route_at: RouteAt
    ) -> None:
        self.host, self.path, self.bare, self.headers = host, path, bare, headers
        self.route_at = route_at

    def value(self, name: str) -> str | None:
        if name == ":path":
            return self.path  # as Envoy's :path header: with its query string
        if name == ":authority":
            return self.host
        return self.headers.get(name)


class RouteTree:
    """A compiled virtual-host matcher: :meth:`match` → the route taken, or None."""

    __slots__ = ("_root", "_route_at", "inputs")

    def __init__(
        self,
        m: RouteMatcher,
        route_at: RouteAt,
        compile_string: Callable[[StringMatch], _Test],
    ) -> None:
        self._root = _Node(m, compile_string)
        self._route_at = route_at
        # The request headers the tree reads (lower case), for routing's header list.
        self.inputs: frozenset[str] = frozenset(_inputs(m))

    def match(self, host: str, path: str, bare: str, headers: dict[str, str]) -> Route | None:
        result = self._root.evaluate(_Request(host, path, bare, headers, self._route_at))
        return None if result is _NO_MATCH else result  # type: ignore[return-value]


def _inputs(m: RouteMatcher) -> set[str]:
    out = {m.input} if m.input else set()
    for e in m.entries:
        if e.predicate is not None:
            out |= _predicate_inputs(e.predicate)
        out |= _on_match_inputs(e.on_match)
    if m.on_no_match is not None:
        out |= _on_match_inputs(m.on_no_match)
    return out


def _on_match_inputs(om: RouteOnMatch) -> set[str]:
    return _inputs(om.matcher) if om.matcher is not None else set()


def _predicate_inputs(p: RoutePredicate) -> set[str]:
    out = {p.input} if p.input else set()
    for c in p.children:
        out |= _predicate_inputs(c)
    return out
