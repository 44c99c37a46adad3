"""A route's ``idle_timeout``, a retry policy's ``per_try_idle_timeout`` and
``host_rewrite_path_regex``: real Envoy and real proxyd on the same YAML.

Listener ``ingress`` (stream_idle_timeout 5 s) has the routes:

* ``/idle/``: ``idle_timeout: 0.3s`` in its place: an upstream that holds its answer
  gets 504 ``stream timeout`` (``downstream_rq_idle_timeout``);
* ``/pti/``: retry on 5xx with ``per_try_idle_timeout: 0.3s``: each attempt ends when
  nothing comes, and the per-try idle timeout is retried (504 ``upstream request
  timeout`` after the retry, ``upstream_rq_per_try_idle_timeout`` twice);
* ``/ptinr/``: the same idle timeout with ``retry_on: connect-failure``: not retried;
* ``/hr/``: ``host_rewrite_path_regex``: the Host made from the path.

Listener ``short`` (stream_idle_timeout 0.3 s): ``/idle0/`` has ``idle_timeout: 0s``, no
stream idle timeout at all (an answer after 1 s arrives), and ``/`` has the connection
manager's (504 ``stream timeout``).

Held requests are released when the cases are done (the demo upstream's ``/hold/``).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.support import ProxydProcess, UpstreamServer, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def config(port: int) -> str:
    def route(prefix: str, **action: Any) -> dict[str, Any]:
        return {"match": {"prefix": prefix}, "route": {"cluster": "svc", **action}}

    routes = [
        route(
            "/hr/",
            host_rewrite_path_regex={
                "pattern": {"regex": "^/hr/([^/]+)/.*$"},
                "substitution": "\\1.example",
            },
            prefix_rewrite="/echo/",
        ),
        route("/idle/", idle_timeout="0.3s", prefix_rewrite="/"),
        route(
            "/pti/",
            prefix_rewrite="/",
            retry_policy={"retry_on": "5xx", "num_retries": 1, "per_try_idle_timeout": "0.3s"},
        ),
        route(
            "/ptinr/",
            prefix_rewrite="/",
            retry_policy={
                "retry_on": "connect-failure",
                "num_retries": 1,
                "per_try_idle_timeout": "0.3s",
            },
        ),
    ]
    short_routes = [
        route("/idle0/", idle_timeout="0s", prefix_rewrite="/"),
        route("/"),
    ]

    def listener(name: str, idle: str, routes: list[dict[str, Any]]) -> dict[str, Any]:
        hcm = {
            "@type": HCM,
            "stat_prefix": name,
            "stream_idle_timeout": idle,
            "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": routes}]},
            "http_filters": [
                {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}
            ],
        }
        return {
            "name": name,
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

    addr = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    doc = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                listener("ingress", "5s", routes),
                listener("short", "0.3s", short_routes),
            ],
            "clusters": [
                {
                    "name": "svc",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "svc",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": addr}}]}],
                    },
                }
            ],
        },
    }
    return yaml.safe_dump(doc, sort_keys=False)


# name -> (listener, path)
CASES = {
    "host_regex": ("ingress", "/hr/abc/x?q=1"),
    "host_regex_no_match": ("ingress", "/hr/abc"),
    "route_idle_fires": ("ingress", "/idle/hold/echo"),
    "per_try_idle_retried": ("ingress", "/pti/hold/echo"),
    "per_try_idle_not_retried": ("ingress", "/ptinr/hold/echo"),
    "route_idle_zero_means_none": ("short", "/idle0/delay/1000/echo"),
    "connection_manager_idle": ("short", "/hold/echo"),
}
STATS = (
    "http.ingress.downstream_rq_idle_timeout",
    "http.short.downstream_rq_idle_timeout",
    "cluster.svc.upstream_rq_per_try_idle_timeout",
    "cluster.svc.upstream_rq_retry",
    "cluster.svc.upstream_rq_per_try_timeout",
    "cluster.svc.upstream_rq_timeout",
)


def play(ports: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (where, path) in CASES.items():
        c = http.client.HTTPConnection("127.0.0.1", ports[where], timeout=10)
        try:
            c.request("GET", path, headers={"Host": "h.example"})
            r = c.getresponse()
            body = r.read()
            got: dict[str, Any] = {"status": r.status}
            if body.startswith(b'{"upstream"'):
                info = json.loads(body)
                got["host"] = dict(info["headers"]).get("host")
                got["original_host"] = dict(info["headers"]).get("x-envoy-original-host")
            else:
                got["body"] = body.decode()
            out[name] = got
        finally:
            c.close()
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict, dict]]:
    def stats(text: str) -> dict[str, int]:
        values = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
        return {k: int(values.get(k, "0")) for k in STATS}

    with UpstreamServer("svc") as up:
        text = config(up.port)
        with EnvoyRunner(text) as envoy:
            e = play({n: envoy.listener_port(n) for n in ("ingress", "short")})
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{envoy.admin_port}/stats") as r:
                e["stats"] = stats(r.read().decode())
        with ProxydProcess(tmp_path_factory.mktemp("idle"), text, concurrency=1) as proxy:
            p = play({n: proxy.listener_port(n) for n in ("ingress", "short")})
            # The workers report their counters in batches: wait for Envoy's numbers
            # (a failure then shows what proxyd had).
            try:
                wait_for(lambda: stats(proxy.admin("/stats")[1]) == e["stats"], timeout=5)
            except TimeoutError:
                pass  # compared below
            p["stats"] = stats(proxy.admin("/stats")[1])
        up._server.released.set()  # the held requests end
        yield e, p


@pytest.mark.parametrize("name", [*CASES, "stats"])
def test_same_as_envoy(results: tuple[dict, dict], name: str) -> None:
    e, p = results
    assert p[name] == e[name]


def test_what_envoy_does(results: tuple[dict, dict]) -> None:
    e = results[0]
    assert e["host_regex"]["host"] == "abc.example"
    assert e["route_idle_fires"] == {"status": 504, "body": "stream timeout"}
    assert e["route_idle_zero_means_none"]["status"] == 200
    assert e["connection_manager_idle"] == {"status": 504, "body": "stream timeout"}
    assert e["per_try_idle_retried"] == {"status": 504, "body": "upstream request timeout"}
    assert e["stats"]["cluster.svc.upstream_rq_per_try_idle_timeout"] == 3
