"""xDS from files (path_config_source): LDS → RDS and CDS → EDS, all as watched files.

Each file holds a DiscoveryResponse, as Envoy's filesystem subscriptions read them.
Files are replaced by rename (write a temporary file, then rename it over the old one),
the way operators and config agents update them.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import HCM_TYPE, ROUTER_TYPE, ProxydProcess, wait_for

pytestmark = pytest.mark.timeout(90)

CLUSTER_T = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
CLA_T = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER_T = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_T = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def write(path: Path, version: str, resources: list[dict[str, Any]]) -> None:
    """Replace ``path`` by rename with a DiscoveryResponse holding ``resources``."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version_info": version, "resources": resources}))
    os.replace(tmp, path)


def source(path: Path) -> dict[str, Any]:
    return {"path_config_source": {"path": str(path)}, "resource_api_version": "V3"}


def eds_cluster(name: str, eds: Path) -> dict[str, Any]:
    return {
        "@type": CLUSTER_T,
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": source(eds)},
    }


def cla(name: str, ports: list[int]) -> dict[str, Any]:
    eps = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
        for p in ports
    ]
    return {"@type": CLA_T, "cluster_name": name, "endpoints": [{"lb_endpoints": eps}]}


def rds_listener(name: str, port: int, route_name: str, rds: Path) -> dict[str, Any]:
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "rds": {"route_config_name": route_name, "config_source": source(rds)},
        "http_filters": [
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
        ],
    }
    return {
        "@type": LISTENER_T,
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }  # fmt: skip
        ],
    }


def route_config(name: str, routes: dict[str, str], regex: str = "") -> dict[str, Any]:
    out = [{"match": {"prefix": p}, "route": {"cluster": c}} for p, c in routes.items()]
    if regex:
        out.insert(0, {"match": {"safe_regex": {"regex": regex}}, "route": {"cluster": "a"}})
    return {
        "@type": ROUTE_T,
        "name": name,
        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": out}],
    }


def bootstrap(admin_port: int, lds: Path, cds: Path) -> str:
    return json.dumps(
        {
            "node": {"id": "proxy-1", "cluster": "test"},
            "admin": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
            },
            "dynamic_resources": {"lds_config": source(lds), "cds_config": source(cds)},
        }
    )


@dataclass(frozen=True)
class Files:
    lds: Path
    rds: Path
    cds: Path
    eds: Path


def one_cluster(tmp_path: Path, upstream_port: int, listeners: dict[str, int]) -> Files:
    """Version 1 of every file: cluster "a" (EDS) at ``upstream_port``, route "/" → a,
    and an RDS listener per ``{name: port}``."""
    f = Files(*(tmp_path / f"{t}.json" for t in ("lds", "rds", "cds", "eds")))
    write(f.eds, "e1", [cla("a", [upstream_port])])
    write(f.cds, "c1", [eds_cluster("a", f.eds)])
    write(f.rds, "r1", [route_config("routes", {"/": "a"})])
    write(f.lds, "l1", [rds_listener(n, port, "routes", f.rds) for n, port in listeners.items()])
    return f


def upstream_of(url: str) -> str:
    r = httpx.get(url, timeout=5)
    return r.headers.get("x-upstream-name", str(r.status_code))


def config_dump(p: ProxydProcess) -> dict[str, Any]:
    status, body = p.admin("/config_dump")
    assert status == 200
    return {c["@type"].rsplit(".", 1)[-1]: c for c in json.loads(body)["configs"]}


