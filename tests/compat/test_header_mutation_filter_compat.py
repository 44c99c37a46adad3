"""The header_mutation HTTP filter: real Envoy and real proxyd on the same YAML.

One bootstrap, two listeners with the same routes: ``ingress`` (the filter's
``most_specific_header_mutations_wins`` false, Envoy's default) and ``wins`` (true). The
filter has request and response steps of its own; the route configuration, the virtual
host and some routes add ``HeaderMutationPerRoute`` steps, and routes have their own
``request_headers_to_add`` / ``response_headers_to_add``, so the order in which the
levels are applied shows in what the upstream and the client get:

* ``/echo/all``: every level, with each append action, a remove, an overwrite of the
  same header at every level (``x-order``), values with ``%OPERATOR%``;
* ``/echo/vh``: the virtual host's and route configuration's steps only;
* ``/echo/off``: the filter disabled on the route (``FilterConfig``);
* ``/direct``: a direct response (the response steps apply to it).

Every case runs through Envoy and then proxyd (one worker); the ``x-*`` headers the
upstream received (in order) and those the client got must be equal.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.support import ProxydProcess, UpstreamServer

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HM = "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
HM_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute"
)
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
NAME = "envoy.filters.http.header_mutation"


def add(key: str, value: str, action: str = "APPEND_IF_EXISTS_OR_ADD", **more: Any) -> Any:
    return {"append": {"header": {"key": key, "value": value}, "append_action": action, **more}}


def remove(key: str) -> Any:
    return {"remove": key}


def per_route(request: list[Any], response: list[Any]) -> dict[str, Any]:
    return {
        NAME: {
            "@type": HM_ROUTE,
            "mutations": {"request_mutations": request, "response_mutations": response},
        }
    }


def _option(key: str, value: str, action: str = "APPEND_IF_EXISTS_OR_ADD") -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append_action": action}


def route_config() -> dict[str, Any]:
    all_route = {
        "match": {"prefix": "/echo/all"},
        "route": {"cluster": "svc"},
        "request_headers_to_add": [
            _option("x-route-own", "own"),
            _option("x-order", "route-own", "OVERWRITE_IF_EXISTS_OR_ADD"),
        ],
        "response_headers_to_add": [
            _option("x-order-resp", "route-own", "OVERWRITE_IF_EXISTS_OR_ADD"),
            _option("x-resp-route-own", "own"),
        ],
        "typed_per_filter_config": per_route(
            [
                add("x-level", "route"),
                add("x-order", "route", "OVERWRITE_IF_EXISTS_OR_ADD"),
                add("x-absent", "route", "ADD_IF_ABSENT"),
                add("x-exists", "route", "OVERWRITE_IF_EXISTS"),
                add("x-missing", "route", "OVERWRITE_IF_EXISTS"),
                remove("x-client-drop"),
                add("x-empty-kept", "", keep_empty_value=True),
                add("x-empty-dropped", ""),
                add("x-client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
                remove("x-filter"),
                add("x-filter", "again"),
            ],
            [
                add("x-resp-level", "route"),
                add("x-order-resp", "route", "OVERWRITE_IF_EXISTS_OR_ADD"),
                remove("x-upstream-name"),
            ],
        ),
    }
    return {
        "name": "local",
        "typed_per_filter_config": per_route(
            [add("x-level", "rc"), add("x-order", "rc", "OVERWRITE_IF_EXISTS_OR_ADD")],
            [add("x-resp-level", "rc"), add("x-order-resp", "rc", "OVERWRITE_IF_EXISTS_OR_ADD")],
        ),
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "typed_per_filter_config": per_route(
                    [add("x-level", "vh"), add("x-order", "vh", "OVERWRITE_IF_EXISTS_OR_ADD")],
                    [add("x-resp-level", "vh")],
                ),
                "routes": [
                    all_route,
                    {"match": {"prefix": "/echo/vh"}, "route": {"cluster": "svc"}},
                    {
                        "match": {"prefix": "/echo/off"},
                        "route": {"cluster": "svc"},
                        "typed_per_filter_config": {
                            NAME: {"@type": FILTER_CONFIG, "disabled": True}
                        },
                    },
                    {
                        "match": {"prefix": "/direct"},
                        "direct_response": {"status": 202, "body": {"inline_string": "d"}},
                    },
                ],
            }
        ],
    }


def listener(name: str, wins: bool) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM,
                            "stat_prefix": name,
                            "route_config": route_config(),
                            "http_filters": [
                                {
                                    "name": NAME,
                                    "typed_config": {
                                        "@type": HM,
                                        "most_specific_header_mutations_wins": wins,
                                        "mutations": {
                                            "request_mutations": [
                                                add("x-filter", "f"),
                                                remove("x-drop"),
                                                add(
                                                    "x-order",
                                                    "filter",
                                                    "OVERWRITE_IF_EXISTS_OR_ADD",
                                                ),
                                            ],
                                            "response_mutations": [
                                                add("x-resp-filter", "f"),
                                                add(
                                                    "x-order-resp", "filter", "OVERWRITE_IF_EXISTS"
                                                ),
                                            ],
                                        },
                                    },
                                },
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER},
                                },
                            ],
                        },
                    }
                ]
            }
        ],
    }


def config(upstream: int) -> str:
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [listener("ingress", False), listener("wins", True)],
            "clusters": [
                {
                    "name": "svc",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "svc",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": upstream,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ],
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


CLIENT = {"x-drop": "d", "x-client-drop": "c", "x-exists": "client", "x-order": "client"}
CASES: dict[str, tuple[str, dict[str, str]]] = {
    "all": ("/echo/all", CLIENT),
    "all_bare": ("/echo/all", {}),
    "vh": ("/echo/vh", CLIENT),
    "off": ("/echo/off", CLIENT),
    "direct": ("/direct", CLIENT),
}
IGNORED = ("x-envoy-expected-rq-timeout-ms", "x-forwarded-proto", "x-request-id")


def play(port: int, path: str, headers: dict[str, str]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        got: dict[str, Any] = {
            "status": r.status,
            "headers": [
                (k.lower(), v)
                for k, v in r.getheaders()
                if k.lower().startswith("x-") and k.lower() != "x-envoy-upstream-service-time"
            ],
        }
        if path.startswith("/echo/"):
            echo = json.loads(body)
            got["upstream"] = [
                (k, v) for k, v in echo["headers"] if k.startswith("x-") and k not in IGNORED
            ]
        else:
            got["body"] = body.decode("latin-1")
        return got
    finally:
        conn.close()


@dataclass
class Results:
    envoy: dict[str, Any]
    proxyd: dict[str, Any]


def play_all(ports: dict[str, int]) -> dict[str, Any]:
    return {
        f"{listener}:{name}": play(port, *case)
        for listener, port in ports.items()
        for name, case in CASES.items()
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    upstream = UpstreamServer("svc").start()
    try:
        text = config(upstream.port)
        with EnvoyRunner(text) as envoy:
            envoy_side = play_all({n: envoy.listener_port(n) for n in ("ingress", "wins")})
        with ProxydProcess(tmp_path_factory.mktemp("hm"), text, concurrency=1) as p:
            proxyd_side = play_all({n: p.listener_port(n) for n in ("ingress", "wins")})
        yield Results(envoy_side, proxyd_side)
    finally:
        upstream.stop()


@pytest.mark.parametrize("name", [f"{lst}:{n}" for lst in ("ingress", "wins") for n in CASES])
def test_proxyd_mutates_like_envoy(results: Results, name: str) -> None:
    assert results.proxyd[name] == results.envoy[name]


def test_envoy_behaves_as_the_cases_say(results: Results) -> None:
    e = results.envoy
    seen = dict(e["ingress:all"]["upstream"])
    assert "x-drop" not in seen and "x-client-drop" not in seen
    assert seen["x-order"] == "route-own"  # the route's own mutations come last
    wins = dict(e["wins:all"]["upstream"])
    assert wins["x-order"] == "route-own"
    assert e["ingress:off"]["upstream"] != e["ingress:vh"]["upstream"]
