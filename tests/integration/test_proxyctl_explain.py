"""``proxyctl explain`` against a real master: the answer it prints for several requests,
and that each request, when it is then really sent, reaches the cluster explain named."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from tests.explain_scenario import CLUSTERS, config
from tests.support import ProxydProcess, UpstreamServer


class Scenario(NamedTuple):
    proxy: ProxydProcess
    ports: dict[str, int]  # upstream name -> port


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    names = ("web_a", "web_b", *CLUSTERS[1:-1], *RING_HOSTS)
    ups = [UpstreamServer(name).start() for name in names]
    ports: dict[str, list[int]] = {}
    for u in ups:
        ports.setdefault(u.name.split("_")[0], []).append(u.port)
    text = yaml.safe_dump(config(ports), sort_keys=False)
    try:
        with ProxydProcess(tmp_path_factory.mktemp("explain"), text, concurrency=1) as p:
            yield Scenario(p, {u.name: u.port for u in ups})
    finally:
        for u in ups:
            u.stop()


RING_HOSTS = ("ring_a", "ring_b", "ring_c")


@pytest.fixture
def proxy(scenario: Scenario) -> ProxydProcess:
    return scenario.proxy


def send(port: int, method: str, path: str, headers: dict[str, str]) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("x-upstream-name")
    finally:
        conn.close()


REQUESTS = [
    # (method, path, headers, route, cluster)
    ("GET", "/users/42", {"Host": "api.example.com", "x-env": "prod"}, "users", "api"),
    ("GET", "/users/42", {"Host": "a.api.example.com", "x-env": "dev"}, "api_rest", "api"),
    ("GET", "/search?q=x", {"Host": "api.example.com"}, "search", "api"),
    (
        "POST",
        "/rpc/m",
        {"Host": "api.example.com", "content-type": "application/grpc"},
        "rpc",
        "api",
    ),  # fmt: skip
    ("GET", "/split", {"Host": "x", "x-split": "2"}, "split", "blue"),
    ("GET", "/split", {"Host": "x", "x-split": "7"}, "split", "green"),
    ("GET", "/pick", {"Host": "x", "x-cluster": "green"}, "by_header", "green"),
    ("GET", "/canary", {"Host": "x"}, "web_rest", "web"),
]


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: f"{r[0]} {r[2]['Host']}{r[1]}")
def test_explain_names_where_the_request_goes(proxy: ProxydProcess, req: tuple) -> None:
    method, path, headers, route, cluster = req
    port = proxy.listener_port("edge")
    lines = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    res = proxy.ctl("explain", "--json", method, f"http://127.0.0.1:{port}{path}", *lines)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["listener"]["port"] == port
    assert (doc["result"]["route"], doc["result"]["cluster"]) == (route, cluster)
    status, name = send(port, method, path, headers)
    assert (status, (name or "").split("_")[0]) == (200, cluster)


@pytest.mark.parametrize("user", ["alice", "bob", "carol", "dave"])
def test_hash_policy_host_is_the_one_that_answers(scenario: Scenario, user: str) -> None:
    """RING_HASH by header: explain names the host, and the request reaches that host."""
    proxy = scenario.proxy
    port = proxy.listener_port("edge")
    res = proxy.ctl("explain", "--json", "GET", "http://x/sticky", "-H", f"x-user: {user}")
    assert res.returncode == 0, res.stderr
    (cluster,) = json.loads(res.stdout)["clusters"]
    picked = cluster["next_pick"]
    hosts = {h["address"]: h for h in cluster["hosts"]}
    assert picked in hosts
    status, name = send(port, "GET", "/sticky", {"Host": "x", "x-user": user})
    assert status == 200
    upstream_ports = {h.split(":")[1]: h for h in hosts}
    # The upstream that answered is the one listening on the port explain named.
    answered = scenario.ports[name]
    assert upstream_ports[str(answered)] == picked


def test_next_pick_is_the_workers_and_is_not_taken(scenario: Scenario) -> None:
    """ROUND_ROBIN: explain asks the worker; asking twice gives the same host (nothing is
    taken), the request then goes to that host, and the next explain names the other."""
    proxy = scenario.proxy
    port = proxy.listener_port("edge")
    by_port = {p: name for name, p in scenario.ports.items()}

    def next_pick() -> dict:
        res = proxy.ctl("explain", "--json", "GET", "http://x/anything")
        assert res.returncode == 0, res.stderr
        (cluster,) = json.loads(res.stdout)["clusters"]
        assert cluster["next_pick_source"] == "workers"
        assert list(cluster["worker_picks"]) == ["0"]
        return cluster

    first = next_pick()
    assert next_pick()["next_pick"] == first["next_pick"]
    expected = by_port[int(first["next_pick"].rsplit(":", 1)[1])]
    assert send(port, "GET", "/anything", {"Host": "x"}) == (200, expected)
    second = next_pick()["next_pick"]
    assert second != first["next_pick"]
    assert send(port, "GET", "/anything", {"Host": "x"}) == (200, by_port[int(second.rsplit(":", 1)[1])])  # fmt: skip


def test_text_output(proxy: ProxydProcess) -> None:
    res = proxy.ctl(
        "explain", "GET", "http://a.api.example.com/users/9", "-H", "x-env: dev", "--listener", "edge"
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "listener  edge (127.0.0.1:" in out
    assert "suffix   '*.api.example.com': -> virtual host 'api_host'" in out
    assert "[0] users: no - safe_regex '/users/[0-9]+' matches, but header 'x-env': exact 'prod' fails on 'dev'" in out  # fmt: skip
    assert "[3] api_rest: MATCH - prefix '/' matches" in out
    assert "fault (HTTPFault): runs" in out
    assert "'api': ROUND_ROBIN" in out and "next pick: 127.0.0.1:" in out
    assert out.rstrip().endswith("result: route 'api_rest', cluster 'api' (forwarded upstream)")


def test_direct_response_and_weighted_odds(proxy: ProxydProcess) -> None:
    res = proxy.ctl("explain", "GET", "http://x/hello")
    assert "route taken: hello (direct_response)" in res.stdout
    assert "result: route 'hello', status 200 (direct_response)" in res.stdout
    res = proxy.ctl("explain", "GET", "http://x/split")
    assert "'blue' weight 3 (75.0%)" in res.stdout and "'green' weight 1 (25.0%)" in res.stdout


def test_unknown_listener_is_refused_with_the_listeners_named(proxy: ProxydProcess) -> None:
    res = proxy.ctl("explain", "--listener", "nope", "GET", "http://x/")
    assert res.returncode == 1
    assert "no listener 'nope'; the listeners are: edge (port" in res.stderr


def test_explain_needs_a_master(tmp_path: Path) -> None:
    res = ProxydProcess(tmp_path, "").ctl("explain", "GET", "http://x/")
    assert res.returncode == 2 and "no control socket" in res.stderr