def test_files_feed_listeners_routes_clusters_and_endpoints(tmp_path, upstream):
    a, b = upstream("a"), upstream("b")
    lds, rds, cds, eds = (tmp_path / f"{t}.json" for t in ("lds", "rds", "cds", "eds"))
    port = port2 = 0  # bound by proxyd; the real ports come from /listeners
    write(eds, "e1", [cla("a", [a.port]), cla("b", [b.port])])
    write(cds, "c1", [eds_cluster("a", eds), eds_cluster("b", eds)])
    write(rds, "r1", [route_config("routes", {"/": "a"})])
    write(lds, "l1", [rds_listener("front", port, "routes", rds)])
    config = bootstrap(0, lds, cds)
    with ProxydProcess(tmp_path, config, config_name="proxyd.json") as p:
        bound = p.listener_port("front")
        url = f"http://127.0.0.1:{bound}/x"
        assert upstream_of(url) == "a"

        # RDS update: the route now leads to b.
        write(rds, "r2", [route_config("routes", {"/": "b"})])
        wait_for(lambda: upstream_of(url) == "b", timeout=10)

        # EDS update: cluster b's endpoint moves to a's server.
        write(eds, "e2", [cla("a", [a.port]), cla("b", [a.port])])
        wait_for(lambda: upstream_of(url) == "a", timeout=10)

        # A route that does not compile: refused, the running routes stay, the
        # rejection shows in /config_dump and the stats.
        write(rds, "r3", [route_config("routes", {"/": "a"}, regex="(?<=x)y")])
        dump = wait_for(
            lambda: (
                (d := config_dump(p))["RoutesConfigDump"].get("dynamic_route_configs")
                and "error_state" in d["RoutesConfigDump"]["dynamic_route_configs"][0]
                and d
            ),
            timeout=10,
        )
        routes = dump["RoutesConfigDump"]["dynamic_route_configs"][0]
        assert routes["version_info"] == "r2"
        assert routes["error_state"]["version_info"] == "r3"
        assert "safe_regex" in routes["error_state"]["details"]
        assert upstream_of(url) == "a"  # r2's route to b, whose endpoint is now a

        # LDS: add a second listener, then remove it; the first keeps serving.
        write(lds, "l2", [rds_listener("front", port, "routes", rds), rds_listener("second", port2, "routes", rds)])  # fmt: skip
        url2 = f"http://127.0.0.1:{p.listener_port('second')}/y"
        wait_for(lambda: _answers(url2), timeout=10)
        dump = config_dump(p)
        names = [x["name"] for x in dump["ListenersConfigDump"]["dynamic_listeners"]]
        assert names == ["front", "second"]
        assert dump["ListenersConfigDump"]["version_info"] == "l2"
        write(lds, "l3", [rds_listener("front", port, "routes", rds)])
        wait_for(lambda: not _answers(url2), timeout=10)
        assert upstream_of(url) == "a"

        # CDS: the dump shows the active clusters with their versions.
        clusters = config_dump(p)["ClustersConfigDump"]
        assert [c["cluster"]["name"] for c in clusters["dynamic_active_clusters"]] == ["a", "b"]
        assert clusters["version_info"] == "c1"
        stats = p.stats()
        assert stats["cluster_manager.cds.update_success"] >= 1
        assert stats["listener_manager.lds.update_success"] >= 3


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_bad_file_keeps_the_last_good_config(tmp_path, upstream):
    a = upstream("a")
    port = 0  # bound by proxyd; the real port comes from /listeners
    f = one_cluster(tmp_path, a.port, {"front": port})
    lds, cds, eds = f.lds, f.cds, f.eds
    with ProxydProcess(tmp_path, bootstrap(0, lds, cds), config_name="proxyd.json") as p:  # fmt: skip
        bound = p.listener_port("front")
        url = f"http://127.0.0.1:{bound}/"
        assert upstream_of(url) == "a"
        tmp = cds.with_suffix(".tmp")
        tmp.write_text("{ not json")
        os.replace(tmp, cds)
        wait_for(lambda: p.stats().get("cluster_manager.cds.update_rejected", 0) >= 1, timeout=10)
        clusters = config_dump(p)["ClustersConfigDump"]
        assert [c["cluster"]["name"] for c in clusters["dynamic_active_clusters"] if "cluster" in c] == ["a"]  # fmt: skip
        errors = [
            c["error_state"] for c in clusters["dynamic_active_clusters"] if "error_state" in c
        ]
        assert errors and "JSON syntax error" in errors[0]["details"]
        # A cluster with a field proxyd does not implement is refused by name.
        bad = eds_cluster("a", eds) | {"lb_policy": "CLUSTER_PROVIDED"}
        write(cds, "c2", [bad])
        wait_for(lambda: p.stats().get("cluster_manager.cds.update_rejected", 0) >= 2, timeout=10)
        assert "lb_policy CLUSTER_PROVIDED not supported by proxyd" in p.log()
        assert upstream_of(url) == "a"


