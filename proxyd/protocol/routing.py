"""Route selection: Envoy's virtual host and route matching, compiled once per epoch.

:class:`RouteTable` turns a :class:`proxyd.epoch.RouteConfig` into lookup tables and
matcher tuples when it is built; :meth:`RouteTable.match` then costs a dict lookup (the
virtual host, cached per distinct Host value) plus a walk over that host's routes.

Envoy's rules, as implemented in ``source/common/router/config_impl.cc``:

* **Virtual host.** The Host value is lower-cased and matched as it is, port and all
  (Envoy strips the port only with ``ignore_port_in_host_matching`` or the HCM's
  ``strip_*_host_port`` options, which proxyd does not accept). Exact domains first; then
  suffix wildcards (``*.foo.com``, ``*-bar.foo.com``) longest first; then prefix wildcards
  (``foo.*``) longest first; then ``*``. A wildcard never matches an empty remainder:
  ``*.foo.com`` does not match ``.foo.com``.
* **Routes** are tried in order; the first whose path matcher and header matchers all
  match wins. ``prefix``, ``path`` and ``safe_regex`` all look at the path with the query
  string and fragment removed (``PathMatcher::match`` calls ``removeQueryAndFragment``).
  ``safe_regex`` must match the whole path and ignores ``case_sensitive``.
* **runtime_fraction** (``RouteEntryImplBase::evaluateRuntimeMatch``): the route also
  needs ``featureEnabled(runtime_key, default_value, random)`` (``proxyd.protocol.runtime``),
  where ``random`` is one 64-bit draw per request, the same for every route tried (Envoy
  passes the stream id, a random uint64). The fraction is resolved from the epoch's
  runtime when the table is built; a route without one costs nothing more, and a
  request draws only when it reaches a route whose fraction is strictly between 0 and
  1. The routes from the first one with a fraction on are matched by
  :func:`_match_guarded`.
* **Header matchers** (``HeaderUtility``): a string matcher on a missing header fails,
  even when inverted, unless ``treat_missing_header_as_empty`` makes the value "". A
  present matcher is true when the header is present (XOR ``invert_match``). A matcher
  on ``host`` or ``:authority`` reads the Host value, one on ``:path`` the raw path.
* **Repeated headers** reach :meth:`RouteTable.match` joined with "," and are matched as
  one value. That is what Envoy does for the headers its codec coalesces (user-agent and
  the other inline headers); for other repeated headers Envoy 1.40 matches when *any*
  single value matches (and ``invert_match`` when none does), which a joined value
  cannot express. Header values that themselves contain commas are far more common, and
  splitting them would be wrong, so the joined form is matched as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from proxyd.epoch import HeaderMatch, QueryMatch, Route, RouteConfig, StringMatch, VirtualHost
from proxyd.protocol.route_tree import RouteTree
from proxyd.protocol.runtime import EMPTY, RANDOM, Snapshot

# Host values repeat; after this many distinct ones the cache starts over.
_VHOST_CACHE_LIMIT = 1024

# Path matcher kinds, as small ints so the hot loop compares integers. _GUARDED: a route
# with a runtime_fraction; its third element is a _Guard with the path matcher.
# _SEP, _SEP_NOCASE: path_separated_prefix.
_PREFIX, _PREFIX_NOCASE, _PATH, _PATH_NOCASE, _REGEX, _GUARDED, _SEP, _SEP_NOCASE = range(8)
# A virtual host with a matcher: its one entry holds the RouteTree (route_tree.py).
_TREE = 8
# A connect_matcher route: CONNECT requests only (RouteTable.match_connect).
_CONNECT = 9

# Envoy lower-cases with absl::AsciiStrToLower: only A-Z change.
_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def ascii_lower(s: str) -> str:
    """``s`` with A-Z lower-cased and every other character left alone."""
    return s.lower() if s.isascii() else s.translate(_ASCII_LOWER)


# Header names the route table reads from its own arguments instead of ``headers``.
_FROM_ARGS = frozenset({":authority", ":path"})

# A compiled header matcher: (name, test, invert, treat_missing_as_empty). ``test`` is
# None for a present matcher, else a predicate on the header's value.
_HeaderTest = tuple[str, Callable[[str], bool] | None, bool, bool]
# A compiled route: (kind, value, compiled regex or None (a _Guard for _GUARDED), header
# tests, route).
_CompiledRoute = tuple[int, str, Any, tuple[_HeaderTest, ...], Route]


# RouteTable.match: a host not yet in the virtual-host cache (None is a cached answer).
_UNCACHED: Any = object()


class _Guard:
    """A route's runtime_fraction, resolved for the epoch, and its own path matcher;
    ``index`` is the route's place in its virtual host."""

    __slots__ = ("kind", "value", "rx", "numerator", "denominator", "index")

    def __init__(
        self,
        kind: int,
        value: str,
        rx: re.Pattern[str] | None,
        fraction: tuple[int, int],
        index: int,
    ) -> None:
        self.kind, self.value, self.rx = kind, value, rx
        self.numerator, self.denominator = fraction
        self.index = index


