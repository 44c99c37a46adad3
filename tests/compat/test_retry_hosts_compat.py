"""retry_host_predicate previous_hosts: real Envoy and real proxyd on the same YAML.

One RANDOM cluster of two hosts: a port nothing listens on (every connection refused)
and a demo upstream. Both routes retry a connect failure once; ``/p/`` has the
previous_hosts predicate with host_selection_retry_max_attempts 50, ``/n/`` has none.
With the predicate the retry's host is picked again while it is the refused one, so
every request succeeds (the chance of 51 picks of the same host is 2**-51); without it,
a quarter of the requests fail (refused, then refused again), so a run of REQUESTS has
failures all but surely (0.75**REQUESTS). Both proxies must show both.
"""

from __future__ import annotations

import http.client
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.support import ProxydProcess, UpstreamServer, free_port

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)
REQUESTS = 60


def config(dead: int, live: int) -> str:
    def endpoint(port: int) -> dict[str, Any]:
        return {
            "endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}
            }
        }

    retry: dict[str, Any] = {"retry_on": "connect-failure", "num_retries": 1}
    with_predicate = {
        **retry,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": PREVIOUS_HOSTS},
            }
        ],
        "host_selection_retry_max_attempts": 50,
    }
    routes = [
        {"match": {"prefix": "/p/"}, "route": {"cluster": "rnd", "retry_policy": with_predicate}},
        {"match": {"prefix": "/n/"}, "route": {"cluster": "rnd", "retry_policy": retry}},
    ]
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
                                    "typed_config": {
                                        "@type": HCM,
                                        "stat_prefix": "ingress_http",
                                        "route_config": {
                                            "name": "local",
                                            "virtual_hosts": [
                                                {"name": "all", "domains": ["*"], "routes": routes}
                                            ],
                                        },
                                        "http_filters": [
                                            {
                                                "name": "envoy.filters.http.router",
                                                "typed_config": {"@type": ROUTER},
                                            }
                                        ],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "rnd",
                    "connect_timeout": "1s",
                    "lb_policy": "RANDOM",
                    "load_assignment": {
                        "cluster_name": "rnd",
                        "endpoints": [{"lb_endpoints": [endpoint(dead), endpoint(live)]}],
                    },
                }
            ],
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


def play_all(port: int) -> dict[str, Counter[int]]:
    out: dict[str, Counter[int]] = {}
    for prefix in ("/p/", "/n/"):
        got: Counter[int] = Counter()
        for i in range(REQUESTS):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                conn.request("GET", f"{prefix}{i}")
                r = conn.getresponse()
                r.read()
                got[r.status] += 1
            finally:
                conn.close()
        out[prefix] = got
    return out


@dataclass
class Results:
    envoy: dict[str, Counter[int]]
    proxyd: dict[str, Counter[int]]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    live = UpstreamServer("live").start()
    try:
        text = config(free_port(), live.port)
        with EnvoyRunner(text) as envoy:
            envoy_side = play_all(envoy.listener_port("ingress"))
        with ProxydProcess(tmp_path_factory.mktemp("retry-hosts"), text, concurrency=1) as p:
            proxyd_side = play_all(p.listener_port("ingress"))
        yield Results(envoy_side, proxyd_side)
    finally:
        live.stop()


def test_previous_hosts_retries_on_another_host(results: Results) -> None:
    for side in (results.envoy, results.proxyd):
        assert side["/p/"] == Counter({200: REQUESTS}), side


def test_without_the_predicate_some_retries_fail(results: Results) -> None:
    for side in (results.envoy, results.proxyd):
        assert set(side["/n/"]) == {200, 503}, side
