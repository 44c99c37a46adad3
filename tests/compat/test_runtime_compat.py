"""Runtime-driven routing and the runtime admin pages, through real Envoy and proxyd.

One bootstrap for both: a route with ``runtime_fraction`` (key ``routing.to_b``) to
cluster "b" before a catch-all route to "a", and ``layered_runtime`` with a static, a
disk (symlink_root + subdirectory + append_service_cluster) and an admin layer. The
upstreams answer with ``x-upstream-name``, so each answer says which route matched.
The cases that only read static values share one pair (``routing``: a path prefix per
case, each with its own runtime keys).
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.integration.master_fixtures import get
from tests.support import ProxydProcess, UpstreamServer, free_port, http_config, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

KEY = "routing.to_b"


def routes() -> str:
    return f"""
              - match:
                  prefix: "/"
                  runtime_fraction:
                    default_value: {{ numerator: 0 }}
                    runtime_key: {KEY}
                route: {{ cluster: b }}
              - match: {{ prefix: "/" }}
                route: {{ cluster: a }}"""


def bootstrap(
    listen: int, admin: int, ups: dict[str, UpstreamServer], static: dict[str, Any],
    disk_root: Path | None = None,
) -> str:  # fmt: skip
    data = yaml.safe_load(
        http_config(listen, admin, {n: [u.port] for n, u in ups.items()}, routes())
    )
    data["node"] = {"id": "runtime-node", "cluster": "edge"}
    layers: list[dict[str, Any]] = [{"name": "base", "static_layer": static}]
    if disk_root is not None:
        layers.append(
            {
                "name": "disk",
                "disk_layer": {
                    "symlink_root": str(disk_root),
                    "subdirectory": "envoy",
                    "append_service_cluster": True,
                },
            }
        )
    layers.append({"name": "admin", "admin_layer": {}})
    data["layered_runtime"] = {"layers": layers}
    return yaml.safe_dump(data, sort_keys=False)


class Proxy:
    """One running proxy: its listener port and admin port."""

    def __init__(self, name: str, port: int, admin: int) -> None:
        self.name, self.port, self.admin = name, port, admin

    def admin_call(self, path: str, method: str = "GET") -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read().decode()

    def upstreams(self, n: int = 20, path: str = "/") -> Counter[str]:
        out: Counter[str] = Counter()
        for _ in range(n):
            status, headers, _ = get(self.port, path)
            assert status == 200, (self.name, status)
            out[headers["x-upstream-name"]] += 1
        return out


@contextmanager
def both(tmp_path: Path, make_config: Any) -> Iterator[list[Proxy]]:
    """Envoy and proxyd, each on ``make_config(listen_port, admin_port)``."""
    port = free_port()
    envoy = EnvoyRunner(make_config(port, 0))
    with envoy:
        proxyd_port, proxyd_admin = free_port(), free_port()
        with ProxydProcess(tmp_path, make_config(proxyd_port, proxyd_admin), proxyd_admin):
            yield [
                Proxy("envoy", port, envoy.admin_port),
                Proxy("proxyd", proxyd_port, proxyd_admin),
            ]


@pytest.fixture
def ups() -> Iterator[dict[str, UpstreamServer]]:
    servers = {n: UpstreamServer(n).start() for n in ("a", "b", "c")}
    yield servers
    for s in servers.values():
        s.stop()


# Routing by runtime values that do not change, one pair for all: under /<case>/, routes
# with runtime_fraction (runtime key, default numerator, cluster), then a catch-all to "a".
ROUTING_STATIC = {"static.zero": 0, "static.hundred": 100, "nested": {"to_b": 100}}
ROUTING: dict[str, list[tuple[str, int, str]]] = {
    "static-0": [("static.zero", 0, "b")],
    "static-100": [("static.hundred", 0, "b")],
    "static-nested-100": [("nested.to_b", 0, "b")],
    "no-key-default-0": [("static.unset", 0, "b")],
    "no-key-default-100": [("static.unset", 100, "b")],
    # Two routes at 50 %: the second never matches, since the request's draw that failed
    # the first fails it too (Envoy draws once per stream).
    "one-draw": [("k1", 50, "b"), ("k2", 50, "c")],
}


def routing_routes() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for case, fractions in ROUTING.items():
        prefix = f"/{case}/"
        for key, default, cluster in fractions:
            fraction = {"default_value": {"numerator": default}, "runtime_key": key}
            match = {"prefix": prefix, "runtime_fraction": fraction}
            out.append({"match": match, "route": {"cluster": cluster}})
        out.append({"match": {"prefix": prefix}, "route": {"cluster": "a"}})
    return out


@pytest.fixture(scope="module")
def routing(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, dict[str, Counter[str]]]]:
    servers = {n: UpstreamServer(n).start() for n in ("a", "b", "c")}
    try:

        def config(p: int, a: int) -> str:
            data = yaml.safe_load(bootstrap(p, a, servers, ROUTING_STATIC))
            hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"] = routing_routes()
            return yaml.safe_dump(data, sort_keys=False)

        with both(tmp_path_factory.mktemp("routing"), config) as proxies:
            yield {
                proxy.name: {
                    case: proxy.upstreams(80 if case == "one-draw" else 20, f"/{case}/")
                    for case in ROUTING
                }
                for proxy in proxies
            }
    finally:
        for s in servers.values():
            s.stop()


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("static-0", "a"),
        ("static-100", "b"),
        ("static-nested-100", "b"),
        ("no-key-default-0", "a"),
        ("no-key-default-100", "b"),
    ],
)
def test_static_layer_value_picks_the_route(
    routing: dict[str, dict[str, Counter[str]]], case: str, expected: str
) -> None:
    for name, seen in routing.items():
        assert seen[case] == Counter({expected: 20}), name


# Values set with /runtime_modify, and where the route then sends every request.
MODIFIED = [
    ("100", "b"),
    ("0", "a"),
    ("150", "b"),  # an integer over 100: always enabled
    ("true", "a"),  # not a number: the default (0)
    ("-5", "a"),
    ("100.7", "b"),  # floored to 100
    ('{"numerator": 100, "denominator": "HUNDRED"}', "b"),  # a FractionalPercent
    ('{"numerator": 99, "denominator": "TEN_THOUSAND"}', "a"),  # 0.99 %: see below
]


def test_runtime_modify_changes_routing(tmp_path: Path, ups: dict[str, UpstreamServer]) -> None:
    with both(tmp_path, lambda p, a: bootstrap(p, a, ups, {KEY: 0})) as proxies:
        for value, expected in MODIFIED:
            query = urllib.parse.urlencode({KEY: value}, quote_via=urllib.parse.quote)
            for proxy in proxies:
                assert proxy.admin_call(f"/runtime_modify?{query}", "POST") == (200, "OK\n")
                # Envoy applies it on its workers a moment later; proxyd before answering.
                if proxy.name == "envoy":
                    wait_for(lambda p=proxy, e=expected: e in p.upstreams(1))
                seen = proxy.upstreams(20)
                if value.startswith('{"numerator": 99'):
                    assert seen["a"] >= 15, (proxy.name, value, seen)  # 1 in 101 for "b"
                else:
                    assert seen == Counter({expected: 20}), (proxy.name, value, seen)
        # An empty value removes the override: the static layer's 0 again.
        for proxy in proxies:
            assert proxy.admin_call(f"/runtime_modify?{KEY}=", "POST") == (200, "OK\n")
            wait_for(lambda p=proxy: p.upstreams(1) == Counter({"a": 1}))
            entries = json.loads(proxy.admin_call("/runtime")[1])["entries"]
            assert entries[KEY] == {"final_value": "0", "layer_values": ["0", ""]}


def test_one_random_value_per_request_for_every_route(
    routing: dict[str, dict[str, Counter[str]]],
) -> None:
    for name, seen in routing.items():
        assert set(seen["one-draw"]) == {"a", "b"}, (name, seen)  # 2**-80 to miss one


def swap(root: Path, target: Path) -> None:
    """Point the symlink ``root`` at ``target`` by rename, as Envoy's docs describe."""
    tmp = root.with_name(root.name + ".tmp")
    os.symlink(target, tmp)
    os.replace(tmp, root)


