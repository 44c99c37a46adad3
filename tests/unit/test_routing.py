"""RouteTable: Envoy's virtual host selection and route matching."""

from __future__ import annotations

import pytest

from proxyd.epoch import HeaderMatch, Route, RouteConfig, RouteMatch, StringMatch, VirtualHost
from proxyd.protocol.routing import RouteTable


def route(name: str, kind: str = "prefix", value: str = "/", **kw: object) -> Route:
    return Route(name, RouteMatch(kind, value, **kw), f"c_{name}")  # type: ignore[arg-type]


def vhost(name: str, *domains: str, routes: tuple[Route, ...] = ()) -> VirtualHost:
    return VirtualHost(name, tuple(domains), routes or (route(name),))


def table(*vhosts: VirtualHost) -> RouteTable:
    return RouteTable(RouteConfig("rc", tuple(vhosts)))


def name_of(t: RouteTable, host: str, path: str = "/", headers: dict[str, str] | None = None):
    r = t.match(host, path, headers or {})
    return None if r is None else r.name


# -- virtual hosts ----------------------------------------------------------------------

VHOSTS = table(
    vhost("exact", "www.foo.com", "port.foo.com:8080"),
    vhost("suffix_short", "*.foo.com"),
    vhost("suffix_long", "*-bar.foo.com"),
    vhost("suffix_longer", "*.baz.bar.foo.com"),
    vhost("prefix_short", "foo.*"),
    vhost("prefix_long", "foo-bar.*"),
    vhost("default", "*"),
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("www.foo.com", "exact"),
        ("WWW.Foo.COM", "exact"),
        ("a.foo.com", "suffix_short"),
        ("x-bar.foo.com", "suffix_long"),
        ("a.baz.bar.foo.com", "suffix_longer"),
        ("baz.bar.foo.com", "suffix_short"),
        # the wildcard part must not be empty
        ("-bar.foo.com", "suffix_short"),
        (".foo.com", "default"),
        ("foo.com", "prefix_short"),
        ("bar.com", "default"),
        ("foo.example", "prefix_short"),
        ("foo-bar.example", "prefix_long"),
        ("FOO-BAR.x", "prefix_long"),
        ("foo.", "default"),
        # suffix wildcards before prefix wildcards
        ("foo.foo.com", "suffix_short"),
        # the port is part of the Host value
        ("www.foo.com:80", "default"),
        ("foo.example:80", "prefix_short"),
        ("port.foo.com:8080", "exact"),
        ("port.foo.com", "suffix_short"),
        ("port.foo.com:9090", "default"),
        ("", "default"),
    ],
)
def test_virtual_host_precedence(host: str, expected: str) -> None:
    assert name_of(VHOSTS, host) == expected
    assert VHOSTS.virtual_host(host).name == expected  # type: ignore[union-attr]


def test_no_default_virtual_host_means_no_route() -> None:
    t = table(vhost("a", "a.com"))
    assert name_of(t, "a.com") == "a"
    assert name_of(t, "b.com") is None
    assert t.virtual_host("b.com") is None


def test_only_a_default_virtual_host() -> None:
    t = table(vhost("any", "*"))
    assert name_of(t, "whatever:1") == "any"
    assert name_of(t, "") == "any"


def test_duplicate_domains_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate domain"):
        table(vhost("a", "a.com"), vhost("b", "A.com"))
    with pytest.raises(ValueError, match="only one virtual host"):
        table(vhost("a", "*"), vhost("b", "*"))


def test_vhost_cache_is_bounded_and_stays_correct() -> None:
    t = table(vhost("exact", "www.foo.com"), vhost("default", "*"))
    for i in range(3000):
        assert name_of(t, f"h{i}.test") == "default"
        assert len(t._cache) <= 1024
    assert name_of(t, "www.foo.com") == "exact"


# -- routes -----------------------------------------------------------------------------


def routes_table(*routes: Route) -> RouteTable:
    return table(VirtualHost("v", ("*",), routes))


def test_first_matching_route_wins() -> None:
    t = routes_table(route("a", "prefix", "/api"), route("b", "prefix", "/api/v1"), route("c"))
    assert name_of(t, "h", "/api/v1/x") == "a"
    assert name_of(t, "h", "/other") == "c"


def test_no_route_matches() -> None:
    t = routes_table(route("a", "path", "/x"))
    assert name_of(t, "h", "/y") is None


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/exact", "path"),
        ("/exact?x=1", "path"),
        ("/exact#frag", "path"),
        ("/exact/", "pre"),
        ("/EXACT", "pre_ci"),
        ("/prefix/x", "pre"),
        ("/Prefix/x", "pre_ci"),
        ("/PREFIX", "pre_ci"),
        ("/users/42", "regex"),
        ("/users/42?q", "regex"),
        ("/users/42/x", None),
        ("/Users/42", None),
        # prefix and regex do not see the query string
        ("/q?search=1", None),
        ("/ci?x", "path_ci"),
        ("/CI", "path_ci"),
    ],
)
def test_path_matchers(path: str, expected: str | None) -> None:
    t = routes_table(
        route("path", "path", "/exact"),
        route("pre", "prefix", "/prefix"),
        route("pre", "prefix", "/exact"),
        route("pre_ci", "prefix", "/PRE", case_sensitive=False),
        route("pre_ci", "prefix", "/exact", case_sensitive=False),
        route("regex", "safe_regex", "/users/[0-9]+", case_sensitive=False),
        route("q", "prefix", "/q?"),
        route("path_ci", "path", "/Ci", case_sensitive=False),
    )
    assert name_of(t, "h", path) == expected