def test_eds_cluster_warms_until_its_endpoints_arrive(tmp_path, upstream):
    """A CDS cluster of type EDS added while running is not used before its
    ClusterLoadAssignment exists; once the endpoints arrive it serves."""
    a = upstream("a")
    lds, rds, cds, eds = (tmp_path / f"{t}.json" for t in ("lds", "rds", "cds", "eds"))
    port = 0  # bound by proxyd; the real port comes from /listeners
    write(eds, "e1", [])
    write(cds, "c1", [])
    write(rds, "r1", [route_config("routes", {"/": "a"})])
    write(lds, "l1", [rds_listener("front", port, "routes", rds)])
    with ProxydProcess(tmp_path, bootstrap(0, lds, cds), config_name="proxyd.json") as p:  # fmt: skip
        bound = p.listener_port("front")
        url = f"http://127.0.0.1:{bound}/"
        assert httpx.get(url, timeout=5).status_code == 503  # no cluster 'a' yet
        write(cds, "c2", [eds_cluster("a", eds)])
        wait_for(lambda: p.stats().get("cluster_manager.cds.update_success", 0) >= 2, timeout=10)
        clusters = config_dump(p)["ClustersConfigDump"]
        assert [c["cluster"]["name"] for c in clusters["dynamic_warming_clusters"]] == ["a"]
        assert "dynamic_active_clusters" not in clusters
        assert httpx.get(url, timeout=5).status_code == 503  # still warming
        write(eds, "e2", [cla("a", [a.port])])
        wait_for(lambda: upstream_of(url) == "a", timeout=10)
        clusters = config_dump(p)["ClustersConfigDump"]
        assert [c["cluster"]["name"] for c in clusters["dynamic_active_clusters"]] == ["a"]
        assert "dynamic_warming_clusters" not in clusters


def test_listener_update_drains_only_that_listeners_connections(tmp_path, upstream):
    """An updated listener's open connections get "connection: close" on their next
    response; connections of an unchanged listener stay open."""
    a = upstream("a")
    port1 = port2 = 0  # bound by proxyd; the real ports come from /listeners
    f = one_cluster(tmp_path, a.port, {"one": port1, "two": port2})
    lds, cds = f.lds, f.cds
    first, second = (rds_listener(n, p, "routes", f.rds) for n, p in (("one", port1), ("two", port2)))  # fmt: skip
    with (
        ProxydProcess(
            tmp_path,
            bootstrap(0, lds, cds),
            concurrency=1,
            config_name="proxyd.json",
        ) as p,  # fmt: skip
        httpx.Client(timeout=5) as c1,
        httpx.Client(timeout=5) as c2,
    ):
        bound1, bound2 = p.listener_port("one"), p.listener_port("two")
        for client, port in ((c1, bound1), (c2, bound2)):
            r = client.get(f"http://127.0.0.1:{port}/")
            assert r.status_code == 200 and r.headers.get("connection") != "close"
        write(lds, "l2", [first, second | {"per_connection_buffer_limit_bytes": 65536}])
        wait_for(lambda: p.stats().get("listener_manager.lds.update_success", 0) >= 2, timeout=10)
        wait_for(lambda: config_dump(p)["ListenersConfigDump"].get("version_info") == "l2", timeout=10)  # fmt: skip
        wait_for(lambda: (s := p.status())["workers"][0]["epoch"] == s["epoch"], timeout=5)
        r1 = c1.get(f"http://127.0.0.1:{bound1}/")
        r2 = c2.get(f"http://127.0.0.1:{bound2}/")
        assert r1.status_code == 200 and r1.headers.get("connection") != "close"
        assert r2.status_code == 200 and r2.headers.get("connection") == "close"


def test_hot_restart_keeps_dynamic_listeners_serving(tmp_path, upstream):
    """The new master subscribes afresh, takes the LDS listener's socket from the old
    one, and not a request is lost on the way."""
    import signal
    import threading

    import psutil

    a = upstream("a")
    port = 0  # bound by proxyd; the real port comes from /listeners
    f = one_cluster(tmp_path, a.port, {"front": port})
    lds, cds = f.lds, f.cds
    results: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.is_set():
                try:
                    results.append(client.get(f"http://127.0.0.1:{bound}/").status_code)
                except httpx.HTTPError:
                    results.append(0)

    new_pid = 0
    with ProxydProcess(tmp_path, bootstrap(0, lds, cds), config_name="proxyd.json") as p:  # fmt: skip
        bound = p.listener_port("front")
        worker = threading.Thread(target=load)
        worker.start()
        try:
            wait_for(lambda: len(results) > 20, timeout=10)
            res = p.ctl("hot-restart", timeout=60)
            assert res.returncode == 0, res.stderr
            new_pid = int(res.stdout.split("new master pid ")[1].split()[0])
            p.proc.wait(30)  # the old master drained and left
            count = len(results)
            wait_for(lambda: len(results) > count + 20, timeout=10)
        finally:
            stop.set()
            worker.join(10)
            if new_pid:
                children = psutil.Process(new_pid).children(recursive=True)
                os.kill(new_pid, signal.SIGTERM)
                psutil.wait_procs([psutil.Process(new_pid), *children], timeout=20)
    assert results and set(results) == {200}, f"{len(results)} requests, failures: {[r for r in results if r != 200][:5]}"  # fmt: skip


