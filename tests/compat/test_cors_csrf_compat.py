"""The CORS and CSRF filters: real Envoy and real proxyd on the same YAML.

One bootstrap (:func:`config`): listener ``ingress`` has the CORS filter, then the CSRF
filter (its own policy off: 0%), then the router; an echo upstream answers
``/echo/...`` with what it received. The virtual hosts, chosen by Host:

* ``cors.example``: a ``CorsPolicy`` in the virtual host's typed_per_filter_config
  (exact, suffix and regex origins; methods, headers, expose headers, max age,
  credentials); routes inherit it (``/echo/inherit``), override some fields
  (``/echo/override``: ``*`` methods and headers, credentials off, preflights of other
  origins answered here, private network access), disable the filter
  (``/echo/off``: ``FilterConfig`` disabled), wrap a policy in a ``FilterConfig``
  (``/echo/wrapped``), turn it off or to shadow mode with
  ``filter_enabled`` / ``shadow_enabled`` (``/echo/disabled``, ``/echo/shadow``),
  allow every origin (``/echo/any``: a matcher of ``*``), or answer themselves
  (``/direct``: a direct response, which passes the encoder filters);
* ``legacy.example``: the deprecated ``cors`` field of the virtual host and of a route
  (``/echo/route-cors``: its fields over the virtual host's);
* ``mixed.example``: a deprecated ``cors`` *and* a typed ``CorsPolicy``: Envoy ignores
  the deprecated one;
* ``csrf.example``: the CSRF policy per virtual host (enabled, additional origins) and
  per route (``/echo/shadow``: shadow only; ``/echo/off``: filter_enabled 0%);
* everything else: no policy at all.

Every case runs through Envoy, then through proxyd (one worker); what the client got
(status, body of a local answer, the CORS headers and the few others that matter) and
what the upstream received (whether it was reached, and its origin / CORS request
headers) must be equal. The ``cors.*`` and ``csrf.*`` stats from both admin endpoints
are compared last.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, run_pair
from tests.support import UpstreamServer, bootstrap, http_listener, static_cluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
CSRF = "type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
CORS_NAME = "envoy.filters.http.cors"
CSRF_NAME = "envoy.filters.http.csrf"
PREFIX = "http.ingress_http."

ALL = {"numerator": 100}
NONE = {"numerator": 0}


def _cors(**fields: Any) -> dict[str, Any]:
    return {CORS_NAME: {"@type": CORS_POLICY, **fields}}


def _csrf(**fields: Any) -> dict[str, Any]:
    return {CSRF_NAME: {"@type": CSRF, **fields}}


def _route(prefix: str, **more: Any) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": "svc"}, **more}


def config(upstream: int) -> str:
    cors_vh = {
        "name": "cors",
        "domains": ["cors.example"],
        "typed_per_filter_config": _cors(
            allow_origin_string_match=[
                {"exact": "https://a.example"},
                {"suffix": ".trusted.example"},
                {"safe_regex": {"regex": "https://r[0-9]+\\.example"}},
                {"exact": "HTTPS://CASE.EXAMPLE", "ignore_case": True},
            ],
            allow_methods="GET, POST",
            allow_headers="x-a, x-b",
            expose_headers="x-exp",
            max_age="600",
            allow_credentials=True,
        ),
        "routes": [
            _route("/echo/inherit"),
            _route(
                "/echo/override",
                typed_per_filter_config=_cors(
                    allow_methods="*",
                    allow_headers="*",
                    allow_credentials=False,
                    forward_not_matching_preflights=False,
                    allow_private_network_access=True,
                ),
            ),
            _route(
                "/echo/off",
                typed_per_filter_config={CORS_NAME: {"@type": FILTER_CONFIG, "disabled": True}},
            ),
            _route(
                "/echo/disabled",
                typed_per_filter_config=_cors(filter_enabled={"default_value": NONE}),
            ),
            _route(
                "/echo/shadow",
                typed_per_filter_config=_cors(
                    filter_enabled={"default_value": NONE},
                    shadow_enabled={"default_value": ALL},
                ),
            ),
            _route(
                "/echo/runtime-on",
                typed_per_filter_config=_cors(
                    filter_enabled={
                        "default_value": NONE,
                        "runtime_key": "cors.test.enabled",
                    }
                ),
            ),
            _route(
                "/echo/wrapped",
                typed_per_filter_config={
                    CORS_NAME: {
                        "@type": FILTER_CONFIG,
                        "config": {"@type": CORS_POLICY, "max_age": "9"},
                    }
                },
            ),
            _route(
                "/echo/any",
                typed_per_filter_config=_cors(
                    allow_origin_string_match=[{"exact": "*"}], expose_headers=""
                ),
            ),
            {
                "match": {"prefix": "/direct"},
                "direct_response": {"status": 403, "body": {"inline_string": "nope"}},
            },
            _route("/"),
        ],
    }
    legacy_vh = {
        "name": "legacy",
        "domains": ["legacy.example"],
        "cors": {
            "allow_origin_string_match": [{"exact": "https://legacy.example"}],
            "allow_methods": "PUT",
            "expose_headers": "x-legacy",
        },
        "routes": [
            {
                "match": {"prefix": "/echo/route-cors"},
                "route": {
                    "cluster": "svc",
                    "cors": {"allow_methods": "DELETE", "max_age": "5", "allow_credentials": True},
                },
            },
            _route("/"),
        ],
    }
    mixed_vh = {
        "name": "mixed",
        "domains": ["mixed.example"],
        "cors": {"allow_origin_string_match": [{"exact": "https://legacy.example"}]},
        "routes": [
            _route(
                "/echo/typed",
                typed_per_filter_config=_cors(
                    allow_origin_string_match=[{"exact": "https://typed.example"}],
                    allow_methods="PATCH",
                ),
            ),
            _route("/"),
        ],
    }
    csrf_vh = {
        "name": "csrf",
        "domains": ["csrf.example", "csrf.example:8080"],
        "typed_per_filter_config": _csrf(
            filter_enabled={"default_value": ALL},
            additional_origins=[{"exact": "friend.example"}, {"suffix": ".partner.example"}],
        ),
        "routes": [
            _route(
                "/echo/shadow",
                typed_per_filter_config=_csrf(
                    filter_enabled={"default_value": NONE},
                    shadow_enabled={"default_value": ALL},
                ),
            ),
            _route(
                "/echo/off",
                typed_per_filter_config=_csrf(filter_enabled={"default_value": NONE}),
            ),
            _route(
                "/echo/nofilter",
                typed_per_filter_config={CSRF_NAME: {"@type": FILTER_CONFIG, "disabled": True}},
            ),
            _route("/"),
        ],
    }
    plain_vh = {"name": "plain", "domains": ["*"], "routes": [_route("/")]}
    route_config = {
        "name": "local",
        "virtual_hosts": [cors_vh, legacy_vh, mixed_vh, csrf_vh, plain_vh],
    }
    http_filters = [
        {"name": CORS_NAME, "typed_config": {"@type": CORS}},
        {
            "name": CSRF_NAME,
            "typed_config": {"@type": CSRF, "filter_enabled": {"default_value": NONE}},
        },
    ]
    doc = bootstrap(
        [http_listener("ingress", 0, route_config, http_filters, stat_prefix="ingress_http")],
        [static_cluster("svc", [upstream])],
        layered_runtime={
            "layers": [{"name": "static", "static_layer": {"cors.test.enabled": 100}}]
        },
    )
    return yaml.safe_dump(doc, sort_keys=False)


@dataclass(frozen=True)
class Case:
    method: str
    host: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


def _preflight(host: str, path: str, origin: str, *more: tuple[str, str]) -> Case:
    return Case(
        "OPTIONS",
        host,
        path,
        (("origin", origin), ("access-control-request-method", "PUT"), *more),
    )


def _get(host: str, path: str, origin: str | None = None, *more: tuple[str, str]) -> Case:
    headers = (("origin", origin),) if origin is not None else ()
    return Case("GET", host, path, (*headers, *more))


C = "cors.example"
L = "legacy.example"
M = "mixed.example"
X = "csrf.example"
ASK_HEADERS = ("access-control-request-headers", "x-one, x-two")
PNA = ("access-control-request-private-network", "true")

CASES: dict[str, Case] = {
    # -- CORS: the virtual host's policy --------------------------------------------
    "preflight_allowed": _preflight(C, "/echo/inherit", "https://a.example", ASK_HEADERS),
    "preflight_suffix": _preflight(C, "/echo/inherit", "https://x.trusted.example"),
    "preflight_regex": _preflight(C, "/echo/inherit", "https://r42.example"),
    "preflight_regex_partial": _preflight(C, "/echo/inherit", "https://r42.example.evil"),
    "preflight_ignore_case": _preflight(C, "/echo/inherit", "https://Case.Example"),
    "preflight_denied_forwarded": _preflight(C, "/echo/inherit", "https://evil.example"),
    "preflight_no_method": Case("OPTIONS", C, "/echo/inherit", (("origin", "https://a.example"),)),
    "preflight_empty_method": Case(
        "OPTIONS",
        C,
        "/echo/inherit",
        (("origin", "https://a.example"), ("access-control-request-method", "")),
    ),
    "options_no_origin": Case(
        "OPTIONS", C, "/echo/inherit", (("access-control-request-method", "GET"),)
    ),
    "options_empty_origin": _preflight(C, "/echo/inherit", ""),
    "preflight_pna_not_allowed": _preflight(C, "/echo/inherit", "https://a.example", PNA),
    "simple_allowed": _get(C, "/echo/inherit", "https://a.example"),
    "simple_denied": _get(C, "/echo/inherit", "https://evil.example"),
    "simple_no_origin": _get(C, "/echo/inherit"),
    "simple_post_allowed": Case(
        "POST", C, "/echo/inherit", (("origin", "https://a.example"),), b"data"
    ),
    "simple_404_path_allowed": _get(C, "/status/404", "https://a.example"),
    "direct_response_allowed": _get(C, "/direct", "https://a.example"),
    "direct_response_denied": _get(C, "/direct", "https://evil.example"),
    # -- CORS: per-route override, disable, shadow, runtime ---------------------------
    "override_preflight_star": _preflight(
        C, "/echo/override", "https://a.example", ASK_HEADERS, PNA
    ),
    "override_preflight_star_no_headers": _preflight(C, "/echo/override", "https://a.example"),
    "override_preflight_denied_answered": _preflight(C, "/echo/override", "https://evil.example"),
    "override_simple_no_credentials": _get(C, "/echo/override", "https://a.example"),
    "override_pna_false": _preflight(
        C, "/echo/override", "https://a.example", ("access-control-request-private-network", "no")
    ),
    "route_disabled_preflight": _preflight(C, "/echo/off", "https://a.example"),
    "route_disabled_simple": _get(C, "/echo/off", "https://a.example"),
    "filter_enabled_0_preflight": _preflight(C, "/echo/disabled", "https://a.example"),
    "filter_enabled_0_simple": _get(C, "/echo/disabled", "https://a.example"),
    "shadow_preflight": _preflight(C, "/echo/shadow", "https://a.example"),
    "shadow_simple_denied": _get(C, "/echo/shadow", "https://evil.example"),
    "runtime_enables": _preflight(C, "/echo/runtime-on", "https://a.example"),
    "wrapped_policy_merges": _preflight(C, "/echo/wrapped", "https://a.example"),
    "any_origin_preflight": _preflight(C, "/echo/any", "https://whoever.example"),
    "any_origin_simple": _get(C, "/echo/any", "null"),
    # -- CORS: the deprecated field ---------------------------------------------------
    "legacy_preflight": _preflight(L, "/echo/x", "https://legacy.example"),
    "legacy_simple": _get(L, "/echo/x", "https://legacy.example"),
    "legacy_denied": _preflight(L, "/echo/x", "https://evil.example"),
    "legacy_route_field": _preflight(L, "/echo/route-cors", "https://legacy.example"),
    "legacy_route_simple": _get(L, "/echo/route-cors", "https://legacy.example"),
    "mixed_typed_wins": _preflight(M, "/echo/typed", "https://typed.example"),
    "mixed_legacy_ignored": _preflight(M, "/echo/typed", "https://legacy.example"),
    "mixed_legacy_only": _preflight(M, "/echo/x", "https://legacy.example"),
    "no_policy_preflight": _preflight("other.example", "/echo/x", "https://a.example"),
    # -- CSRF -------------------------------------------------------------------------
    "csrf_same_origin": Case("POST", X, "/echo/a", (("origin", "http://csrf.example"),), b"x"),
    "csrf_cross_origin": Case("POST", X, "/echo/a", (("origin", "http://evil.example"),), b"x"),
    "csrf_port_mismatch": Case(
        "POST", X + ":8080", "/echo/a", (("origin", "http://csrf.example"),)
    ),
    "csrf_port_match": Case(
        "PUT", X + ":8080", "/echo/a", (("origin", "https://csrf.example:8080"),)
    ),
    "csrf_default_port_dropped": Case(
        "DELETE", X, "/echo/a", (("origin", "http://csrf.example:80"),)
    ),
    "csrf_upper_case_origin": Case("PATCH", X, "/echo/a", (("origin", "http://CSRF.Example"),)),
    "csrf_referer": Case("POST", X, "/echo/a", (("referer", "http://csrf.example/page?q=1"),)),
    "csrf_referer_cross": Case("POST", X, "/echo/a", (("referer", "http://evil.example/p"),)),
    "csrf_missing_origin": Case("POST", X, "/echo/a"),
    "csrf_null_origin": Case("POST", X, "/echo/a", (("origin", "null"),)),
    "csrf_null_origin_referer_ignored": Case(
        "POST", X, "/echo/a", (("origin", "null"), ("referer", "http://csrf.example/"))
    ),
    "csrf_empty_origin_referer": Case(
        "POST", X, "/echo/a", (("origin", ""), ("referer", "http://csrf.example/"))
    ),
    "csrf_referer_null": Case("POST", X, "/echo/a", (("referer", "null"),)),
    "csrf_origin_no_scheme": Case("POST", X, "/echo/a", (("origin", "csrf.example"),)),
    "csrf_other_scheme": Case("POST", X, "/echo/a", (("origin", "ftp://csrf.example"),)),
    "csrf_user_info": Case("POST", X, "/echo/a", (("origin", "http://u:p@csrf.example"),)),
    "csrf_origin_fragment": Case("POST", X, "/echo/a", (("origin", "http://csrf.example#f"),)),
    "csrf_origin_query": Case("POST", X, "/echo/a", (("origin", "http://csrf.example?x"),)),
    "csrf_host_case_kept": Case(
        "POST", "CSRF.example", "/echo/a", (("origin", "http://csrf.example"),)
    ),
    "csrf_shadow_missing": Case("POST", X, "/echo/shadow"),
    "csrf_get_not_checked": Case("GET", X, "/echo/a", (("origin", "http://evil.example"),)),
    "csrf_additional_exact": Case("POST", X, "/echo/a", (("origin", "https://friend.example"),)),
    "csrf_additional_suffix": Case(
        "POST", X, "/echo/a", (("origin", "http://api.partner.example"),)
    ),
    "csrf_shadow": Case("POST", X, "/echo/shadow", (("origin", "http://evil.example"),)),
    "csrf_route_off": Case("POST", X, "/echo/off", (("origin", "http://evil.example"),)),
    "csrf_route_no_filter": Case("POST", X, "/echo/nofilter", (("origin", "http://evil.example"),)),
    "csrf_filter_level_off": Case(
        "POST", "other.example", "/echo/a", (("origin", "http://evil.example"),)
    ),
}

# Response headers compared (the rest vary or are the same everywhere: date, ...).
COMPARED = (
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
    "access-control-expose-headers",
    "access-control-allow-private-network",
    "content-type",
    "content-length",
    "x-upstream-name",
)
# What the upstream received that is compared.
ECHOED = (
    "origin",
    "referer",
    "access-control-request-method",
    "access-control-request-headers",
    "access-control-request-private-network",
)


def play(port: int, case: Case) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"host": case.host, **dict(case.headers)}
        conn.request(case.method, case.path, body=case.body or None, headers=headers)
        r = conn.getresponse()
        body = r.read()
        got: dict[str, Any] = {
            "status": r.status,
            "headers": sorted((k.lower(), v) for k, v in r.getheaders() if k.lower() in COMPARED),
        }
        if r.getheader("x-upstream-name") and case.path.startswith("/echo/"):
            echo = json.loads(body)
            got["upstream"] = sorted((k, v) for k, v in echo["headers"] if k in ECHOED)
            got["headers"] = [h for h in got["headers"] if h[0] != "content-length"]
        else:
            got["body"] = body.decode("latin-1")
        return got
    finally:
        conn.close()


def filter_stats(stats: dict[str, int]) -> dict[str, int]:
    return {
        k: v
        for k, v in stats.items()
        if k.startswith(PREFIX + "cors.") or k.startswith(PREFIX + "csrf.")
    }


def play_all(port: int) -> dict[str, dict[str, Any]]:
    return {name: play(port, case) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    upstream = UpstreamServer("svc").start()
    try:
        yield run_pair(
            config(upstream.port),
            tmp_path_factory.mktemp("cors"),
            lambda port_of: play_all(port_of("ingress")),
            filter_stats,
        )
    finally:
        upstream.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_proxyd_answers_like_envoy(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_stats_like_envoy(results: Pair) -> None:
    assert results.proxyd.stats == results.envoy.stats


def test_envoy_behaves_as_the_cases_say(results: Pair) -> None:
    """The facts the cases were written from, checked on Envoy itself."""
    e = results.envoy.replies

    def h(name: str) -> dict[str, str]:
        return dict(e[name]["headers"])

    assert e["preflight_allowed"]["status"] == 200 and "upstream" not in e["preflight_allowed"]
    assert h("preflight_allowed")["access-control-allow-origin"] == "https://a.example"
    assert h("preflight_allowed")["access-control-allow-methods"] == "GET, POST"
    assert "upstream" in e["preflight_denied_forwarded"]
    assert "upstream" not in e["override_preflight_denied_answered"]
    assert h("wrapped_policy_merges")["access-control-max-age"] == "9"
    assert h("wrapped_policy_merges")["access-control-allow-methods"] == "GET, POST"
    assert h("override_preflight_star")["access-control-allow-methods"] == "PUT"
    assert h("override_preflight_star")["access-control-allow-headers"] == "x-one, x-two"
    assert h("simple_allowed")["access-control-expose-headers"] == "x-exp"
    assert "access-control-allow-origin" not in h("simple_denied")
    assert "upstream" in e["route_disabled_preflight"]
    assert "upstream" in e["shadow_preflight"]
    assert "upstream" not in e["runtime_enables"]
    assert "upstream" not in e["legacy_preflight"]
    assert h("legacy_route_field")["access-control-allow-methods"] == "DELETE"
    assert "upstream" in e["mixed_legacy_ignored"]
    assert e["csrf_cross_origin"]["status"] == 403
    assert e["csrf_cross_origin"]["body"] == "Invalid origin"
    assert e["csrf_same_origin"]["status"] == 200
    assert e["csrf_shadow"]["status"] == 200
    stats = results.envoy.stats
    assert stats[PREFIX + "cors.origin_valid"] > 0 and stats[PREFIX + "cors.origin_invalid"] > 0
    assert stats[PREFIX + "csrf.request_invalid"] > 0
