"""Routing cases shared by the Envoy, RouteTable and proxyd compatibility runs.

``envoy_config_yaml(listen_port, upstream_ports)`` is an Envoy v3 bootstrap (without
``admin``; the runner adds one) whose route table exercises virtual host selection
(exact, ``*.suffix`` of several lengths, ``prefix.*``, ``*``, a domain with a port) and
route matching (prefix, path, safe_regex, case_sensitive, header matchers of every kind,
invert_match, treat_missing_header_as_empty). Every route leads to its own cluster, one
upstream per cluster (names in ``UPSTREAMS``), so the ``x-upstream-name`` header of the
answer says which route matched. ``CASES`` are the requests and what Envoy answers.
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass
from typing import Any

import yaml

from proxyd.epoch import HeaderMatch, Route, RouteConfig, RouteMatch, StringMatch, VirtualHost
from tests.support import http_listener, static_cluster

# name → (domains, routes); a route is (name, match dict, cluster).
_Route = tuple[str, dict[str, Any], str]


def _exact(name: str, value: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "string_match": {"exact": value, **kw}}


VIRTUAL_HOSTS: list[tuple[str, list[str], list[_Route]]] = [
    (
        "exact",
        ["exact.example.com", "ported.example.com:8080"],
        [
            ("exact_only", {"path": "/only"}, "up_exact"),
            ("exact_pre", {"prefix": "/pre"}, "up_exact_pre"),
        ],
    ),
    ("suffix_long", ["*-api.example.com"], [("sl", {"prefix": "/"}, "up_suffix_long")]),
    ("suffix_short", ["*.example.com"], [("ss", {"prefix": "/"}, "up_suffix_short")]),
    ("suffix_sub", ["*.sub.example.com"], [("sub", {"prefix": "/"}, "up_suffix_sub")]),
    ("prefix_short", ["api.*"], [("ps", {"prefix": "/"}, "up_prefix_short")]),
    ("prefix_long", ["api.v2.*"], [("pl", {"prefix": "/"}, "up_prefix_long")]),
    (
        "default",
        ["*"],
        [
            ("path", {"path": "/exact"}, "up_path"),
            ("path_ci", {"path": "/CaseInsens", "case_sensitive": False}, "up_path_ci"),
            ("prefix_v1", {"prefix": "/api/v1/"}, "up_prefix_v1"),
            ("prefix_ci", {"prefix": "/API/", "case_sensitive": False}, "up_prefix_ci"),
            ("regex", {"safe_regex": {"regex": "/users/[0-9]+"}}, "up_regex"),
            ("query_prefix", {"prefix": "/search?q"}, "up_query_prefix"),
            ("hdr_exact", {"prefix": "/hdr", "headers": [_exact("x-env", "prod")]}, "up_hdr_exact"),
            (
                "hdr_prefix",
                {
                    "prefix": "/hdr",
                    "headers": [
                        {"name": "x-env", "string_match": {"prefix": "stag", "ignore_case": True}}
                    ],
                },
                "up_hdr_prefix",
            ),
            (
                "hdr_multi",
                {
                    "prefix": "/hdr",
                    "headers": [
                        {"name": "x-ver", "string_match": {"safe_regex": {"regex": "v[0-9]+"}}},
                        {"name": "X-Flag", "present_match": True},
                    ],
                },
                "up_hdr_multi",
            ),
            (
                "hdr_invert",
                {"prefix": "/hdr", "headers": [{**_exact("x-env", "prod"), "invert_match": True}]},
                "up_hdr_invert",
            ),
            (
                "hdr_missing_empty",
                {
                    "prefix": "/hdr",
                    "headers": [{**_exact("x-missing", ""), "treat_missing_header_as_empty": True}],
                },
                "up_hdr_missing_empty",
            ),
            (
                "not_present",
                {"prefix": "/present", "headers": [{"name": "x-flag", "present_match": False}]},
                "up_not_present",
            ),
            (
                "hdr_suffix",
                {
                    "prefix": "/ua",
                    "headers": [{"name": "user-agent", "string_match": {"suffix": "bot"}}],
                },
                "up_hdr_suffix",
            ),
            (
                "hdr_contains",
                {
                    "prefix": "/ua",
                    "headers": [{"name": "x-tags", "string_match": {"contains": "beta"}}],
                },
                "up_hdr_contains",
            ),
            (
                "hdr_host",
                {
                    "prefix": "/host",
                    "headers": [{"name": ":authority", "string_match": {"prefix": "hm."}}],
                },
                "up_hdr_host",
            ),
            (
                "hdr_hostname",
                {"prefix": "/hostname", "headers": [_exact("Host", "hn.test:81")]},
                "up_hdr_hostname",
            ),
            ("catch_all", {"prefix": "/"}, "up_default"),
        ],
    ),
]

UPSTREAMS: list[str] = [cluster for _, _, routes in VIRTUAL_HOSTS for _, _, cluster in routes]


@dataclass(frozen=True)
class RoutingCase:
    host: str
    path: str
    # (name, value) pairs in send order; a name may repeat.
    headers: tuple[tuple[str, str], ...] = ()
    status: int = 200
    # The upstream that answers, or None for Envoy's own 404.
    upstream: str | None = None

    @property
    def id(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.headers)
        return f"{self.host}{self.path}" + (f"[{extra}]" if extra else "")

    def joined_headers(self) -> dict[str, str]:
        """Lower-case names → values, repeats joined with "," (what the worker builds)."""
        out: dict[str, str] = {}
        for k, v in self.headers:
            k = k.lower()
            out[k] = f"{out[k]},{v}" if k in out else v
        return out


def _ok(host: str, path: str, upstream: str, *headers: tuple[str, str]) -> RoutingCase:
    return RoutingCase(host, path, tuple(headers), 200, upstream)


def _404(host: str, path: str, *headers: tuple[str, str]) -> RoutingCase:
    return RoutingCase(host, path, tuple(headers), 404, None)


OTHER = "other.test"

CASES: list[RoutingCase] = [
    # -- virtual host selection
    _ok("exact.example.com", "/only", "up_exact"),
    _ok("EXACT.Example.COM", "/only", "up_exact"),
    _ok("exact.example.com", "/only?a=1", "up_exact"),
    _ok("exact.example.com", "/prefix", "up_exact_pre"),
    _404("exact.example.com", "/nothing"),
    _404("exact.example.com", "/Only"),
    # A port in Host is not stripped: this is not "exact.example.com", nor a *.example.com.
    _ok("exact.example.com:8080", "/only", "up_default"),
    _ok("ported.example.com:8080", "/only", "up_exact"),
    _ok("ported.example.com", "/", "up_suffix_short"),
    _ok("foo-api.example.com", "/", "up_suffix_long"),
    _ok("foo.example.com", "/", "up_suffix_short"),
    _ok("a.sub.example.com", "/", "up_suffix_sub"),
    _ok("a.b.sub.example.com", "/", "up_suffix_sub"),
    # A wildcard never matches an empty remainder.
    _ok("-api.example.com", "/", "up_suffix_short"),
    _ok("example.com", "/", "up_default"),
    _ok("api.anything", "/", "up_prefix_short"),
    _ok("api.v2.anything", "/", "up_prefix_long"),
    _ok("API.V2.X", "/", "up_prefix_long"),
    # Suffix wildcards are tried before prefix wildcards.
    _ok("api.example.com", "/", "up_suffix_short"),
    _ok("api.", "/", "up_default"),
    _ok("api.x:9000", "/", "up_prefix_short"),
    # -- route matching in the default virtual host
    _ok(OTHER, "/exact", "up_path"),
    _ok(OTHER, "/exact?x=1", "up_path"),
    _ok(OTHER, "/exact/", "up_default"),
    _ok(OTHER, "/EXACT", "up_default"),
    _ok(OTHER, "/caseinsens", "up_path_ci"),
    _ok(OTHER, "/CASEINSENS?q", "up_path_ci"),
    _ok(OTHER, "/api/v1/users", "up_prefix_v1"),
    _ok(OTHER, "/API/V1/users", "up_prefix_ci"),
    _ok(OTHER, "/api/v2", "up_prefix_ci"),
    _ok(OTHER, "/users/123", "up_regex"),
    _ok(OTHER, "/users/123?x=1", "up_regex"),
    _ok(OTHER, "/users/abc", "up_default"),
    _ok(OTHER, "/users/123/x", "up_default"),
    _ok(OTHER, "/USERS/123", "up_default"),
    # prefix does not see the query string
    _ok(OTHER, "/search?q=1", "up_default"),
    # -- header matchers
    _ok(OTHER, "/hdr", "up_hdr_exact", ("X-Env", "prod")),
    _ok(OTHER, "/hdr", "up_hdr_prefix", ("x-env", "STAGING")),
    _ok(OTHER, "/hdr", "up_hdr_multi", ("x-ver", "v12"), ("x-flag", "1")),
    _ok(OTHER, "/hdr", "up_hdr_missing_empty", ("x-ver", "v12")),
    _ok(OTHER, "/hdr", "up_hdr_invert", ("x-env", "dev")),
    # One header whose value has a comma is one value.
    _ok(OTHER, "/hdr", "up_hdr_invert", ("x-env", "prod,canary")),
    _ok(OTHER, "/hdr", "up_hdr_missing_empty", ("x-ver", "v12x"), ("x-flag", "1")),
    _ok(OTHER, "/hdr", "up_default", ("x-missing", "something")),
    _ok(OTHER, "/present", "up_not_present"),
    _ok(OTHER, "/present", "up_default", ("x-flag", "")),
    _ok(OTHER, "/ua", "up_hdr_suffix", ("user-agent", "googlebot")),
    _ok(
        OTHER,
        "/ua",
        "up_hdr_contains",
        ("user-agent", "curl"),
        ("x-tags", "alpha"),
        ("x-tags", "beta"),
    ),
    _ok(OTHER, "/ua", "up_default", ("user-agent", "Bot-ish")),
    # user-agent repeats are coalesced with "," by Envoy's codec, and matched joined.
    _ok(OTHER, "/ua", "up_hdr_suffix", ("user-agent", "a"), ("user-agent", "googlebot")),
    _ok("hm.other.test", "/host", "up_hdr_host"),
    _ok(OTHER, "/host", "up_default"),
    _ok("hn.test:81", "/hostname", "up_hdr_hostname"),
    _ok("HN.test:81", "/hostname", "up_default"),
]

# Where proxyd knowingly differs from Envoy 1.40: a repeated non-inline header matches
# when any one of its values matches, but RouteTable sees the values joined with ",".
KNOWN_DIVERGENCES: list[RoutingCase] = [
    _ok(OTHER, "/hdr", "up_hdr_exact", ("x-env", "prod"), ("x-env", "canary")),
    _ok(OTHER, "/hdr", "up_hdr_exact", ("x-env", "canary"), ("x-env", "prod")),
]


def route_config() -> dict[str, Any]:
    """The ``route_config`` of the connection manager, as Envoy YAML data."""
    vhosts = []
    for name, domains, routes in VIRTUAL_HOSTS:
        vhosts.append(
            {
                "name": name,
                "domains": list(domains),
                "routes": [
                    {"name": rname, "match": match, "route": {"cluster": cluster}}
                    for rname, match, cluster in routes
                ],
            }
        )
    return {"name": "compat_routes", "virtual_hosts": vhosts}


def envoy_config(listen_port: int, upstream_ports: dict[str, int]) -> dict[str, Any]:
    """The bootstrap as data: one listener on 127.0.0.1, one STATIC cluster per upstream."""
    listener = http_listener(
        "compat_listener", listen_port, route_config(), stat_prefix="compat", codec_type="AUTO"
    )
    clusters = [static_cluster(name, [upstream_ports[name]]) for name in UPSTREAMS]
    return {"static_resources": {"listeners": [listener], "clusters": clusters}}


def envoy_config_yaml(listen_port: int, upstream_ports: dict[str, int]) -> str:
    """:func:`envoy_config` as YAML text (what Envoy and proxyd are given)."""
    return yaml.safe_dump(envoy_config(listen_port, upstream_ports), sort_keys=False)


def _string_match(sm: dict[str, Any]) -> StringMatch:
    ignore_case = bool(sm.get("ignore_case", False))
    for kind in ("exact", "prefix", "suffix", "contains"):
        if kind in sm:
            return StringMatch(kind, sm[kind], ignore_case)
    return StringMatch("safe_regex", sm["safe_regex"]["regex"], ignore_case)


def _header_match(h: dict[str, Any]) -> HeaderMatch:
    invert = bool(h.get("invert_match", False))
    match: StringMatch | None = None
    if "string_match" in h:
        match = _string_match(h["string_match"])
    elif "present_match" in h and not h["present_match"]:
        invert = not invert
    return HeaderMatch(
        h["name"].lower(), match, invert, bool(h.get("treat_missing_header_as_empty", False))
    )


def epoch_route_config() -> RouteConfig:
    """The same route table as epoch data, built by hand from ``VIRTUAL_HOSTS``."""
    vhosts = []
    for name, domains, routes in VIRTUAL_HOSTS:
        compiled = []
        for rname, m, cluster in routes:
            if "safe_regex" in m:
                kind, value = "safe_regex", m["safe_regex"]["regex"]
            else:
                kind = "prefix" if "prefix" in m else "path"
                value = m[kind]
            rm = RouteMatch(
                kind,
                value,
                bool(m.get("case_sensitive", True)),
                tuple(_header_match(h) for h in m.get("headers", ())),
            )
            compiled.append(Route(rname, rm, cluster))
        vhosts.append(VirtualHost(name, tuple(d.lower() for d in domains), tuple(compiled)))
    return RouteConfig("compat_routes", tuple(vhosts))


def send(port: int, case: RoutingCase) -> tuple[int, str | None]:
    """One request with the case's Host and headers (repeats kept); (status, upstream)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", case.path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", case.host)
        for name, value in case.headers:
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-upstream-name")
    finally:
        conn.close()
