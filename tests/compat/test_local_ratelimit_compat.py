"""The local rate limit filter: real Envoy and real proxyd on the same YAML.

One listener with the filter in the HCM (a bucket of 3 tokens refilled one an hour, so
the 4th request is the first one limited on either proxy, however slow the machine)
and routes that replace its config per route, per virtual host, disable it, leave it
not enforced, not enabled, or enabled through the runtime. Envoy runs with one worker
thread and proxyd with one worker process, so both have one bucket per config (see
docs/configuration.md: proxyd's buckets are per worker). The cases are played in order
on each (a bucket's state carries from one to the next) and must give the same status,
body, headers (the x-ratelimit-* ones included) and upstream view; the
``<stat_prefix>.http_local_rate_limit.*`` stats of both admin endpoints are compared
last.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import envoy_available
from tests.compat.pair import Pair, run_pair
from tests.compat.test_errors_vs_envoy import described
from tests.integration.test_proxy_errors import exchange
from tests.support import UpstreamServer, bootstrap, http_listener, static_cluster

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

LRL = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
FILTER_CONFIG = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
NAME = "envoy.filters.http.local_ratelimit"
HOUR = "3600s"
ALWAYS = {"default_value": {"numerator": 100}}
NEVER = {"default_value": {"numerator": 0}}
STAT_PREFIXES = ("hcm_rl", "r2_rl", "shadow_rl", "off_rl", "vh_rl", "grpc_rl", "rt_rl")


def limit(stat_prefix: str, tokens: int, **more: Any) -> dict[str, Any]:
    return {
        "@type": LRL,
        "stat_prefix": stat_prefix,
        "token_bucket": {"max_tokens": tokens, "tokens_per_fill": 1, "fill_interval": HOUR},
        **more,
    }


def route(prefix: str, per_filter: dict[str, Any] | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"match": {"prefix": prefix}, "route": {"cluster": "svc"}}
    if per_filter is not None:
        r["typed_per_filter_config"] = {NAME: per_filter}
    return r


def config(upstream: int) -> str:
    routes = [
        route("/r2", limit("r2_rl", 2, filter_enabled=ALWAYS, filter_enforced=ALWAYS,
                           status={"code": "ServiceUnavailable"})),
        route("/shadow", limit(
            "shadow_rl", 1, filter_enabled=ALWAYS, filter_enforced=NEVER,
            request_headers_to_add_when_not_enforced=[
                {"header": {"key": "x-limited", "value": "yes"},
                 "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
                {"header": {"key": "x-app", "value": "more"}},
                {"header": {"key": "x-absent", "value": "added"}, "append_action": "ADD_IF_ABSENT"},
                {"header": {"key": "x-there", "value": "replaced"},
                 "append_action": "OVERWRITE_IF_EXISTS"},
                {"header": {"key": "x-missing", "value": "never"},
                 "append_action": "OVERWRITE_IF_EXISTS"},
            ],
        )),
        route("/off", limit("off_rl", 1)),
        route("/disabled", {"@type": FILTER_CONFIG, "disabled": True}),
        route("/grpc", limit("grpc_rl", 1, filter_enabled=ALWAYS, filter_enforced=ALWAYS,
                             rate_limited_as_resource_exhausted=True)),
        route("/rt", limit("rt_rl", 1, filter_enforced=ALWAYS,
                           filter_enabled={"runtime_key": "rl.rt_enabled",
                                           "default_value": {"numerator": 100}})),
        route("/"),
    ]  # fmt: skip
    route_config = {
        "name": "local",
        "virtual_hosts": [
            {
                "name": "shared",
                "domains": ["shared.example"],
                "typed_per_filter_config": {
                    NAME: limit("vh_rl", 2, filter_enabled=ALWAYS, filter_enforced=ALWAYS)
                },
                "routes": [route("/a"), route("/b")],
            },
            {"name": "main", "domains": ["*"], "routes": routes},
        ],
    }
    rate_limit = {
        "name": NAME,
        "typed_config": limit(
            "hcm_rl",
            3,
            filter_enabled=ALWAYS,
            filter_enforced=ALWAYS,
            enable_x_ratelimit_headers="DRAFT_VERSION_03",
            response_headers_to_add=[
                {"header": {"key": "x-rl", "value": "yes"}},
                {"header": {"key": "x-rl", "value": "twice"}, "append_action": "ADD_IF_ABSENT"},
                {"header": {"key": "x-empty", "value": ""}},
            ],
        ),
    }
    doc = bootstrap(
        [http_listener("ingress", 0, route_config, [rate_limit], stat_prefix="ingress_http")],
        [static_cluster("svc", [upstream])],
        layered_runtime={"layers": [{"name": "static", "static_layer": {"rl.rt_enabled": 0}}]},
    )  # fmt: skip
    return yaml.safe_dump(doc, sort_keys=False)


def get(path: str, *headers: str, host: str = "x") -> bytes:
    lines = "".join(f"{h}\r\n" for h in headers)
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{lines}\r\n".encode()


GRPC = ("content-type: application/grpc", "te: trailers")


def grpc(path: str) -> bytes:
    lines = "".join(f"{h}\r\n" for h in GRPC)
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\n{lines}content-length: 5\r\n\r\n".encode()
        + b"\0\0\0\0\0"
    )


# Played in this order: each bucket's state carries from one case to the next.
CASES: list[tuple[str, bytes]] = [
    *[(f"hcm_{i}", get("/echo")) for i in range(1, 5)],
    ("hcm_5_head", b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\n"),
    *[(f"route_503_{i}", get("/r2/echo")) for i in range(1, 4)],
    *[
        (f"not_enforced_{i}", get("/shadow/echo", "x-app: mine", "x-there: old"))
        for i in range(1, 4)
    ],
    ("not_enforced_absent_present", get("/shadow/echo", "x-absent: mine")),
    *[(f"not_enabled_{i}", get("/off/echo")) for i in range(1, 4)],
    *[(f"disabled_{i}", get("/disabled/echo")) for i in range(1, 4)],
    ("vhost_a", get("/a/echo", host="shared.example")),
    ("vhost_b", get("/b/echo", host="shared.example")),
    ("vhost_a_limited", get("/a/echo", host="shared.example")),
    ("grpc_1", grpc("/grpc/echo")),
    ("grpc_2_resource_exhausted", grpc("/grpc/echo")),
    ("grpc_3_plain", get("/grpc/echo")),
    *[(f"runtime_disabled_{i}", get("/rt/echo")) for i in range(1, 4)],
    ("hcm_after_all", get("/echo")),
]


def play_all(port: int) -> dict[str, Any]:
    out = {}
    for name, raw in CASES:
        try:
            out[name] = described(exchange(port, raw, check_closed=False))
        except (OSError, AssertionError, ValueError) as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


def rl_stats(stats: dict[str, int]) -> dict[str, int]:
    prefixes = tuple(f"{p}.http_local_rate_limit." for p in STAT_PREFIXES)
    return {k: v for k, v in stats.items() if k.startswith(prefixes)}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    upstream = UpstreamServer("svc").start()
    try:
        yield run_pair(
            config(upstream.port),
            tmp_path_factory.mktemp("lrl"),
            lambda port_of: play_all(port_of("ingress")),
            rl_stats,
        )
    finally:
        upstream.stop()


@pytest.mark.parametrize("name", [name for name, _ in CASES])
def test_same_answer(results: Pair, name: str) -> None:
    assert results.proxyd.replies[name] == results.envoy.replies[name]


def test_the_fourth_request_is_the_first_limited(results: Pair) -> None:
    statuses = [results.envoy.replies[f"hcm_{i}"]["status"] for i in range(1, 5)]
    assert statuses == [200, 200, 200, 429]
    assert [results.envoy.replies[f"route_503_{i}"]["status"] for i in (1, 2, 3)] == [
        200, 200, 503,
    ]  # fmt: skip


def test_same_stats(results: Pair) -> None:
    assert results.envoy.stats, "Envoy showed no local rate limit stats"
    assert results.proxyd.stats == results.envoy.stats
