"""Route header mutations: real Envoy and real proxyd on the same YAML.

One route table (:func:`route_config`) has request/response_headers_to_add/remove at
the route configuration, virtual host and route level, every ``append_action``,
``keep_empty_value``, the deprecated ``append``, ``%OPERATOR%`` values, and routes whose
answer is local (direct_response, redirect, no healthy upstream, route timeout, a fault
filter abort, no route). Three listeners serve it: ``ingress``; ``specific`` (the same
table with ``most_specific_header_mutations_wins: true``); ``edge``
(``use_remote_address: true``). Every case is played against Envoy and then proxyd and
must come back equal: status, body, the response headers the client sees, and the method,
path and headers the upstream received (by name; values of one name in order).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.compat.test_errors_vs_envoy import described
from tests.integration.test_proxy_errors import exchange
from tests.support import ProxydProcess, UpstreamServer, free_port

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def add(key: str, value: str, action: str = "", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"header": {"key": key, "value": value}}
    if action:
        out["append_action"] = action
    out.update(extra)
    return out


def route(prefix: str, **fields: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"match": {"prefix": prefix}}
    if not any(k in fields for k in ("redirect", "direct_response", "route")):
        r["route"] = {"cluster": "svc"}
    r.update(fields)
    return r


def case(name: str, **fields: Any) -> dict[str, Any]:
    """A route for requests with ``x-case: <name>`` (any path: the upstream's /echo)."""
    r = route("/", **fields)
    r["match"]["headers"] = [{"name": "x-case", "string_match": {"exact": name}}]
    return r


SUBST = "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"


def routes() -> list[dict[str, Any]]:
    return [
        case("plainroute"),
        case(
            "append",
            request_headers_to_add=[add("x-multi", "a"), add("x-multi", "b")],
            response_headers_to_add=[add("x-r-multi", "a"), add("x-r-multi", "b")],
        ),
        case(
            "absent",
            request_headers_to_add=[
                add("x-absent", "route", "ADD_IF_ABSENT"),
                add("x-absent-twice", "one", "ADD_IF_ABSENT"),
                add("x-absent-twice", "two", "ADD_IF_ABSENT"),
            ],
            response_headers_to_add=[
                add("x-upstream-name", "mine", "ADD_IF_ABSENT"),
                add("x-r-absent", "route", "ADD_IF_ABSENT"),
            ],
        ),
        case(
            "overwrite",
            request_headers_to_add=[
                add("x-ow", "route", "OVERWRITE_IF_EXISTS_OR_ADD"),
                add("x-ow-twice", "one", "OVERWRITE_IF_EXISTS_OR_ADD"),
                add("x-ow-twice", "two", "OVERWRITE_IF_EXISTS_OR_ADD"),
                add("user-agent", "proxy-agent", "OVERWRITE_IF_EXISTS_OR_ADD"),
            ],
            response_headers_to_add=[
                add("x-upstream-name", "mine", "OVERWRITE_IF_EXISTS_OR_ADD"),
                add("content-type", "text/x-mine", "OVERWRITE_IF_EXISTS_OR_ADD"),
            ],
        ),
        case(
            "ifexists",
            request_headers_to_add=[
                add("x-ie", "route", "OVERWRITE_IF_EXISTS"),
                add("x-ie-missing", "route", "OVERWRITE_IF_EXISTS"),
            ],
            response_headers_to_add=[
                add("x-upstream-name", "mine", "OVERWRITE_IF_EXISTS"),
                add("x-r-ie-missing", "mine", "OVERWRITE_IF_EXISTS"),
            ],
        ),
        case(
            "empty",
            request_headers_to_add=[
                add("x-empty", ""),
                add("x-keep", "", keep_empty_value=True),
                add("x-keep-ow", "", "OVERWRITE_IF_EXISTS_OR_ADD", keep_empty_value=True),
                add("x-empty-ow", "", "OVERWRITE_IF_EXISTS_OR_ADD"),
            ],
            response_headers_to_add=[
                add("x-r-empty", ""),
                add("x-r-keep", "", keep_empty_value=True),
            ],
        ),
        case(
            "remove",
            request_headers_to_remove=[
                "x-remove-me",
                "User-Agent",
                "x-request-id",
                "x-forwarded-proto",
                "x-rc",
            ],
            response_headers_to_remove=["x-upstream-name", "content-type", "X-Resp-RC"],
        ),
        case(
            "removeadd",
            request_headers_to_remove=["x-ra"],
            request_headers_to_add=[add("x-ra", "new")],
            response_headers_to_remove=["x-upstream-name"],
            response_headers_to_add=[add("x-upstream-name", "new")],
        ),
        case(
            "level",
            request_headers_to_add=[
                add("x-level", "route", "OVERWRITE_IF_EXISTS_OR_ADD"),
                add("x-all", "route"),
            ],
            response_headers_to_add=[
                add("x-resp-level", "route", "OVERWRITE_IF_EXISTS_OR_ADD"),
                add("x-resp-all", "route"),
            ],
        ),
        case(
            "inline",
            request_headers_to_add=[
                add("user-agent", "added"),
                add("x-forwarded-for", "10.9.9.9"),
                add("accept", "added"),
                add("x-custom", "added"),
                add("content-type", "", keep_empty_value=True),
            ],
            response_headers_to_add=[
                add("content-type", "added"),
                add("x-upstream-name", "added"),
                add("location", "/added"),
                add("location", "/again"),
            ],
        ),
        case(
            "deprecated",
            request_headers_to_add=[
                {"header": {"key": "x-dep-false", "value": "route"}, "append": False},
                {"header": {"key": "x-dep-true", "value": "route"}, "append": True},
            ],
        ),
        case(
            "subst",
            request_headers_to_add=[
                add("x-client", SUBST),
                add("x-client-port", "%DOWNSTREAM_REMOTE_ADDRESS%"),
                add("x-local", "%DOWNSTREAM_LOCAL_ADDRESS%"),
                add("x-proto", "%PROTOCOL%"),
                add("x-percent", "100%% sure"),
                add("x-mixed", f"pre-{SUBST}-post"),
                add("x-host", "%HOSTNAME%"),
            ],
            response_headers_to_add=[
                add("x-r-client", SUBST),
                add("x-r-proto", "[%PROTOCOL%]"),
            ],
        ),
        case(
            "proxyowned",
            response_headers_to_add=[
                add("server", "mine", "OVERWRITE_IF_EXISTS_OR_ADD"),
                add("x-envoy-upstream-service-time", "mine"),
            ],
            response_headers_to_remove=["date"],
        ),
        case(
            "dr",
            direct_response={"status": 200, "body": {"inline_string": "direct\n"}},
            response_headers_to_add=[
                add("x-r-dr", "route"),
                add("content-type", "text/x-dr", "OVERWRITE_IF_EXISTS_OR_ADD"),
            ],
        ),
        case(
            "rd",
            redirect={"host_redirect": "other.example"},
            response_headers_to_add=[add("x-r-rd", "route")],
            response_headers_to_remove=["location"],
        ),
        case(
            "nohost",
            route={"cluster": "empty"},
            response_headers_to_add=[add("x-r-nohost", "route")],
        ),
        case(
            "delay",
            route={"cluster": "svc", "timeout": "0.3s"},
            response_headers_to_add=[add("x-r-timeout", "route")],
        ),
    ]


def rewrites() -> list[dict[str, Any]]:
    """RouteAction's prefix_rewrite, regex_rewrite and host_rewrite_literal."""
    regex = {"pattern": {"regex": "^/re/([a-z]+)/(.*)$"}, "substitution": "/\\2"}
    return [
        route("/pre/", route={"cluster": "svc", "prefix_rewrite": "/"}),
        route("/pre2", route={"cluster": "svc", "prefix_rewrite": "/echo/"}),
        {"match": {"path": "/exact/p"}, "route": {"cluster": "svc", "prefix_rewrite": "/echo"}},
        {
            "match": {"safe_regex": {"regex": "/re/[a-z]+/.*"}},
            "route": {"cluster": "svc", "regex_rewrite": regex},
        },
        route(
            "/rx/",
            route={
                "cluster": "svc",
                "regex_rewrite": {"pattern": {"regex": "rx"}, "substitution": "echo"},
            },
        ),
        {
            "match": {"prefix": "/CI/", "case_sensitive": False},
            "route": {"cluster": "svc", "prefix_rewrite": "/"},
        },
        route(
            "/both/",
            route={
                "cluster": "svc",
                "prefix_rewrite": "/",
                "host_rewrite_literal": "rewritten.example",
            },
            request_headers_to_add=[add("x-both", "1"), add("x-envoy-original-path", "mine")],
        ),
        case("hostlit", route={"cluster": "svc", "host_rewrite_literal": "upstream.example"}),
        case("hosthdr", route={"cluster": "svc", "host_rewrite_header": "X-Up-Host"}),
        case(
            "hosthdradded",
            route={"cluster": "svc", "host_rewrite_header": "x-added-host"},
            request_headers_to_add=[add("x-added-host", "added.example")],
        ),
        case("autohost", route={"cluster": "dns", "auto_host_rewrite": True}),
        case(
            "hostregex",
            route={
                "cluster": "svc",
                "host_rewrite_path_regex": {
                    "pattern": {"regex": "^/(ec)ho$"},
                    "substitution": "\\1.example",
                },
            },
        ),
        case(
            "hostregexnomatch",
            route={
                "cluster": "svc",
                "host_rewrite_path_regex": {
                    "pattern": {"regex": "^/nomatch/(.*)$"},
                    "substitution": "\\1",
                },
            },
        ),
        case("autohoststatic", route={"cluster": "svc", "auto_host_rewrite": True}),
    ]


def route_config() -> dict[str, Any]:
    return {
        "name": "local_route",
        "request_headers_to_add": [
            add("x-rc", "rc"),
            add("x-level", "rc", "OVERWRITE_IF_EXISTS_OR_ADD"),
            add("x-all", "rc"),
        ],
        "response_headers_to_add": [
            add("x-resp-rc", "rc"),
            add("x-resp-level", "rc", "OVERWRITE_IF_EXISTS_OR_ADD"),
            add("x-resp-all", "rc"),
        ],
        "request_headers_to_remove": ["x-rc-remove"],
        "virtual_hosts": [
            {
                "name": "narrow",
                "domains": ["narrow.example"],
                "routes": [route("/only/")],
            },
            {
                "name": "plain",
                "domains": ["plain.example"],
                "routes": [route("/")],
            },
            {
                "name": "main",
                "domains": ["*"],
                "request_headers_to_add": [
                    add("x-vh", "vh"),
                    add("x-level", "vh", "OVERWRITE_IF_EXISTS_OR_ADD"),
                    add("x-all", "vh"),
                ],
                "request_headers_to_remove": ["x-vh-remove"],
                "response_headers_to_add": [
                    add("x-resp-vh", "vh"),
                    add("x-resp-level", "vh", "OVERWRITE_IF_EXISTS_OR_ADD"),
                    add("x-resp-all", "vh"),
                ],
                "routes": [*routes(), *rewrites(), route("/")],
            },
        ],
    }


def listener(name: str, port: int, rc: dict[str, Any], edge: bool = False) -> dict[str, Any]:
    hcm: dict[str, Any] = {
        "@type": HCM,
        "stat_prefix": name,
        "route_config": rc,
        "http_filters": [
            {
                "name": "envoy.filters.http.fault",
                "typed_config": {
                    "@type": FAULT,
                    "abort": {"header_abort": {}, "percentage": {"numerator": 100}},
                },
            },
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ],
    }
    if edge:
        hcm["use_remote_address"] = True
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def cluster(name: str, port: int | None, address: str = "127.0.0.1") -> dict[str, Any]:
    endpoints = (
        [
            {
                "lb_endpoints": [
                    {
                        "endpoint": {
                            "address": {"socket_address": {"address": address, "port_value": port}}
                        }
                    }
                ]
            }
        ]
        if port is not None
        else []
    )
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": endpoints},
    }