def compile_string_match(sm: StringMatch) -> Callable[[str], bool]:
    """Envoy's ``StringMatcher`` as a predicate; ``ignore_case`` has no effect on regex."""
    kind = sm.kind
    if kind == "safe_regex":
        return re.compile(sm.value).fullmatch  # type: ignore[return-value]
    value = ascii_lower(sm.value) if sm.ignore_case else sm.value
    if kind == "exact":
        if sm.ignore_case:
            return lambda s: ascii_lower(s) == value
        return value.__eq__
    if kind == "prefix":
        if sm.ignore_case:
            return lambda s: ascii_lower(s).startswith(value)
        return lambda s: s.startswith(value)
    if kind == "suffix":
        if sm.ignore_case:
            return lambda s: ascii_lower(s).endswith(value)
        return lambda s: s.endswith(value)
    if kind == "contains":
        if sm.ignore_case:
            return lambda s: value in ascii_lower(s)
        return lambda s: value in s
    raise ValueError(f"unknown string match kind {kind!r}")


def _compile_header(hm: HeaderMatch) -> _HeaderTest:
    test = None if hm.match is None else compile_string_match(hm.match)
    name = ascii_lower(hm.name)
    if name == "host":  # Envoy keeps Host as :authority; a "host" matcher reads it
        name = ":authority"
    return (name, test, hm.invert_match, hm.treat_missing_as_empty)


def _compile_query(qm: QueryMatch) -> _HeaderTest:
    """A query parameter matcher as a header test on the name "?" + parameter (see
    :func:`headers_match`); present_match false is a present test, inverted."""
    test = None if qm.match is None else compile_string_match(qm.match)
    return ("?" + qm.name, test, qm.match is None and not qm.present, False)


def query_value(path: str, name: str) -> str | None:
    """The first value of query parameter ``name`` in ``path``, as Envoy's route
    matcher reads it: not percent-decoded, split at the first "=", "" when there is
    none; None when the parameter is not there."""
    _, sep, query = path.partition("?")
    if not sep:
        return None
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if key == name:
            return value
    return None


def compile_headers(matches: tuple[HeaderMatch, ...]) -> tuple[_HeaderTest, ...]:
    """Header matchers compiled for :func:`headers_match` (routes, and the HTTP filters
    that take Envoy's ``HeaderMatcher`` list, such as the fault filter's ``headers``)."""
    return tuple(_compile_header(h) for h in matches)


def header_names(tests: tuple[_HeaderTest, ...]) -> frozenset[str]:
    """The request header names ``tests`` read from ``headers`` (not Host, not the path)."""
    return frozenset(t[0] for t in tests if t[0] not in _FROM_ARGS and t[0][0] != "?")


def _compile_route(route: Route, runtime: Snapshot = EMPTY, index: int = 0) -> _CompiledRoute:
    m = route.match
    rx: re.Pattern[str] | None = None
    value = m.value
    if m.kind == "prefix":
        kind = _PREFIX if m.case_sensitive else _PREFIX_NOCASE
    elif m.kind == "path":
        kind = _PATH if m.case_sensitive else _PATH_NOCASE
    elif m.kind == "safe_regex":
        kind = _REGEX
        rx = re.compile(value)
    elif m.kind == "path_separated_prefix":
        kind = _SEP if m.case_sensitive else _SEP_NOCASE
    elif m.kind == "connect":
        kind = _CONNECT
    else:
        raise ValueError(f"route {route.name!r}: unknown path match kind {m.kind!r}")
    if kind in (_PREFIX_NOCASE, _PATH_NOCASE, _SEP_NOCASE):
        value = ascii_lower(value)
    headers = compile_headers(m.headers)
    if m.grpc:
        headers += (("content-type", is_grpc_content_type, False, False),)
    if m.query:
        headers += tuple(_compile_query(q) for q in m.query)
    if m.runtime_fraction is not None:
        guard = _Guard(kind, value, rx, runtime.runtime_fraction(m.runtime_fraction), index)
        return (_GUARDED, "", guard, headers, route)
    return (kind, value, rx, headers, route)


