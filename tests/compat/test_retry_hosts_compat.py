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
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, PortOf, run_pair
from tests.support import UpstreamServer, bootstrap, free_port, http_listener, static_cluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)
REQUESTS = 60


def config(dead: int, live: int) -> str:
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
    vhost = {"name": "all", "domains": ["*"], "routes": routes}
    route_config = {"name": "local", "virtual_hosts": [vhost]}
    listener = http_listener("ingress", 0, route_config, stat_prefix="ingress_http")
    cluster = {**static_cluster("rnd", [dead, live]), "lb_policy": "RANDOM"}
    return yaml.safe_dump(bootstrap([listener], [cluster]), sort_keys=False)


def play_all(port_of: PortOf) -> dict[str, Counter[int]]:
    port = port_of("ingress")
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


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    live = UpstreamServer("live").start()
    try:
        text = config(free_port(), live.port)
        yield run_pair(text, tmp_path_factory.mktemp("retry-hosts"), play_all)
    finally:
        live.stop()


def test_previous_hosts_retries_on_another_host(results: Pair) -> None:
    for side in (results.envoy.replies, results.proxyd.replies):
        assert side["/p/"] == Counter({200: REQUESTS}), side


def test_without_the_predicate_some_retries_fail(results: Pair) -> None:
    for side in (results.envoy.replies, results.proxyd.replies):
        assert set(side["/n/"]) == {200, 503}, side
