"""redirect and direct_response routes: the config (what is accepted, what is refused
and why) and the location Envoy's rules give, without sockets. The same rules are
checked against real Envoy by tests/compat/test_route_actions_compat.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgpack
import pytest

from proxyd.config import compile_bootstrap
from proxyd.epoch import DirectResponse, Redirect, Route, RouteMatch, from_wire, to_wire
from proxyd.errors import ConfigError
from proxyd.protocol.http1_headers import local_reply
from proxyd.protocol.redirect import LocalAction, re2_substitution, request_host, request_scheme

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTE_PATH = (
    "static_resources.listeners[0].filter_chains[0].filters[0].typed_config."
    "route_config.virtual_hosts[0].routes[0]"
)


def bootstrap(route: dict[str, Any]) -> dict[str, Any]:
    hcm = {
        "@type": HCM,
        "stat_prefix": "in",
        "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route]}]},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    listener = {
        "name": "l",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    return {"static_resources": {"listeners": [listener]}}


def compile_route(route: dict[str, Any]) -> Route:
    epoch = compile_bootstrap(bootstrap(route), "conf.yaml").epoch_template
    return epoch.listeners[0].hcm.route_config.virtual_hosts[0].routes[0]


def reject(route: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(bootstrap(route), "conf.yaml")
    return info.value


ANY = {"prefix": "/"}

# -- config -------------------------------------------------------------------------------


def test_redirect_fields_compile() -> None:
    r = compile_route(
        {
            "match": ANY,
            "redirect": {
                "https_redirect": True,
                "host_redirect": "example.com",
                "port_redirect": 8443,
                "prefix_rewrite": "",
                "response_code": "TEMPORARY_REDIRECT",
                "strip_query": True,
            },
        }
    )
    assert r.cluster == "" and r.direct_response is None
    assert r.redirect == Redirect(
        scheme="https",
        host="example.com",
        port=":8443",
        prefix_rewrite="",
        strip_query=True,
        status=307,
    )


def test_redirect_defaults() -> None:
    r = compile_route({"match": ANY, "redirect": {}})
    assert r.redirect == Redirect()
    assert r.redirect.status == 301 and r.redirect.prefix_rewrite is None


@pytest.mark.parametrize(
    ("code", "status"),
    [("MOVED_PERMANENTLY", 301), ("FOUND", 302), ("SEE_OTHER", 303), ("PERMANENT_REDIRECT", 308)],
)
def test_response_codes(code: str, status: int) -> None:
    r = compile_route({"match": ANY, "redirect": {"response_code": code}})
    assert r.redirect is not None and r.redirect.status == status


def test_direct_response_bodies(tmp_path: Path) -> None:
    body = tmp_path / "body"
    body.write_bytes(b"\x00from file\xff")
    r = compile_route(
        {"match": ANY, "direct_response": {"status": 503, "body": {"filename": str(body)}}}
    )
    assert r.direct_response == DirectResponse(503, b"\x00from file\xff")
    r = compile_route(
        {"match": ANY, "direct_response": {"status": 200, "body": {"inline_bytes": "AP8="}}}
    )
    assert r.direct_response == DirectResponse(200, b"\x00\xff")
    r = compile_route(
        {"match": ANY, "direct_response": {"status": 200, "body": {"inline_string": "é"}}}
    )
    assert r.direct_response == DirectResponse(200, "é".encode())
    assert compile_route({"match": ANY, "direct_response": {"status": 204}}).direct_response == (
        DirectResponse(204, b"")
    )


def test_environment_variable_body_refused_by_name() -> None:
    err = reject(
        {"match": ANY, "direct_response": {"status": 200, "body": {"environment_variable": "HOME"}}}
    )
    assert err.path == f"{ROUTE_PATH}.direct_response.body.environment_variable"
    assert "not supported by proxyd" in str(err)


def test_missing_body_file(tmp_path: Path) -> None:
    err = reject(
        {
            "match": ANY,
            "direct_response": {"status": 200, "body": {"filename": str(tmp_path / "nope")}},
        }
    )
    assert err.path == f"{ROUTE_PATH}.direct_response.body.filename"
    assert "cannot read" in str(err)


def test_body_over_4096_bytes(tmp_path: Path) -> None:
    err = reject(
        {"match": ANY, "direct_response": {"status": 200, "body": {"inline_string": "a" * 4097}}}
    )
    assert "response body size is 4097 bytes; maximum is 4096" in str(err)
    big = tmp_path / "big"
    big.write_bytes(b"a" * 5000)
    err = reject({"match": ANY, "direct_response": {"status": 200, "body": {"filename": str(big)}}})
    assert "maximum is 4096" in str(err)
    compile_route(
        {"match": ANY, "direct_response": {"status": 200, "body": {"inline_string": "a" * 4096}}}
    )


@pytest.mark.parametrize("status", [100, 199, 600])
def test_status_out_of_range(status: int) -> None:
    err = reject({"match": ANY, "direct_response": {"status": status}})
    assert "status" in err.path


@pytest.mark.parametrize(
    ("substitution", "why"),
    [("\\2", "group \\2"), ("\\x", "invalid escape"), ("a\\", "lone backslash")],
)
def test_bad_regex_substitution(substitution: str, why: str) -> None:
    err = reject(
        {
            "match": ANY,
            "redirect": {
                "regex_rewrite": {"pattern": {"regex": "^/(a)"}, "substitution": substitution}
            },
        }
    )
    assert err.path == f"{ROUTE_PATH}.redirect.regex_rewrite.substitution"
    assert why in str(err)


def test_bad_regex_pattern() -> None:
    err = reject(
        {
            "match": ANY,
            "redirect": {"regex_rewrite": {"pattern": {"regex": "(?=x)"}, "substitution": ""}},
        }
    )
    assert err.path == f"{ROUTE_PATH}.redirect.regex_rewrite.pattern.regex"


def test_unsupported_redirect_field_refused_by_name() -> None:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(
            bootstrap({"match": ANY, "route": {"cluster": "x", "include_vh_rate_limits": True}}),
            "conf.yaml",
        )
    assert info.value.path == f"{ROUTE_PATH}.route.include_vh_rate_limits"


# -- the location -------------------------------------------------------------------------


def action(redirect: Redirect | None = None, match: RouteMatch | None = None) -> LocalAction:
    m = match or RouteMatch("prefix", "/a/")
    direct = None if redirect is not None else DirectResponse(301)
    return LocalAction(m, redirect, direct)


def test_scheme_from_x_forwarded_proto() -> None:
    assert request_scheme("https") == "https"
    assert request_scheme("HTTPS") == "https"
    assert request_scheme("http") == "http"
    assert request_scheme("foo") == "http"
    assert request_scheme("http,https") == "http"


@pytest.mark.parametrize(
    ("host", "scheme", "port", "xfp", "expected"),
    [
        ("foo.com:8080", "https", "", "http", "foo.com:8080"),
        ("foo.com:80", "https", "", "http", "foo.com"),
        ("foo.com:80", "http", "", "http", "foo.com:80"),
        ("foo.com:443", "https", "", "http", "foo.com:443"),
        ("foo.com:443", "http", "", "https", "foo.com"),
        ("foo.com:443", "http", "", "HTTPS", "foo.com"),
        ("foo.com:443", "https", "", "HTTPS", "foo.com"),
        ("foo.com:8080", "http", ":9", "http", "foo.com"),
        ("foo.com", "http", ":9", "http", "foo.com"),
        ("[::1]:80", "https", "", "http", "[::1]"),
        ("[::1]", "http", ":9", "http", "[::1]"),
        ("::1", "http", ":9", "http", ":"),
        ("foo.com:", "https", "", "http", "foo.com:"),
        ("", "https", "", "http", ""),
    ],
)
def test_request_host(host: str, scheme: str, port: str, xfp: str, expected: str) -> None:
    assert request_host(host, scheme, port, xfp) == expected


def test_locations() -> None:
    assert action().location("foo.com:8080", "/a/b?q", "http") == "http://foo.com:8080/a/b?q"
    assert action(Redirect()).location("h", "/a/b?q", "https") == "https://h/a/b?q"
    r = Redirect(host="example.com", port=":8443")
    assert action(r).location("foo.com:8080", "/a", "http") == "http://example.com:8443/a"
    r = Redirect(scheme="https", port=":443")
    assert action(r).location("foo.com:8080", "/a", "http") == "https://foo.com:443/a"
    r = Redirect(path="/new")
    assert action(r).location("h", "/a/b?q=1", "http") == "http://h/new?q=1"
    r = Redirect(path="/new?x=1", strip_query=True)
    assert action(r).location("h", "/a/b?q=1", "http") == "http://h/new?x=1"
    r = Redirect(path="new", strip_query=True)
    assert action(r).location("h", "/a/b?q=1", "http") == "http://h/new"
    r = Redirect(strip_query=True)
    assert action(r).location("h", "/a/b?", "http") == "http://h/a/b"


def test_path_rewrites() -> None:
    a = action(Redirect(prefix_rewrite="/n"))
    assert a.rewrites_path and a.rewritten_path("/a/b?q=/a/") == "/nb?q=/a/"
    a = action(Redirect(prefix_rewrite="/x"), RouteMatch("path", "/exact"))
    assert a.rewritten_path("/exact?q") == "/x?q"
    a = action(Redirect(prefix_rewrite="/q"), RouteMatch("safe_regex", "/r/.*"))
    assert a.rewritten_path("/r/zz/1?z=1") == "/q?z=1"
    a = action(Redirect(regex="o", substitution="0"))
    assert a.rewritten_path("/foo/boo?o=o") == "/f00/b00?o=o"
    a = action(Redirect(regex="^/a/(\\w+)/(\\w+)", substitution="/\\2/\\1\\\\\\0"))
    assert a.rewritten_path("/a/b/c/d") == "/c/b\\/a/b/c/d"
    assert not action(Redirect()).rewrites_path
    assert action(Redirect()).rewritten_path("/a/b") == "/a/b"


def test_re2_substitution_is_literal_otherwise() -> None:
    expand = re2_substitution("$1 \\\\ \\1", 1)
    assert re.sub("(b)", expand, "abc") == "a$1 \\ bc"


def test_direct_response_without_3xx_has_no_location() -> None:
    a = LocalAction(RouteMatch("prefix", "/"), None, DirectResponse(200, b"x"))
    assert not a.with_location and (a.status, a.body) == (200, b"x")
    assert action().with_location


# -- the local reply's shape --------------------------------------------------------------


def test_local_reply_shapes() -> None:
    server = b"server: envoy\r\n"
    assert b"content-length" not in local_reply(204, "", server)
    assert b"content-length" not in local_reply(304, "", server)
    head = local_reply(404, "", server, head_request=True)
    assert head.endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert local_reply(404, "", server).endswith(b"content-length: 0\r\n\r\n")
    data = local_reply(200, b"\x00\xff", server)
    assert data.endswith(b"\r\n\r\n\x00\xff") and b"content-length: 2\r\n" in data


def test_routes_cross_the_wire() -> None:
    """Redirect and DirectResponse (a bytes body) survive the msgpack epoch frame."""
    for route in (
        Route("r", RouteMatch("prefix", "/"), "", redirect=Redirect(scheme="https", port=":1")),
        Route("d", RouteMatch("path", "/p"), "", direct_response=DirectResponse(200, b"\0\xff")),
    ):
        data = msgpack.unpackb(msgpack.packb(to_wire(route), use_bin_type=True), raw=False)
        assert from_wire(Route, data) == route


def test_idle_timeouts_and_host_rewrite_path_regex_compile() -> None:
    def with_cluster(route: dict[str, Any]) -> Route:
        data = bootstrap(route)
        data["static_resources"]["clusters"] = [
            {
                "name": "c",
                "load_assignment": {
                    "cluster_name": "c",
                    "endpoints": [
                        {
                            "lb_endpoints": [
                                {
                                    "endpoint": {
                                        "address": {
                                            "socket_address": {
                                                "address": "127.0.0.1",
                                                "port_value": 1,
                                            }
                                        }
                                    }
                                }
                            ]
                        }
                    ],
                },
            }
        ]
        epoch = compile_bootstrap(data, "conf.yaml").epoch_template
        return epoch.listeners[0].hcm.route_config.virtual_hosts[0].routes[0]

    r = with_cluster(
        {
            "match": {"prefix": "/"},
            "route": {
                "cluster": "c",
                "idle_timeout": "0.25s",
                "host_rewrite_path_regex": {
                    "pattern": {"regex": "^/([a-z]+)/.*$"},
                    "substitution": "\\1.example",
                },
                "retry_policy": {"retry_on": "5xx", "per_try_idle_timeout": "1.5s"},
            },
        }
    )
    assert r.idle_timeout_s == 0.25
    assert (r.host_rewrite_regex, r.host_rewrite_substitution) == ("^/([a-z]+)/.*$", "\\1.example")
    assert r.retry is not None and r.retry.per_try_idle_timeout_s == 1.5
    off = with_cluster({"match": {"prefix": "/"}, "route": {"cluster": "c", "idle_timeout": "0s"}})
    assert off.idle_timeout_s == 0.0
    unset = with_cluster({"match": {"prefix": "/"}, "route": {"cluster": "c"}})
    assert unset.idle_timeout_s is None and unset.host_rewrite_regex == ""
