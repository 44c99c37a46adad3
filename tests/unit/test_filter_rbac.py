"""The RBAC filter: its config through proxyd.config.compile_bootstrap (what compiles,
what is refused by name), and its decisions driven through an in-memory FilterStream."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio

from proxyd.epoch import HeaderMatch, StringMatch, to_wire
from proxyd.filters.api import CONTINUE, LocalReply
from proxyd.filters.rbac.filter import Factory
from proxyd.worker.stats import StatsStore
from tests.unit.filter_stream import Head, MemoryStream
from tests.unit.test_filter_config import base, compiled, hcm, overrides, reject, route

RBAC = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
ANY = {"any": True}


def with_filter(**fields: Any) -> dict[str, Any]:
    d = base()
    hcm(d)["http_filters"][0] = {"name": "rbac", "typed_config": {"@type": RBAC, **fields}}
    return d


def policy(permissions: list[Any], principals: list[Any] | None = None) -> dict[str, Any]:
    return {"permissions": permissions, "principals": principals or [ANY]}


# -- config ---------------------------------------------------------------------------------


def test_rules_compile_to_tagged_lists_in_policy_name_order() -> None:
    d = with_filter(
        rules={
            "action": "DENY",
            "policies": {
                "b": policy(
                    [{"and_rules": {"rules": [
                        {"header": {"name": ":method", "string_match": {"exact": "GET"}}},
                        {"not_rule": {"url_path": {"path": {"prefix": "/x"}}}},
                    ]}}],
                    [{"or_ids": {"ids": [
                        {"remote_ip": {"address_prefix": "10.1.2.3", "prefix_len": 8}},
                        {"source_ip": {"address_prefix": "::1", "prefix_len": 128}},
                    ]}}],
                ),
                "a": policy([{"destination_port_range": {"start": 80, "end": 90}}]),
            },
        },
        rules_stat_prefix="p_",
    )  # fmt: skip
    config = compiled(d).http_filters[0].config
    assert config["rules_stat_prefix"] == "p_" and config["shadow"] is None
    rules = config["rules"]
    assert rules["action"] == "DENY"
    assert [p[0] for p in rules["policies"]] == ["a", "b"]
    assert rules["policies"][0][1] == [["destination_port_range", 80, 90]]
    perm = rules["policies"][1][1][0]
    assert perm[0] == "and" and perm[1][0][0] == "header" and perm[1][1][0] == "not"
    assert rules["policies"][1][2] == [
        ["or", [["remote_ip", "10.0.0.0/8"], ["direct_remote_ip", "::1/128"]]]
    ]


def test_per_route_without_rbac_turns_the_filter_off() -> None:
    d = with_filter(rules={"action": "ALLOW"})
    route(d, 0)["typed_per_filter_config"] = {"rbac": {"@type": RBAC_PER_ROUTE}}
    route(d, 1)["typed_per_filter_config"] = {
        "rbac": {"@type": RBAC_PER_ROUTE, "rbac": {"rules": {"action": "LOG"}}}
    }
    assert overrides(d, 0)["rbac"].config == {"rbac": None}
    assert overrides(d, 1)["rbac"].config["rbac"]["rules"] == {"action": "LOG", "policies": []}


@pytest.mark.parametrize(
    ("rules", "where"),
    [
        ({"policies": {"p": policy([{"sourced_metadata": {"metadata_source": "ROUTE",
          "metadata_matcher": {"filter": "f", "path": [{"key": "k"}],
          "value": {"present_match": True}}}}])}}, "permissions[0].sourced_metadata.metadata_source"),
        ({"policies": {"p": policy([{"requested_server_name": {"exact": "a"}}],
          [{"filter_state": {"key": "k", "string_match": {"exact": "v"}}}])}},
         "principals[0].filter_state"),
        ({"policies": {"p": {**policy([ANY]), "condition": {"const_expr": {"bool_value": True}}}}},
         "condition"),
        ({"audit_logging_options": {"audit_condition": "ON_DENY"}}, "audit_logging_options"),
    ],
)  # fmt: skip
def test_refused_by_name(rules: dict[str, Any], where: str) -> None:
    err = reject(with_filter(rules=rules))
    assert err.path.endswith(where), err.path
    assert "not supported" in err.reason


def test_track_per_rule_stats_is_refused() -> None:
    err = reject(with_filter(track_per_rule_stats=True))
    assert err.path.endswith("typed_config.track_per_rule_stats")


def test_a_malformed_cidr_names_its_path() -> None:
    bad = {"direct_remote_ip": {"address_prefix": "not-an-ip", "prefix_len": 8}}
    err = reject(with_filter(rules={"policies": {"p": policy([ANY], [bad])}}))
    assert err.path.endswith("principals[0].direct_remote_ip")
    assert "malformed CIDR" in err.reason


# -- decisions ------------------------------------------------------------------------------


def header(name: str, value: str, invert: bool = False) -> list[Any]:
    match = HeaderMatch(name=name, match=StringMatch("exact", value), invert_match=invert)
    return ["header", to_wire(match)]


def path(kind: str, value: str) -> list[Any]:
    return ["path", to_wire(StringMatch(kind, value))]


def sni(kind: str, value: str) -> list[Any]:
    return ["sni", to_wire(StringMatch(kind, value))]


def rules(action: str, *policies: tuple[str, list[Any], list[Any]]) -> dict[str, Any]:
    return {"action": action, "policies": [list(p) for p in policies]}


def settings(rules_: dict[str, Any] | None = None, shadow: dict[str, Any] | None = None,
             prefix: str = "", shadow_prefix: str = "") -> dict[str, Any]:  # fmt: skip
    return {
        "rules": rules_,
        "shadow": shadow,
        "rules_stat_prefix": prefix,
        "shadow_rules_stat_prefix": shadow_prefix,
    }


def make(config: dict[str, Any], per_route: Any = None) -> tuple[Factory, StatsStore]:
    store = StatsStore()
    return Factory("rbac", config, per_route, store.named("http.ingress.")), store


def decide(f: Factory, stream: MemoryStream | None = None) -> Any:
    async def go() -> Any:
        return await f.create().on_request_headers(stream or MemoryStream(), True)

    return trio.run(go)


def stream(
    method: str = "GET", path_: str = "/", host: str = "example.com", **headers: str
) -> MemoryStream:
    return MemoryStream(head=Head(method=method, path=path_, host=host, headers=dict(headers)))


def test_allow_needs_a_matching_policy() -> None:
    f, store = make(settings(rules("ALLOW", ("get", [header(":method", "GET")], [["any"]]))))
    assert f.pseudo and f.wanted_headers == frozenset()
    assert decide(f, stream("GET")) is CONTINUE
    reply = decide(f, stream("POST"))
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.body) == (403, "RBAC: access denied")
    assert reply.details == "rbac_access_denied_matched_policy[none]"
    assert store.report()[0] == {
        "http.ingress.rbac.allowed": 1,
        "http.ingress.rbac.denied": 1,
        "http.ingress.rbac.shadow_allowed": 0,
        "http.ingress.rbac.shadow_denied": 0,
    }


def test_deny_names_the_first_matching_policy() -> None:
    f, _ = make(settings(rules(
        "DENY",
        ("a-admin", [path("prefix", "/admin")], [["any"]]),
        ("b-all", [["any"]], [header("x-bad", "1")]),
    )))  # fmt: skip
    assert f.wanted_headers == {"x-bad"}
    assert decide(f, stream(path_="/public")) is CONTINUE
    reply = decide(f, stream(path_="/admin?x=1", **{"x-bad": "1"}))
    assert isinstance(reply, LocalReply)
    assert reply.details == "rbac_access_denied_matched_policy[a-admin]"


def test_log_allows_everything_and_counts_it() -> None:
    f, store = make(settings(rules("LOG", ("p", [["any"]], [["any"]])), prefix="x"))
    assert decide(f) is CONTINUE
    assert store.report()[0]["http.ingress.rbac.x.allowed"] == 1


def test_empty_allow_denies_and_empty_deny_allows() -> None:
    assert isinstance(decide(make(settings(rules("ALLOW")))[0]), LocalReply)
    assert decide(make(settings(rules("DENY")))[0]) is CONTINUE


def test_shadow_rules_only_count() -> None:
    f, store = make(settings(shadow=rules("DENY", ("x", [["any"]], [["any"]])), shadow_prefix="s_"))
    assert decide(f) is CONTINUE
    counted = store.report()[0]
    assert counted["http.ingress.rbac.s_.shadow_denied"] == 1
    assert counted["http.ingress.rbac.allowed"] == 0


def test_per_route_rules_count_in_the_filters_stats() -> None:
    per_route = {"rbac": settings(rules("DENY", ("p", [["any"]], [["any"]])), prefix="route_")}
    f, store = make(settings(prefix="main_"), per_route)
    assert isinstance(decide(f), LocalReply)
    assert store.report()[0]["http.ingress.rbac.main_.denied"] == 1


def test_per_route_without_rbac_runs_nothing() -> None:
    f, _ = make(settings(rules("ALLOW")), {"rbac": None})
    assert not f.decodes


@pytest.mark.parametrize(
    ("rule", "addresses", "matches"),
    [
        (["remote_ip", "10.0.0.0/8"], ("10.1.2.3", "127.0.0.1", "127.0.0.1", 80), True),
        (["remote_ip", "10.0.0.0/8"], ("11.1.2.3", "10.0.0.1", "127.0.0.1", 80), False),
        (["direct_remote_ip", "10.0.0.0/8"], ("11.1.2.3", "10.0.0.1", "127.0.0.1", 80), True),
        (["direct_remote_ip", "::/0"], ("10.0.0.1", "10.0.0.1", "127.0.0.1", 80), False),
        (["direct_remote_ip", "0.0.0.0/0"], ("x", "/run/proxyd.sock", "", 0), False),
        (["destination_ip", "127.0.0.0/8"], ("1.1.1.1", "1.1.1.1", "127.0.0.2", 80), True),
        (["destination_port", 80], ("1.1.1.1", "1.1.1.1", "127.0.0.2", 80), True),
        (["destination_port", 81], ("1.1.1.1", "1.1.1.1", "127.0.0.2", 80), False),
        (["destination_port_range", 80, 81], ("", "", "", 80), True),
        (["destination_port_range", 70, 80], ("", "", "", 80), False),
    ],
)
def test_address_rules(
    rule: list[Any], addresses: tuple[str, str, str, int], matches: bool
) -> None:
    f, _ = make(settings(rules("ALLOW", ("p", [["any"]], [rule]))))
    assert f.addresses
    s = stream()
    s.addresses = addresses
    assert (decide(f, s) is CONTINUE) is matches


def tls_stream(sni_: str, peer: dict[str, Any] | None) -> MemoryStream:
    s = stream()
    s.tls = SimpleNamespace(sni=sni_, peer=peer)
    return s


PEER = {
    "subject": ((("commonName", "client"),),),
    "subjectAltName": (("URI", "spiffe://test/client"), ("DNS", "client.test")),
}


def authenticated(kind: str | None = None, value: str = "") -> list[Any]:
    return ["authenticated", None if kind is None else to_wire(StringMatch(kind, value))]


@pytest.mark.parametrize(
    ("rule", "sent", "matches"),
    [
        (sni("exact", "a.test"), tls_stream("a.test", None), True),
        (sni("exact", ""), tls_stream("a.test", None), False),
        (sni("exact", ""), tls_stream("", None), True),  # TLS without SNI
        (authenticated(), stream(), False),  # plaintext
        (authenticated(), tls_stream("", None), True),  # any TLS connection
        (authenticated("exact", "spiffe://test/client"), tls_stream("", PEER), True),
        (authenticated("exact", "client.test"), tls_stream("", PEER), True),  # DNS SAN
        (authenticated("exact", "CN=client"), tls_stream("", PEER), True),  # the subject
        (authenticated("exact", "other"), tls_stream("", PEER), False),
        (authenticated("exact", "client.test"), tls_stream("", None), False),  # no certificate
        (header(":scheme", "https"), tls_stream("", None), True),
    ],
)
def test_tls_rules(rule: list[Any], sent: MemoryStream, matches: bool) -> None:
    f, _ = make(settings(rules("ALLOW", ("p", [["any"]], [rule]))))
    assert (decide(f, sent) is CONTINUE) is matches


def test_authenticated_compiles() -> None:
    named = {"authenticated": {"principal_name": {"exact": "spiffe://test/client"}}}
    policies = {"p": policy([ANY], [named, {"authenticated": {}}])}
    config = compiled(with_filter(rules={"policies": policies})).http_filters[0].config
    assert config["rules"]["policies"][0][2] == [
        authenticated("exact", "spiffe://test/client"),
        authenticated(),
    ]


@pytest.mark.parametrize(
    ("rule", "sent", "matches"),
    [
        (path("exact", "/q"), stream(path_="/q?x=1#f"), True),
        (["not", path("prefix", "/a")], stream(path_="/b"), True),
        (["and", [["any"], path("prefix", "/a")]], stream(path_="/b"), False),
        (["or", [path("prefix", "/b"), path("prefix", "/a")]], stream(path_="/b"), True),
        (header(":authority", "h.example"), stream(host="h.example"), True),
        (header("host", "h.example"), stream(host="other"), False),
        (header(":scheme", "http"), stream(), True),
        (header("x-a", "1", invert=True), stream(), False),  # missing: fails, inverted or not
        (header("x-a", "1", invert=True), stream(**{"x-a": "2"}), True),
        (sni("exact", ""), stream(), True),
        (sni("prefix", "a"), stream(), False),
    ],
)
def test_request_rules(rule: list[Any], sent: MemoryStream, matches: bool) -> None:
    f, _ = make(settings(rules("ALLOW", ("p", [rule], [["any"]]))))
    assert not f.addresses
    assert (decide(f, sent) is CONTINUE) is matches