def config(ports: dict[str, int], admin: int, upstream: int) -> str:
    specific = route_config()
    specific["most_specific_header_mutations_wins"] = True
    data = {
        "static_resources": {
            "listeners": [
                listener("ingress", ports["ingress"], route_config()),
                listener("specific", ports["specific"], specific),
                listener("edge", ports["edge"], copy.deepcopy(route_config()), edge=True),
            ],
            "clusters": [
                cluster("svc", upstream),
                cluster("empty", None),
                {
                    **cluster("dns", upstream, "localhost"),
                    "type": "STRICT_DNS",
                    "dns_lookup_family": "V4_ONLY",
                },
            ],
        },
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
    }
    return yaml.safe_dump(data, sort_keys=False)


# -- cases --------------------------------------------------------------------------------


def get(path: str, *headers: str, host: str = "x", method: str = "GET") -> bytes:
    lines = "".join(f"{h}\r\n" for h in headers)
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{lines}\r\n".encode()


# name → (listener, request)
CASES: dict[str, tuple[str, bytes]] = {
    "host_rewrite_path_regex": ("ingress", get("/echo?q=1", "x-case: hostregex")),
    "host_rewrite_path_regex_no_match": ("ingress", get("/echo", "x-case: hostregexnomatch")),
    "levels_on_catch_all_route": ("ingress", get("/echo")),
    "levels_route_without_own": ("ingress", get("/echo", "x-case: plainroute")),
    "rc_only_on_plain_vhost": ("ingress", get("/echo", host="plain.example")),
    "rc_remove_and_vh_remove": (
        "ingress",
        get("/echo", "x-rc-remove: 1", "x-vh-remove: 2", "x-keep-me: 3"),
    ),
    "append_twice_after_client": ("ingress", get("/echo", "x-case: append", "x-multi: client")),
    "append_twice": ("ingress", get("/echo", "x-case: append")),
    "add_if_absent_absent": ("ingress", get("/echo", "x-case: absent")),
    "add_if_absent_present": ("ingress", get("/echo", "x-case: absent", "x-absent: client")),
    "add_if_absent_twice_same_level": (
        "ingress",
        get("/echo", "x-case: absent", "x-absent-twice: c"),
    ),
    "overwrite_or_add_absent": ("ingress", get("/echo", "x-case: overwrite", "user-agent: curl")),
    "overwrite_or_add_present_twice": (
        "ingress",
        get("/echo", "x-case: overwrite", "x-ow: c1", "x-ow: c2", "x-ow-twice: c"),
    ),
    "overwrite_if_exists_present": ("ingress", get("/echo", "x-case: ifexists", "x-ie: client")),
    "overwrite_if_exists_absent": ("ingress", get("/echo", "x-case: ifexists")),
    "empty_values": (
        "ingress",
        get("/echo", "x-case: empty", "x-empty-ow: client", "x-keep-ow: c"),
    ),
    "remove_request_and_response": (
        "ingress",
        get("/echo", "x-case: remove", "x-remove-me: 1", "User-Agent: ua", "x-request-id: abc"),
    ),
    "remove_then_add_same_name": ("ingress", get("/echo", "x-case: removeadd", "x-ra: client")),
    "level_order_default": ("ingress", get("/echo", "x-case: level", "x-level: client")),
    "level_order_most_specific_wins": (
        "specific",
        get("/echo", "x-case: level", "x-level: client"),
    ),
    "most_specific_catch_all": ("specific", get("/echo")),
    "most_specific_append": ("specific", get("/echo", "x-case: append", "x-multi: client")),
    "append_joins_inline_headers": (
        "ingress",
        get(
            "/echo",
            "x-case: inline",
            "user-agent: ua",
            "accept: a",
            "x-custom: c",
            "content-type: t",
        ),
    ),
    "append_joins_inline_headers_absent": ("ingress", get("/echo", "x-case: inline")),
    "append_joins_at_edge": ("edge", get("/echo", "x-case: inline", "x-forwarded-for: 10.0.0.1")),
    "deprecated_append_flag": (
        "ingress",
        get("/echo", "x-case: deprecated", "x-dep-false: client", "x-dep-true: client"),
    ),
    "substitutions": ("ingress", get("/echo", "x-case: subst")),
    "substitutions_at_edge": ("edge", get("/echo", "x-case: subst", "x-forwarded-for: 10.1.2.3")),
    "proxy_owned_response_headers": ("ingress", get("/echo", "x-case: proxyowned")),
    "edge_catch_all": ("edge", get("/echo", "x-level: client")),
    "edge_remove_xfp_and_request_id": ("edge", get("/echo", "x-case: remove")),
    "direct_response": ("ingress", get("/x", "x-case: dr")),
    "direct_response_head": ("ingress", get("/x", "x-case: dr", method="HEAD")),
    "redirect": ("ingress", get("/x", "x-case: rd")),
    "no_healthy_upstream_503": ("ingress", get("/x", "x-case: nohost")),
    "route_timeout_504": ("ingress", get("/delay/2000/echo", "x-case: delay")),
    "fault_abort_on_mutating_route": (
        "ingress",
        get("/echo", "x-case: append", "x-envoy-fault-abort-request: 503"),
    ),
    "no_route_404": ("ingress", get("/elsewhere", host="narrow.example")),
    "narrow_vhost_route": ("ingress", get("/only/echo", host="narrow.example")),
    "prefix_rewrite_to_slash": ("ingress", get("/pre/echo?q=1")),
    "prefix_rewrite_longer": ("ingress", get("/pre2/x")),
    "prefix_rewrite_path_match": ("ingress", get("/exact/p")),
    "regex_rewrite_groups_keeps_query": ("ingress", get("/re/abc/echo?x=1")),
    "regex_rewrite_every_match": ("ingress", get("/rx/")),
    "prefix_rewrite_case_insensitive": ("ingress", get("/ci/echo")),
    "rewrite_overwrites_client_original_path": (
        "ingress",
        get("/pre/echo", "x-envoy-original-path: /client"),
    ),
    "rewrite_with_host_and_mutations": ("ingress", get("/both/echo")),
    "rewrite_at_edge": ("edge", get("/both/echo", "x-envoy-original-path: /client")),
    "host_rewrite_literal": ("ingress", get("/echo", "x-case: hostlit")),
    "host_rewrite_header": ("ingress", get("/echo", "x-case: hosthdr", "x-up-host: h.example")),
    "host_rewrite_header_first_value": (
        "ingress",
        get("/echo", "x-case: hosthdr", "x-up-host: one.example", "x-up-host: two.example"),
    ),
    "host_rewrite_header_absent": ("ingress", get("/echo", "x-case: hosthdr")),
    "host_rewrite_header_empty": ("ingress", get("/echo", "x-case: hosthdr", "x-up-host:")),
    "host_rewrite_header_added_by_mutation": ("ingress", get("/echo", "x-case: hosthdradded")),
    "auto_host_rewrite_dns_cluster": ("ingress", get("/echo", "x-case: autohost")),
    "auto_host_rewrite_static_cluster": ("ingress", get("/echo", "x-case: autohoststatic")),
    "post_with_body": (
        "ingress",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nx-case: overwrite\r\nContent-Length: 5\r\n\r\nhello",
    ),
    "chunked_post": (
        "ingress",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nx-case: append\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    ),
}