def _path_matches(kind: int, value: str, rx: re.Pattern[str] | None, bare: str) -> bool:
    if kind == _CONNECT:
        return False  # a CONNECT route takes CONNECT requests only
    if kind == _PREFIX:
        return bare.startswith(value)
    if kind == _PATH:
        return bare == value
    if kind == _REGEX:
        return rx.fullmatch(bare) is not None  # type: ignore[union-attr]
    if kind == _PREFIX_NOCASE:
        return ascii_lower(bare).startswith(value)
    if kind == _SEP:
        return _separated(bare, value)
    if kind == _SEP_NOCASE:
        return _separated(ascii_lower(bare), value)
    return ascii_lower(bare) == value


def _separated(bare: str, prefix: str) -> bool:
    """path_separated_prefix: the prefix, then the end of the path or a "/"."""
    n = len(prefix)
    return bare.startswith(prefix) and (len(bare) == n or bare[n] == "/")


def is_grpc_content_type(value: str) -> bool:
    """Envoy's Grpc::Common::hasGrpcContentType: exactly "application/grpc", or it
    followed by "+" (application/grpc-web is not gRPC)."""
    return value.startswith("application/grpc") and (len(value) == 16 or value[16] == "+")


def _match_guarded(
    routes: tuple[_CompiledRoute, ...],
    start: int,
    host: str,
    path: str,
    bare: str,
    headers: dict[str, str],
) -> Route | None:
    """:meth:`RouteTable.match` from ``routes[start]`` (a route with a runtime_fraction)
    on, drawing the request's random value when a fraction first needs it."""
    draw = -1
    for kind, value, rx, tests, route in routes[start:]:
        if kind == _GUARDED:
            if not _path_matches(rx.kind, rx.value, rx.rx, bare):
                continue
            numerator, denominator = rx.numerator, rx.denominator
            if numerator < denominator:
                if numerator <= 0:
                    continue
                if draw < 0:
                    draw = RANDOM.getrandbits(64)
                if draw % denominator >= numerator:
                    continue
        elif not _path_matches(kind, value, rx, bare):
            continue
        if tests and not headers_match(tests, headers, host, path):
            continue
        return route
    return None


def headers_match(
    tests: tuple[_HeaderTest, ...], headers: dict[str, str], host: str, path: str
) -> bool:
    for name, test, invert, missing_as_empty in tests:
        if name == ":authority":
            value: str | None = host
        elif name == ":path":
            value = path
        elif name[0] == "?":  # a query parameter (RouteMatch.query_parameters)
            value = query_value(path, name[1:])
        else:
            value = headers.get(name)
        if test is None:  # present match
            if (value is not None) == invert:
                return False
            continue
        if value is None:
            if not missing_as_empty:
                return False
            value = ""
        if bool(test(value)) == invert:
            return False
    return True


class _CompiledVirtualHost:
    __slots__ = ("vhost", "routes", "tree_inputs")

    def __init__(self, vhost: VirtualHost, runtime: Snapshot = EMPTY) -> None:
        self.vhost = vhost
        routes: tuple[_CompiledRoute, ...] = tuple(
            _compile_route(r, runtime, i) for i, r in enumerate(vhost.routes)
        )
        self.tree_inputs: frozenset[str] = frozenset()
        if vhost.matcher is not None:
            # The tree picks the routes; the route list is only what it points into.
            tree = RouteTree(vhost.matcher, _route_at(routes), compile_string_match)
            self.tree_inputs = tree.inputs
            needed = [t for r in routes for t in r[3]]
            routes = ((_TREE, "", tree, tuple(needed), None),)  # type: ignore[assignment]
        self.routes = routes


def _route_at(
    routes: tuple[_CompiledRoute, ...],
) -> Callable[[int, str, str, str, dict[str, str]], Route | None]:
    """The tree's check of the route it chose: the route's own match must hold."""

    def route_at(
        index: int, host: str, path: str, bare: str, headers: dict[str, str]
    ) -> Route | None:
        return _match_guarded(routes[index : index + 1], 0, host, path, bare, headers)

    return route_at


