"""RouteConfiguration.internal_only_headers: real Envoy and real proxyd on the same YAML.

The bootstrap of tests/compat/test_weighted_clusters_compat.py, with
``internal_only_headers`` on its route configuration and a route that matches on one of
them, served by three listeners: ``plain`` (not at the edge), ``edge_internal``
(use_remote_address, loopback counted internal by internal_address_config) and
``edge_external`` (use_remote_address, only 10.0.0.0/8 internal). An internal-only
header is removed before routing unless the request is internal, so the route that
matches on it is taken only through ``edge_internal``; what the upstream received is
compared too.
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
from tests.compat.test_weighted_clusters_compat import UPSTREAMS, config
from tests.support import ProxydProcess, UpstreamServer

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

LISTENERS = ("plain", "edge_internal", "edge_external")
SEEN = ("x-secret", "x-other", "x-kept", "x-envoy-internal")

# name -> (path, request headers)
CASES: dict[str, tuple[str, dict[str, str]]] = {
    "routed_on_secret": ("/echo/m/1", {"x-secret": "s"}),
    "routed_on_secret_upper": ("/echo/m/2", {"X-Secret": "s", "X-Other": "o"}),
    "no_secret": ("/echo/m/3", {"x-kept": "k"}),
    "forwarded": ("/echo/d/4", {"x-secret": "s", "x-other": "o", "x-kept": "k"}),
    "claims_internal": ("/echo/m/5", {"x-secret": "s", "x-envoy-internal": "true"}),
}


def bootstrap(ports: dict[str, int]) -> str:
    doc = yaml.safe_load(config(ports))
    listener = doc["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    rc = hcm["route_config"]
    rc["internal_only_headers"] = ["x-secret", "X-Other"]
    rc["virtual_hosts"][0]["routes"].insert(
        0,
        {
            "match": {
                "prefix": "/echo/m/",
                "headers": [{"name": "x-secret", "present_match": True}],
            },
            "route": {"cluster": "b"},
        },
    )
    listeners = []
    for name in LISTENERS:
        lst = json.loads(json.dumps(listener))
        lst["name"] = name
        cfg = lst["filter_chains"][0]["filters"][0]["typed_config"]
        if name != "plain":
            cfg["use_remote_address"] = True
            cidr = ("127.0.0.1", 32) if name == "edge_internal" else ("10.0.0.0", 8)
            cfg["internal_address_config"] = {
                "cidr_ranges": [{"address_prefix": cidr[0], "prefix_len": cidr[1]}]
            }
        listeners.append(lst)
    doc["static_resources"]["listeners"] = listeners
    return yaml.safe_dump(doc, sort_keys=False)


def play(port: int, path: str, headers: dict[str, str]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        got: dict[str, Any] = {"status": r.status}
        if r.getheader("x-upstream-name"):
            echo = json.loads(body)
            got["upstream"] = echo["upstream"]
            got["seen"] = sorted((k, v) for k, v in echo["headers"] if k in SEEN)
        return got
    finally:
        conn.close()


@dataclass
class Results:
    envoy: dict[str, dict[str, Any]]
    proxyd: dict[str, dict[str, Any]]


def play_all(port_of: Any) -> dict[str, dict[str, Any]]:
    return {
        f"{lst}:{name}": play(port_of(lst), *case)
        for lst in LISTENERS
        for name, case in CASES.items()
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Results]:
    upstreams = {n: UpstreamServer(n).start() for n in UPSTREAMS}
    try:
        text = bootstrap({n: u.port for n, u in upstreams.items()})
        with EnvoyRunner(text) as envoy:
            envoy_side = play_all(envoy.listener_port)
        with ProxydProcess(tmp_path_factory.mktemp("internal"), text, concurrency=1) as p:
            proxyd_side = play_all(p.listener_port)
        yield Results(envoy_side, proxyd_side)
    finally:
        for u in upstreams.values():
            u.stop()


@pytest.mark.parametrize("name", [f"{lst}:{c}" for lst in LISTENERS for c in CASES])
def test_proxyd_strips_like_envoy(results: Results, name: str) -> None:
    assert results.proxyd[name] == results.envoy[name]


def test_envoy_behaves_as_the_cases_say(results: Results) -> None:
    e = results.envoy
    assert e["edge_internal:routed_on_secret"]["upstream"] == "b"
    assert ("x-secret", "s") in e["edge_internal:forwarded"]["seen"]
    for lst in ("plain", "edge_external"):
        assert e[f"{lst}:routed_on_secret"]["status"] == 404, lst  # stripped, no route
        seen = e[f"{lst}:forwarded"]["seen"]
        assert ("x-kept", "k") in seen and not any(k in ("x-secret", "x-other") for k, _ in seen)
