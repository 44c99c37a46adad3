"""The CORS, CSRF, header_mutation and health_check filters' decisions, driven through their factories with an
in-memory stream (:mod:`tests.unit.filter_stream`), and their configs through
proxyd.config.compile_bootstrap (the per-route levels, the deprecated ``cors`` field)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import trio

from proxyd.config import compile_bootstrap
from proxyd.epoch import RuntimeValue, StringMatch, to_wire
from proxyd.errors import ConfigError
from proxyd.filters.api import CONTINUE, LocalReply, Result
from proxyd.filters.cors.filter import Factory as CorsFactory
from proxyd.filters.csrf.filter import Factory as CsrfFactory
from proxyd.filters.csrf.filter import host_and_port
from proxyd.filters.header_mutation.filter import Factory as HmFactory
from proxyd.filters.health_check.filter import cluster_status
from proxyd.protocol.http1 import ResponseHeadParser
from proxyd.protocol.http1_headers import response_head
from proxyd.protocol.runtime import Snapshot
from proxyd.worker.filter_chain import cut_lines, without_lines
from proxyd.worker.stats import StatsStore
from tests.unit.filter_stream import Head, MemoryStream
from tests.unit.test_filter_config import base, hcm, route, vhost

SCOPE = "http.ingress."


def exact(value: str) -> list[Any]:
    return to_wire(StringMatch("exact", value))


def policy(**fields: Any) -> dict[str, Any]:
    """A compiled CorsPolicy (proxyd.filters.cors.config), unset fields left unset."""
    out: dict[str, Any] = {
        "origins": [],
        "allow_methods": "",
        "allow_headers": "",
        "expose_headers": "",
        "max_age": "",
        "allow_credentials": None,
        "allow_private_network_access": None,
        "forward_not_matching_preflights": None,
        "filter_enabled": None,
        "shadow_enabled": None,
    }
    out.update(fields)
    return out


VHOST = policy(
    origins=[exact("https://a.example"), to_wire(StringMatch("suffix", ".t.example"))],
    allow_methods="GET, POST",
    allow_headers="x-a",
    expose_headers="x-exp",
    max_age="600",
    allow_credentials=True,
)


class Run:
    def __init__(self, levels: list[dict[str, Any]] | None, runtime: Snapshot | None = None):
        self.store = StatsStore()
        self.stats = self.store.named(SCOPE)
        per_route = None if levels is None else {"levels": levels}
        self.factory = CorsFactory("cors", {}, per_route, self.stats, runtime or Snapshot())

    def request(
        self, method: str, headers: dict[str, str], cluster: str | None = "svc"
    ) -> tuple[Result, MemoryStream]:
        s = MemoryStream(Head(method=method, headers=headers), upstream_cluster=cluster)

        async def main() -> Result:
            f = self.factory.create()
            got = await f.on_request_headers(s, True)
            if got is CONTINUE:
                await f.on_response_headers(s, s, True)  # type: ignore[arg-type]
            return got

        return trio.run(main), s

    def count(self, name: str) -> int:
        return self.stats.value(f"cors.{name}")


def preflight(origin: str, **more: str) -> dict[str, str]:
    return {"origin": origin, "access-control-request-method": "PUT", **more}


def test_preflight_allowed_is_answered_with_the_policy() -> None:
    run = Run([VHOST])
    got, s = run.request("OPTIONS", preflight("https://a.example"))
    assert isinstance(got, LocalReply) and got.status == 200 and got.body == ""
    assert got.details == "cors_response"
    assert got.headers == (
        ("access-control-allow-origin", "https://a.example"),
        ("access-control-allow-credentials", "true"),
        ("access-control-allow-methods", "GET, POST"),
        ("access-control-allow-headers", "x-a"),
        ("access-control-max-age", "600"),
    )
    assert run.count("origin_valid") == 1 and run.count("origin_invalid") == 0


def test_preflight_from_another_origin_goes_upstream_unless_told_not_to() -> None:
    run = Run([VHOST])
    got, s = run.request("OPTIONS", preflight("https://evil.example"))
    assert got is CONTINUE and s.response_headers == {}
    assert run.count("origin_invalid") == 1
    run = Run([VHOST, policy(forward_not_matching_preflights=False)])
    got, _ = run.request("OPTIONS", preflight("https://evil.example"))
    assert isinstance(got, LocalReply)
    assert "access-control-allow-origin" not in dict(got.headers)


def test_not_a_preflight() -> None:
    run = Run([VHOST])
    got, s = run.request("OPTIONS", {"origin": "https://a.example"})
    assert got is CONTINUE  # no access-control-request-method: a simple request
    assert s.response_headers["access-control-allow-origin"] == "https://a.example"
    got, s = run.request("OPTIONS", {"access-control-request-method": "GET"})
    assert got is CONTINUE and s.response_headers == {}  # no origin: not CORS
    assert run.count("origin_valid") == 1


def test_simple_request_gets_the_headers() -> None:
    run = Run([VHOST])
    got, s = run.request("GET", {"origin": "https://x.t.example"})
    assert got is CONTINUE
    assert s.response_headers == {
        "access-control-allow-origin": "https://x.t.example",
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "x-exp",
    }
    got, s = run.request("GET", {"origin": "https://evil.example"})
    assert s.response_headers == {}


def test_levels_merge_field_by_field_most_specific_first() -> None:
    route_level = policy(allow_methods="*", allow_headers="*", allow_credentials=False)
    run = Run([VHOST, route_level])
    got, _ = run.request(
        "OPTIONS", preflight("https://a.example", **{"access-control-request-headers": "x-1"})
    )
    assert isinstance(got, LocalReply)
    assert dict(got.headers) == {
        "access-control-allow-origin": "https://a.example",
        "access-control-allow-methods": "PUT",
        "access-control-allow-headers": "x-1",
        "access-control-max-age": "600",
    }


def test_enabled_and_shadow_come_from_the_most_specific_policy() -> None:
    never = ["", 0, 100]
    always = ["", 100, 100]
    run = Run([policy(filter_enabled=never), VHOST])  # the route's (last) has none: on
    assert isinstance(run.request("OPTIONS", preflight("https://a.example"))[0], LocalReply)
    run = Run([VHOST, policy(filter_enabled=never)])
    assert not run.factory.decodes  # nothing to do on this route
    run = Run([VHOST, policy(filter_enabled=never, shadow_enabled=always)])
    got, s = run.request("OPTIONS", preflight("https://a.example"))
    assert got is CONTINUE and s.response_headers == {}
    assert run.count("origin_valid") == 1  # shadow mode counts


def test_runtime_key_enables() -> None:
    on = Snapshot([RuntimeValue("k", raw="100", uint=100)])
    run = Run([dict(VHOST, filter_enabled=["k", 0, 100])], on)
    assert isinstance(run.request("OPTIONS", preflight("https://a.example"))[0], LocalReply)


def test_wildcard_matcher_and_private_network() -> None:
    run = Run([policy(origins=[exact("*")], allow_private_network_access=True)])
    got, _ = run.request(
        "OPTIONS",
        preflight("https://any.example", **{"access-control-request-private-network": "true"}),
    )
    assert isinstance(got, LocalReply)
    assert dict(got.headers) == {
        "access-control-allow-origin": "https://any.example",
        "access-control-allow-private-network": "true",
    }


def test_no_policy_or_no_route_entry_does_nothing() -> None:
    assert not Run(None).factory.decodes
    run = Run([VHOST])
    got, s = run.request("OPTIONS", preflight("https://a.example"), cluster="")
    assert got is CONTINUE and s.response_headers == {}
    assert run.count("origin_valid") == 0


# -- the response head: a filter's header replaces the upstream's ---------------------------


def test_cut_lines_drops_every_line_of_a_name() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\ncontent-length: 2\r\n"
        b"access-control-allow-origin: x\r\n\r\n"
    )
    r = ResponseHeadParser().parse(raw, {})
    cut_lines(r, [b"access-control-allow-origin"])
    kept = response_head(r, b"", -1, False, False, [b"access-control-allow-origin: a\r\n"])
    assert kept.lower().count(b"access-control-allow-origin") == 1
    assert b"access-control-allow-origin: a\r\n" in kept
    assert b"content-length: 2" in kept
    extra = b"access-control-allow-origin: a\r\nx-other: b\r\n"
    assert without_lines(extra, [b"access-control-allow-origin"]) == b"x-other: b\r\n"


# -- CSRF ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://a.example", "a.example"),
        ("https://a.example:8443/p?q", "a.example:8443"),
        ("http://a.example:80", "a.example:80"),  # a default port stays, as in Envoy
        ("http://A.Example", "A.Example"),  # no lower-casing
        ("ftp://u:p@a.example/x", "a.example"),
        ("http://a.example?x", "a.example"),
        ("http://a.example#f", "a.example#f"),
        ("a.example", "a.example"),  # not a URL: as it is
        ("null", "null"),
        ("", ""),
    ],
)
def test_host_and_port(value: str, expected: str) -> None:
    assert host_and_port(value) == expected


class Csrf:
    def __init__(self, config: dict[str, Any], per_route: dict[str, Any] | None = None) -> None:
        self.store = StatsStore()
        self.stats = self.store.named(SCOPE)
        self.factory = CsrfFactory("csrf", config, per_route, self.stats, Snapshot())

    def request(self, method: str, host: str, headers: dict[str, str]) -> Result:
        s = MemoryStream(Head(method=method, host=host, headers=headers))

        async def main() -> Result:
            return await self.factory.create().on_request_headers(s, True)

        return trio.run(main)

    def counts(self) -> tuple[int, int, int]:
        v = self.stats.value
        return (
            v("csrf.missing_source_origin"),
            v("csrf.request_invalid"),
            v("csrf.request_valid"),
        )


ON = {"filter_enabled": ["", 100, 100], "shadow_enabled": None, "additional_origins": []}


def test_csrf_decisions_and_stats() -> None:
    c = Csrf(dict(ON, additional_origins=[exact("friend.example")]))
    assert c.request("POST", "a.example", {"origin": "http://a.example"}) is CONTINUE
    reply = c.request("PUT", "a.example", {"origin": "http://evil.example"})
    assert isinstance(reply, LocalReply) and (reply.status, reply.body) == (403, "Invalid origin")
    assert c.request("DELETE", "a.example", {"origin": "https://friend.example"}) is CONTINUE
    assert c.request("GET", "a.example", {"origin": "http://evil.example"}) is CONTINUE
    assert c.request("PATCH", "a.example", {"referer": "http://a.example/p"}) is CONTINUE
    missing = c.request("POST", "a.example", {"origin": "null", "referer": "http://a.example/"})
    assert isinstance(missing, LocalReply)
    assert c.counts() == (1, 1, 3)


def test_csrf_route_policy_replaces_and_shadow_only_counts() -> None:
    shadow = dict(ON, filter_enabled=["", 0, 100], shadow_enabled=["", 100, 100])
    c = Csrf(ON, shadow)
    assert c.request("POST", "a.example", {"origin": "http://evil.example"}) is CONTINUE
    assert c.counts() == (0, 1, 0)
    off = Csrf(ON, dict(ON, filter_enabled=["", 0, 100]))
    assert not off.factory.decodes


# -- config -------------------------------------------------------------------------------

CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
CORS_TYPE = "envoy.extensions.filters.http.cors.v3.Cors"


def with_cors() -> dict[str, Any]:
    d = copy.deepcopy(base())
    hcm(d)["http_filters"].insert(0, {"name": "cors", "typed_config": {"@type": CORS}})
    return d


def route_overrides(d: dict[str, Any], i: int) -> dict[str, Any]:
    lc = compile_bootstrap(d, "conf.yaml")
    h = lc.epoch_template.listeners[0].hcm
    assert h is not None
    return {o.name: o for o in h.route_config.virtual_hosts[0].routes[i].filter_configs}


def test_cors_levels_stack_least_specific_first() -> None:
    d = with_cors()
    hcm(d)["route_config"]["typed_per_filter_config"] = {
        "cors": {"@type": CORS_POLICY, "max_age": "1"}
    }
    vhost(d)["typed_per_filter_config"] = {"cors": {"@type": CORS_POLICY, "max_age": "2"}}
    route(d, 0)["typed_per_filter_config"] = {"cors": {"@type": CORS_POLICY, "max_age": "3"}}
    route(d, 1)["typed_per_filter_config"] = {"cors": {"@type": FILTER_CONFIG, "disabled": True}}
    first = route_overrides(d, 0)["cors"]
    assert [p["max_age"] for p in first.config["levels"]] == ["1", "2", "3"]
    second = route_overrides(d, 1)["cors"]
    assert second.disabled and second.config is None


def test_deprecated_cors_kept_under_the_type_name() -> None:
    d = with_cors()
    vhost(d)["cors"] = {"allow_methods": "GET"}
    route(d, 0)["route"]["cors"] = {"max_age": "5"}
    o = route_overrides(d, 0)[CORS_TYPE]
    assert [(p["allow_methods"], p["max_age"]) for p in o.config["levels"]] == [
        ("GET", ""),
        ("", "5"),
    ]
    assert [p["allow_methods"] for p in route_overrides(d, 1)[CORS_TYPE].config["levels"]] == [
        "GET"
    ]


def test_unknown_cors_field_is_refused_with_its_path() -> None:
    d = with_cors()
    vhost(d)["typed_per_filter_config"] = {
        "cors": {"@type": CORS_POLICY, "allow_origin_string_match": [{"exact": "x", "oops": 1}]}
    }
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(d, "conf.yaml")
    assert "allow_origin_string_match[0]" in info.value.path


# -- header_mutation ----------------------------------------------------------------------

HM = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
HM_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"
)


def hm_step(key: str, value: str = "v", action: str = "APPEND_IF_EXISTS_OR_ADD") -> Any:
    return {"append": {"header": {"key": key, "value": value}, "append_action": action}}


def hm_route(key: str) -> dict[str, Any]:
    return {
        "hm": {
            "@type": HM_ROUTE,
            "mutations": {"request_mutations": [hm_step(key)], "response_mutations": []},
        }
    }


def with_header_mutation(wins: bool) -> dict[str, Any]:
    d = copy.deepcopy(base())
    hcm(d)["http_filters"].insert(
        0,
        {
            "name": "hm",
            "typed_config": {
                "@type": HM,
                "most_specific_header_mutations_wins": wins,
                "mutations": {
                    "request_mutations": [hm_step("x-filter"), {"remove": "x-gone"}],
                    "response_mutations": [hm_step("x-resp", "r", "ADD_IF_ABSENT")],
                },
            },
        },
    )
    hcm(d)["route_config"]["typed_per_filter_config"] = hm_route("x-rc")
    vhost(d)["typed_per_filter_config"] = hm_route("x-vh")
    route(d, 0)["typed_per_filter_config"] = hm_route("x-route")
    return d


@pytest.mark.parametrize(
    ("wins", "order"),
    [(False, ["x-filter", "x-gone", "x-route", "x-vh", "x-rc"]),
     (True, ["x-filter", "x-gone", "x-rc", "x-vh", "x-route"])],
)  # fmt: skip
def test_header_mutation_steps_in_envoys_order(wins: bool, order: list[str]) -> None:
    d = with_header_mutation(wins)
    lc = compile_bootstrap(d, "conf.yaml")
    h = lc.epoch_template.listeners[0].hcm
    assert h is not None
    flt = next(f for f in h.http_filters if f.name == "hm")
    o = {x.name: x for x in h.route_config.virtual_hosts[0].routes[0].filter_configs}["hm"]
    factory = HmFactory("hm", flt.config, o.config, StatsStore().named(SCOPE))
    assert not factory.decodes and not factory.encodes  # no code per stream
    request, response = factory.header_levels
    names = [(m.request_add[0].name if m.request_add else m.request_remove[0]) for m in request]
    assert names == order
    assert [(a.name, a.action) for m in response for a in m.response_add] == [
        ("x-resp", "ADD_IF_ABSENT")
    ]


def test_header_mutation_framing_header_refused_with_its_path() -> None:
    d = with_header_mutation(False)
    vhost(d)["typed_per_filter_config"] = hm_route("content-length")
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(d, "conf.yaml")
    assert info.value.path.endswith("request_mutations[0].append.header.key")
    assert "content-length" in info.value.reason


# -- health_check -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_healthy", "status", "details"),
    [
        ({}, 200, "health_check_ok"),
        ({"a": 50}, 200, "health_check_ok_cluster_healthy"),
        ({"a": 51}, 503, "health_check_failed_cluster_unhealthy"),
        ({"nosuch": 0}, 503, "health_check_failed_no_cluster_found"),
        ({"empty": 0, "a": 0}, 200, "health_check_ok_cluster_healthy"),
        ({"empty": 1}, 503, "health_check_failed_cluster_empty"),
    ],
)
def test_health_check_cluster_status(
    min_healthy: dict[str, int], status: int, details: str
) -> None:
    membership = {"a": (2, 1), "empty": (0, 0)}
    assert cluster_status(min_healthy, membership) == (status, details)


def test_health_check_cache_time_needs_pass_through() -> None:
    d = copy.deepcopy(base())
    hcm(d)["http_filters"].insert(
        0,
        {
            "name": "hc",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.health_check.v3."
                "HealthCheck",
                "pass_through_mode": False,
                "cache_time": "5s",
            },
        },
    )
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(d, "conf.yaml")
    assert info.value.path.endswith("http_filters[0].typed_config.cache_time")
    del hcm(d)["http_filters"][0]["typed_config"]["pass_through_mode"]
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(d, "conf.yaml")
    assert info.value.reason == "value is required"