def write_tree(base: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = base / "envoy" / "edge" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return base


def test_disk_layer_symlink_swap_changes_routing(
    tmp_path: Path, ups: dict[str, UpstreamServer]
) -> None:
    v1 = write_tree(tmp_path / "v1", {"routing/to_b": "0\n"})
    v2 = write_tree(tmp_path / "v2", {"routing/to_b": "# rolled out\n100\n"})
    root = tmp_path / "current"
    os.symlink(v1, root)
    work = tmp_path / "proxyd"
    work.mkdir()
    with both(work, lambda p, a: bootstrap(p, a, ups, {KEY: 100}, disk_root=root)) as proxies:
        for proxy in proxies:
            assert proxy.upstreams(10) == Counter({"a": 10}), proxy.name  # disk overrides
        swap(root, v2)
        for proxy in proxies:
            wait_for(lambda p=proxy: p.upstreams(1) == Counter({"b": 1}))
            assert proxy.upstreams(10) == Counter({"b": 10}), proxy.name
            entries = json.loads(proxy.admin_call("/runtime")[1])["entries"]
            assert entries[KEY] == {"final_value": "100", "layer_values": ["100", "100", ""]}


STATIC = {
    "int": 5,
    "float": 1.5,
    "big": 1234567,
    "negative": -3,
    "flag": True,
    "text": "hello",
    "nested": {"x": 1, "deeper": {"y": "two"}},
}


def test_runtime_page_shape(tmp_path: Path, ups: dict[str, UpstreamServer]) -> None:
    base = write_tree(
        tmp_path / "v1",
        {"disk/plain": "77", "disk/comment": "# note\nvalue \n", "int": "6", "two/lines": "a\nb\n"},
    )
    root = tmp_path / "current"
    os.symlink(base, root)
    work = tmp_path / "proxyd"
    work.mkdir()
    pages = {}
    with both(work, lambda p, a: bootstrap(p, a, ups, STATIC, disk_root=root)) as proxies:
        for proxy in proxies:
            assert proxy.admin_call("/runtime_modify?text=override&extra=a+b%20c", "POST")[0] == 200
            status, body = proxy.admin_call("/runtime")
            assert status == 200
            pages[proxy.name] = json.loads(body)
            assert proxy.admin_call("/runtime_modify")[0] == 405  # GET
            status, usage = proxy.admin_call("/runtime_modify", "POST")
            assert status == 400 and usage.startswith("usage: /runtime_modify?key1=value1")
    assert pages["proxyd"] == pages["envoy"]
    assert pages["proxyd"]["layers"] == ["base", "disk", "admin"]
    assert pages["proxyd"]["entries"]["int"] == {"final_value": "6", "layer_values": ["5", "6", ""]}


def test_runtime_modify_without_an_admin_layer_is_refused(
    tmp_path: Path, ups: dict[str, UpstreamServer]
) -> None:
    def config(p: int, a: int) -> str:
        data = yaml.safe_load(bootstrap(p, a, ups, {KEY: 1}))
        data["layered_runtime"]["layers"] = data["layered_runtime"]["layers"][:1]
        return yaml.safe_dump(data)

    with both(tmp_path, config) as proxies:
        for proxy in proxies:
            assert proxy.admin_call(f"/runtime_modify?{KEY}=5", "POST") == (
                503,
                "No admin layer specified",
            ), proxy.name


FAULT = {
    "name": "envoy.filters.http.fault",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
        "abort": {"http_status": 503, "percentage": {"numerator": 0}},
    },
}
CLUSTER_HEADER = "x-envoy-downstream-service-cluster"