class RouteTable:
    """One route configuration, compiled: ``match(host, path, headers)`` → Route or None.
    ``runtime`` resolves the routes' runtime_fraction (the epoch's runtime)."""

    def __init__(self, rc: RouteConfig, runtime: Snapshot = EMPTY) -> None:
        self.name = rc.name
        self._exact: dict[str, _CompiledVirtualHost] = {}
        suffixes: dict[int, dict[str, _CompiledVirtualHost]] = {}
        prefixes: dict[int, dict[str, _CompiledVirtualHost]] = {}
        self._default: _CompiledVirtualHost | None = None
        needed: set[str] = set()
        for vh in rc.virtual_hosts:
            cvh = _CompiledVirtualHost(vh, runtime)
            for _kind, _value, _rx, tests, _route in cvh.routes:
                needed.update(t[0] for t in tests if t[0][0] != "?")
            needed.update(cvh.tree_inputs)
            for raw in vh.domains:
                domain = ascii_lower(raw)
                if domain == "*":
                    if self._default is not None:
                        raise ValueError(
                            f"route config {rc.name!r}: only one virtual host may use '*'"
                        )
                    self._default = cvh
                    continue
                if domain.startswith("*"):
                    table, key = suffixes.setdefault(len(domain) - 1, {}), domain[1:]
                elif domain.endswith("*"):
                    table, key = prefixes.setdefault(len(domain) - 1, {}), domain[:-1]
                else:
                    table, key = self._exact, domain
                if key in table:
                    raise ValueError(
                        f"route config {rc.name!r}: duplicate domain {raw!r} "
                        f"(virtual host {vh.name!r})"
                    )
                table[key] = cvh
        # Longest wildcard first.
        self._suffixes = tuple(sorted(suffixes.items(), reverse=True))
        self._prefixes = tuple(sorted(prefixes.items(), reverse=True))
        self._only_default = not (self._exact or self._suffixes or self._prefixes)
        self._cache: dict[str, _CompiledVirtualHost | None] = {}
        self.needed_headers: frozenset[str] = frozenset(needed - _FROM_ARGS)

    # -- virtual hosts --------------------------------------------------------------

    def _find_vhost(self, host: str) -> _CompiledVirtualHost | None:
        host = ascii_lower(host)
        found = self._exact.get(host)
        if found is not None:
            return found
        n = len(host)
        for length, table in self._suffixes:
            if length < n:
                found = table.get(host[n - length :])
                if found is not None:
                    return found
        for length, table in self._prefixes:
            if length < n:
                found = table.get(host[:length])
                if found is not None:
                    return found
        return self._default

    def virtual_host(self, host: str) -> VirtualHost | None:
        """The virtual host a Host value selects (None: no virtual host matches)."""
        cvh = self._lookup(host)
        return None if cvh is None else cvh.vhost

    def _lookup(self, host: str) -> _CompiledVirtualHost | None:
        """The virtual host for ``host`` (cached; the cache holds None too)."""
        if self._only_default:
            return self._default
        cache = self._cache
        try:
            return cache[host]
        except KeyError:
            pass
        cvh = self._find_vhost(host)
        if len(cache) >= _VHOST_CACHE_LIMIT:
            cache.clear()
        cache[host] = cvh
        return cvh

    # -- routes ---------------------------------------------------------------------

    def match_connect(self, host: str, headers: dict[str, str]) -> Route | None:
        """A CONNECT request's route: the first connect_matcher route of the selected
        virtual host whose header matchers hold (a CONNECT has no path, so no other
        route matches it, as in Envoy), or None (404)."""
        cvh = self._lookup(host)
        if cvh is None:
            return None
        for kind, _value, _rx, tests, route in cvh.routes:
            if kind == _CONNECT and (not tests or headers_match(tests, headers, host, "")):
                return route
        return None

    def match(self, host: str, path: str, headers: dict[str, str]) -> Route | None:
        """The first route of the selected virtual host that matches, or None (404).

        ``host`` is the raw Host value, ``path`` the raw request target (query
        included), ``headers`` lower-case names → values (repeats joined with ",");
        only :attr:`needed_headers` are looked at.
        """
        # (_lookup, inline: every request asks)
        if self._only_default:
            cvh = self._default
        else:
            cvh = self._cache.get(host, _UNCACHED)
            if cvh is _UNCACHED:
                cvh = self._lookup(host)
        if cvh is None:
            return None
        # Path matchers see the path without query string and fragment.
        # (``in`` first: str.find parses its arguments the slow way.)
        bare = path
        if "?" in path:
            bare = path[: path.find("?")]
        if "#" in bare:
            bare = bare[: bare.find("#")]
        lowered: str | None = None
        for kind, value, rx, tests, route in cvh.routes:
            if kind == _PREFIX:
                if not bare.startswith(value):
                    continue
            elif kind == _PATH:
                if bare != value:
                    continue
            elif kind == _REGEX:
                if rx.fullmatch(bare) is None:
                    continue
            else:
                if kind == _GUARDED:
                    return _match_guarded(cvh.routes, rx.index, host, path, bare, headers)
                if kind == _TREE:
                    return rx.match(host, path, bare, headers)
                if kind == _CONNECT:
                    continue  # a CONNECT route takes CONNECT requests only
                if kind == _SEP:
                    if not _separated(bare, value):
                        continue
                else:
                    if lowered is None:
                        lowered = ascii_lower(bare)
                    if kind == _PREFIX_NOCASE:
                        if not lowered.startswith(value):
                            continue
                    elif kind == _SEP_NOCASE:
                        if not _separated(lowered, value):
                            continue
                    elif lowered != value:
                        continue
            if tests and not headers_match(tests, headers, host, path):
                continue
            return route
        return None