_PORT = re.compile(r"^127\.0\.0\.1:\d+$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _stable(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """By name, values of one name kept in the order they came; values that differ on
    every run (dates, times, ids, client ports) replaced by their shape."""
    out = []
    for name, value in headers:
        if name == "date":
            value = "<date>"
        elif name == "x-envoy-upstream-service-time":
            value = re.sub(r"^\d+", "<ms>", value)
        elif UUID4.match(value):
            value = "<uuid4>"
        elif _PORT.match(value) and name != "x-local":
            value = "127.0.0.1:<port>"
        out.append((name, value))
    return sorted(out, key=lambda p: p[0])


def play(ports: dict[str, int], name: str) -> Any:
    where, raw = CASES[name]
    try:
        reply = exchange(ports[where], raw)
    except (OSError, AssertionError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    out = described(reply)
    out["headers"] = _stable(reply.headers)
    if reply.body.startswith(b'{"upstream"'):
        # The echo (whatever content-type the route's mutations left on it).
        info = json.loads(reply.body)
        out.pop("body", None)
        out["upstream_saw"] = {
            "method": info["method"],
            "path": info["path"],
            "headers": _stable([(k, v) for k, v in info["headers"]]),
            "body": (info["body_bytes"], info["body_sha256"]),
        }
    return out


def play_all(ports: dict[str, int]) -> dict[str, Any]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {name: pool.submit(play, ports, name) for name in CASES}
        return {name: f.result() for name, f in futures.items()}


@dataclass
class Results:
    envoy: dict[str, Any]
    proxyd: dict[str, Any]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    upstream = UpstreamServer("svc").start()
    try:
        ports = {"ingress": free_port(), "specific": free_port(), "edge": free_port()}
        admin = free_port()
        text = config(ports, admin, upstream.port)
        with EnvoyRunner(text) as _envoy:
            envoy = play_all(ports)
        with ProxydProcess(tmp_path_factory.mktemp("proxyd"), text, admin, concurrency=1):
            ours = play_all(ports)
        yield Results(envoy, ours)
    finally:
        upstream.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_proxyd_answers_like_envoy(results: Results, name: str) -> None:
    assert results.proxyd[name] == results.envoy[name]


def test_envoy_behaves_as_the_cases_say(results: Results) -> None:
    """The facts the docs state, checked on Envoy itself."""
    e = results.envoy

    def saw(name: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for k, v in e[name]["upstream_saw"]["headers"]:
            out.setdefault(k, []).append(v)
        return out

    def sent(name: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for k, v in e[name]["headers"]:
            out.setdefault(k, []).append(v)
        return out

    missing = [n for n in CASES if "upstream_saw" not in e[n]]
    assert missing == [
        "direct_response",
        "direct_response_head",
        "redirect",
        "no_healthy_upstream_503",
        "route_timeout_504",
        "fault_abort_on_mutating_route",
        "no_route_404",
        "narrow_vhost_route",
    ]
    assert saw("level_order_default")["x-level"] == ["rc"]
    assert saw("level_order_most_specific_wins")["x-level"] == ["route"]
    assert saw("level_order_default")["x-all"] == ["route", "vh", "rc"]
    assert saw("append_joins_inline_headers")["user-agent"] == ["ua,added"]
    assert sent("fault_abort_on_mutating_route")["x-r-multi"] == ["a", "b"]
    assert sent("no_healthy_upstream_503")["x-r-nohost"] == ["route"]
    assert sent("route_timeout_504")["x-r-timeout"] == ["route"]
    assert sent("direct_response")["content-type"] == ["text/x-dr"]
    assert "location" not in sent("redirect")
    assert "x-resp-rc" not in sent("no_route_404")
    assert sent("proxy_owned_response_headers")["server"] == ["envoy"]
    assert saw("auto_host_rewrite_dns_cluster")["host"] == ["localhost"]
    assert saw("auto_host_rewrite_dns_cluster")["x-envoy-original-host"] == ["x"]
    assert saw("auto_host_rewrite_static_cluster")["host"] == ["x"]
    assert saw("host_rewrite_header_first_value")["host"] == ["one.example"]
    assert saw("host_rewrite_path_regex")["host"] == ["ec.example"]
    assert saw("host_rewrite_header_empty")["host"] == ["x"]
    assert saw("host_rewrite_header_added_by_mutation")["host"] == ["added.example"]
    assert e["prefix_rewrite_to_slash"]["upstream_saw"]["path"] == "/echo?q=1"
    assert saw("prefix_rewrite_to_slash")["x-envoy-original-path"] == ["/pre/echo?q=1"]
    assert e["regex_rewrite_groups_keeps_query"]["upstream_saw"]["path"] == "/echo?x=1"
    assert saw("rewrite_overwrites_client_original_path")["x-envoy-original-path"] == ["/pre/echo"]