def test_reload_keeps_what_xds_delivered(tmp_path, upstream):
    """proxyctl reload with unchanged config sources keeps the dynamic resources (and
    their connections); the static part of the new file is applied beside them."""
    a = upstream("a")
    port = 0  # bound by proxyd; the real port comes from /listeners
    f = one_cluster(tmp_path, a.port, {"front": port})
    lds, cds = f.lds, f.cds
    config = bootstrap(0, lds, cds)
    with (
        ProxydProcess(tmp_path, config, config_name="proxyd.json") as p,
        httpx.Client(timeout=5) as client,
    ):
        bound = p.listener_port("front")
        url = f"http://127.0.0.1:{bound}/"
        assert client.get(url).headers["x-upstream-name"] == "a"
        res = p.ctl("reload")
        assert res.returncode == 0, res.stderr
        r = client.get(url)  # the same keep-alive connection: the listener did not change
        assert r.headers["x-upstream-name"] == "a" and r.headers.get("connection") != "close"
        dump = config_dump(p)
        assert dump["ListenersConfigDump"]["version_info"] == "l1"
        assert [c["cluster"]["name"] for c in dump["ClustersConfigDump"]["dynamic_active_clusters"]] == ["a"]  # fmt: skip


def _exchange(sock: socket.socket) -> bytes:
    """Send one GET on ``sock``, read the whole response, return its head (lower case)."""
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    head = head.lower()
    length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_removed_and_updated_listeners_drain_their_connections(tmp_path, upstream):
    """A request on a kept-alive connection of a removed listener is still answered
    (with connection: close), and an updated listener's idle connections are closed once
    the drain time (--drain-time-s, 5 s in these tests) is over."""
    a = upstream("a")
    port1 = port2 = 0  # bound by proxyd; the real ports come from /listeners
    f = one_cluster(tmp_path, a.port, {"one": port1, "two": port2})
    one, two = (rds_listener(n, p, "routes", f.rds) for n, p in (("one", port1), ("two", port2)))  # fmt: skip
    config = bootstrap(0, f.lds, f.cds)
    with ProxydProcess(tmp_path, config, concurrency=1, config_name="proxyd.json") as p:  # fmt: skip
        bound1, bound2 = p.listener_port("one"), p.listener_port("two")
        s1 = socket.create_connection(("127.0.0.1", bound1), timeout=10)
        s2 = socket.create_connection(("127.0.0.1", bound2), timeout=10)
        with s1, s2:
            assert b"connection: close" not in _exchange(s1)
            assert b"connection: close" not in _exchange(s2)
            # "one" is updated, "two" removed.
            write(f.lds, "l2", [one | {"per_connection_buffer_limit_bytes": 65536}])
            wait_for(lambda: (s := p.status())["workers"][0]["epoch"] == s["epoch"] > 1, timeout=10)  # fmt: skip
            head = _exchange(s2)
            assert head.startswith(b"http/1.1 200") and b"connection: close" in head
            assert s2.recv(1) == b""  # and closed after it
            # s1 stays idle: closed by proxyd when the drain time is over, not before.
            s1.settimeout(2.5)
            with pytest.raises(TimeoutError):
                s1.recv(1)
            s1.settimeout(10)
            assert s1.recv(1) == b""


def test_listener_a_worker_could_not_compile_is_nacked(tmp_path, upstream):
    """Valid for the protos and the config compiler, refused by the worker's compile
    (proxyd.protocol.epoch_check): NACKed, and the running listener stays."""
    a = upstream("a")
    port = 0  # bound by proxyd; the real port comes from /listeners
    f = one_cluster(tmp_path, a.port, {"front": port})
    with ProxydProcess(tmp_path, bootstrap(0, f.lds, f.cds), config_name="proxyd.json") as p:  # fmt: skip
        bound = p.listener_port("front")
        url = f"http://127.0.0.1:{bound}/"
        assert upstream_of(url) == "a"
        bad = rds_listener("front", port, "routes", f.rds)
        hcm = bad["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["server_name"] = "sn☃w"
        write(f.lds, "l2", [bad])
        wait_for(lambda: p.stats().get("listener_manager.lds.update_rejected", 0) >= 1, timeout=10)
        listeners = config_dump(p)["ListenersConfigDump"]
        assert listeners["version_info"] == "l1"
        (front,) = listeners["dynamic_listeners"]
        details = front["error_state"]["details"]
        assert "a worker cannot compile it" in details and "server_name 'sn☃w'" in details
        assert p.status()["epoch"] == 1
        r = httpx.get(url, timeout=5)
        assert r.headers["x-upstream-name"] == "a" and r.headers["server"] == "envoy"