def fault_status(proxy: Proxy, cluster: str | None) -> int:
    headers = {} if cluster is None else {CLUSTER_HEADER: cluster}
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        conn.request("GET", "/", headers={"connection": "close", **headers})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_fault_filter_reads_its_runtime_keys(
    tmp_path: Path, ups: dict[str, UpstreamServer]
) -> None:
    """Envoy's keys: the global percentage and status without the downstream cluster
    header; with it, only that cluster's percentage key (default: the configured 0 %)
    and its status key over the global one (default: the configured 503)."""
    static = {
        "fault.http.abort.abort_percent": 100,
        "fault.http.abort.http_status": 418,
        "fault.http.svc.abort.abort_percent": 0,
        "fault.http.svc2.abort.http_status": 419,
    }

    def config(p: int, a: int) -> str:
        data = yaml.safe_load(bootstrap(p, a, ups, static))
        hcm = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        hcm["typed_config"]["http_filters"].insert(0, FAULT)
        return yaml.safe_dump(data, sort_keys=False)

    steps: list[tuple[str, dict[str | None, int]]] = [
        ("", {None: 418, "svc": 200, "svc2": 200}),
        (
            "fault.http.abort.abort_percent=0&fault.http.svc.abort.abort_percent=100",
            {None: 200, "svc": 503, "svc2": 200},
        ),
        ("fault.http.svc2.abort.abort_percent=100", {"svc2": 419}),
    ]
    with both(tmp_path, config) as proxies:
        for query, expected in steps:
            for proxy in proxies:
                if query:
                    assert proxy.admin_call(f"/runtime_modify?{query}", "POST")[0] == 200
                for cluster, status in expected.items():
                    wait_for(lambda p=proxy, c=cluster, s=status: fault_status(p, c) == s)
                    assert [fault_status(proxy, cluster) for _ in range(5)] == [status] * 5, (
                        proxy.name, query, cluster,
                    )  # fmt: skip
