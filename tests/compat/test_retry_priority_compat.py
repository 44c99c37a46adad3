"""retry_priority ``envoy.retry_priorities.previous_priorities``: real Envoy and real
proxyd on the same YAML.

One cluster with two priority levels: P0 is upstream ``a``, P1 upstream ``b`` (both
healthy, so P0 takes all the load). A route retries 5xx twice; with
``update_frequency: 1`` the first retry leaves P0 out (it goes to ``b``) and the second
finds every level attempted, so Envoy forgets them and P0 takes it again; with
``update_frequency: 2`` the first retry keeps the original load and the second leaves
P0 out. Without a retry priority every attempt goes to P0. Each case compares the
final response's upstream and how many attempts each upstream got.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
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
PREVIOUS_PRIORITIES = (
    "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3."
    "PreviousPrioritiesConfig"
)


def config(a: int, b: int) -> str:
    def route(prefix: str, every: int | None) -> dict[str, Any]:
        policy: dict[str, Any] = {
            "retry_on": "5xx",
            "num_retries": 2,
            "retry_back_off": {"base_interval": "0.001s", "max_interval": "0.002s"},
        }
        if every is not None:
            policy["retry_priority"] = {
                "name": "envoy.retry_priorities.previous_priorities",
                "typed_config": {"@type": PREVIOUS_PRIORITIES, "update_frequency": every},
            }
        return {
            "match": {"prefix": prefix},
            "route": {"cluster": "svc", "prefix_rewrite": "/", "retry_policy": policy},
        }

    def level(priority: int, port: int) -> dict[str, Any]:
        addr = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
        return {"priority": priority, "lb_endpoints": [{"endpoint": {"address": addr}}]}

    hcm = {
        "@type": HCM,
        "stat_prefix": "ing",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "v",
                    "domains": ["*"],
                    "routes": [route("/every1/", 1), route("/every2/", 2), route("/none/", None)],
                }
            ]
        },
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "svc",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "svc",
                        "endpoints": [level(0, a), level(1, b)],
                    },
                }
            ],
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


CASES = {
    "every1_all_fail": "/every1/status/503",
    "every2_all_fail": "/every2/status/503",
    "no_retry_priority": "/none/status/503",
    "every1_first_succeeds": "/every1/status/200",
}


def play(port: int, ups: dict[str, UpstreamServer]) -> dict[str, Any]:
    out = {}
    for name, path in CASES.items():
        before = {n: u.requests for n, u in ups.items()}
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            c.request("GET", path, headers={"Host": "h"})
            r = c.getresponse()
            r.read()
            out[name] = {
                "status": r.status,
                "from": r.getheader("x-upstream-name"),
                "attempts": {n: u.requests - before[n] for n, u in ups.items()},
            }
        finally:
            c.close()
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict, dict]]:
    with UpstreamServer("a") as a, UpstreamServer("b") as b:
        ups = {"a": a, "b": b}
        text = config(a.port, b.port)
        with EnvoyRunner(text) as envoy:
            e = play(envoy.listener_port("ingress"), ups)
        with ProxydProcess(tmp_path_factory.mktemp("rp"), text, concurrency=1) as proxy:
            p = play(proxy.listener_port("ingress"), ups)
        yield e, p


@pytest.mark.parametrize("name", list(CASES))
def test_same_as_envoy(results: tuple[dict, dict], name: str) -> None:
    e, p = results
    assert p[name] == e[name]


def test_what_envoy_does(results: tuple[dict, dict]) -> None:
    e = results[0]
    assert e["every1_all_fail"] == {"status": 503, "from": "a", "attempts": {"a": 2, "b": 1}}
    assert e["every2_all_fail"] == {"status": 503, "from": "b", "attempts": {"a": 2, "b": 1}}
    assert e["no_retry_priority"]["attempts"] == {"a": 3, "b": 0}