# -- header matchers --------------------------------------------------------------------


def header_route(*hms: HeaderMatch) -> RouteTable:
    return routes_table(Route("h", RouteMatch("prefix", "/", headers=hms), "c"))


def sm(kind: str, value: str, ignore_case: bool = False) -> StringMatch:
    return StringMatch(kind, value, ignore_case)


@pytest.mark.parametrize(
    ("hm", "headers", "matches"),
    [
        (HeaderMatch("x", sm("exact", "a")), {"x": "a"}, True),
        (HeaderMatch("x", sm("exact", "a")), {"x": "A"}, False),
        (HeaderMatch("x", sm("exact", "a", True)), {"x": "A"}, True),
        (HeaderMatch("x", sm("exact", "a")), {"x": "a,b"}, False),
        (HeaderMatch("x", sm("exact", "a")), {}, False),
        (HeaderMatch("x", sm("prefix", "ab")), {"x": "abc"}, True),
        (HeaderMatch("x", sm("prefix", "AB", True)), {"x": "abc"}, True),
        (HeaderMatch("x", sm("prefix", "AB")), {"x": "abc"}, False),
        (HeaderMatch("x", sm("suffix", "bc")), {"x": "abc"}, True),
        (HeaderMatch("x", sm("suffix", "BC", True)), {"x": "aBc"}, True),
        (HeaderMatch("x", sm("contains", "b")), {"x": "abc"}, True),
        (HeaderMatch("x", sm("contains", "B", True)), {"x": "abc"}, True),
        (HeaderMatch("x", sm("contains", "z")), {"x": "abc"}, False),
        (HeaderMatch("x", sm("safe_regex", "v[0-9]+")), {"x": "v12"}, True),
        (HeaderMatch("x", sm("safe_regex", "v[0-9]+")), {"x": "v12x"}, False),
        # ignore_case has no effect on a regex
        (HeaderMatch("x", sm("safe_regex", "v[0-9]+", True)), {"x": "V1"}, False),
        # invert_match
        (HeaderMatch("x", sm("exact", "a"), invert_match=True), {"x": "b"}, True),
        (HeaderMatch("x", sm("exact", "a"), invert_match=True), {"x": "a"}, False),
        # a missing header fails a string match even when inverted ...
        (HeaderMatch("x", sm("exact", "a"), invert_match=True), {}, False),
        # ... unless it is treated as empty
        (HeaderMatch("x", sm("exact", ""), treat_missing_as_empty=True), {}, True),
        (HeaderMatch("x", sm("exact", "a"), True, True), {}, True),
        (HeaderMatch("x", sm("exact", ""), treat_missing_as_empty=True), {"x": "v"}, False),
        # present / absent
        (HeaderMatch("x", None), {"x": ""}, True),
        (HeaderMatch("x", None), {}, False),
        (HeaderMatch("x", None, invert_match=True), {}, True),
        (HeaderMatch("x", None, invert_match=True), {"x": "1"}, False),
    ],
)
def test_header_matchers(hm: HeaderMatch, headers: dict[str, str], matches: bool) -> None:
    assert (name_of(header_route(hm), "h", "/", headers) == "h") is matches


def test_all_header_matchers_must_match() -> None:
    t = header_route(HeaderMatch("a", None), HeaderMatch("b", sm("exact", "1")))
    assert name_of(t, "h", "/", {"a": "", "b": "1"}) == "h"
    assert name_of(t, "h", "/", {"a": ""}) is None
    assert name_of(t, "h", "/", {"b": "1"}) is None


def test_pseudo_headers_come_from_the_arguments() -> None:
    t = header_route(
        HeaderMatch(":authority", sm("prefix", "api.")),
        HeaderMatch("Host", sm("suffix", ":8080")),
        HeaderMatch(":path", sm("contains", "?debug")),
    )
    assert name_of(t, "api.x:8080", "/a?debug=1") == "h"
    assert name_of(t, "api.x:8081", "/a?debug=1") is None
    assert name_of(t, "api.x:8080", "/a") is None


def test_needed_headers() -> None:
    t = table(
        VirtualHost(
            "v",
            ("*",),
            (
                Route("a", RouteMatch("prefix", "/", headers=(HeaderMatch("x-a", None),)), "c"),
                Route(
                    "b",
                    RouteMatch(
                        "prefix",
                        "/",
                        headers=(
                            HeaderMatch("x-b", sm("exact", "1")),
                            HeaderMatch(":authority", None),
                            HeaderMatch("host", None),
                            HeaderMatch(":method", sm("exact", "GET")),
                        ),
                    ),
                    "c",
                ),
            ),
        )
    )
    assert t.needed_headers == frozenset({"x-a", "x-b", ":method"})
    assert routes_table(route("a")).needed_headers == frozenset()
