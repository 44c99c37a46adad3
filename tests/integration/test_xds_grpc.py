"""proxyd's gRPC xDS client against a management server that goes away and comes back.

While the server is gone proxyd keeps routing with what it had; when a server answers
on the same address again, proxyd reconnects (jittered backoff), asks again with the
versions it holds, and takes the new resources.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compat.xds_harness import (
    ADS_SOURCE,
    AdsSource,
    ProxydTarget,
    get,
    listener_port,
    stats,
)
from tests.support import UpstreamServer, wait_for
from tests.xds_server import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    XdsServer,
    eds_cluster,
    load_assignment,
    rds_listener,
    route_config,
)

pytestmark = pytest.mark.timeout(90)


def push_all(source: AdsSource, version: str, port: int, upstream: UpstreamServer) -> None:
    source.push(ENDPOINT, version, [load_assignment("web", [upstream.port])])
    source.push(CLUSTER, version, [eds_cluster("web", ADS_SOURCE)])
    source.push(ROUTE, version, [route_config("routes", {"/": "web"})])
    source.push(LISTENER, version, [rds_listener("ingress", port, "routes", ADS_SOURCE)])


def test_ads_reconnects_and_resumes_with_its_versions(tmp_path: Path, upstream) -> None:
    a, b = upstream("a"), upstream("b")
    first = XdsServer().start()
    target = ProxydTarget()
    try:
        source = AdsSource(first, "ingress")
        push_all(source, "v1", 0, a)  # port 0: proxyd binds one, /listeners says which
        admin = target.start(source.bootstrap(), tmp_path)
        port = listener_port(admin, "ingress")
        wait_for(lambda: get(port, "/")[1] == "a", timeout=10)
        assert stats(admin)["control_plane.connected_state"] == "1"

        grpc_port = first.grpc_port
        first.close()
        wait_for(lambda: stats(admin)["control_plane.connected_state"] == "0", timeout=10)
        assert get(port, "/") == (200, "a")  # the last good config keeps serving

        second = XdsServer(grpc_port=grpc_port).start()
        try:
            source.xds = second
            push_all(source, "v2", 0, b)
            wait_for(lambda: get(port, "/")[1] == "b", timeout=15)
            assert stats(admin)["control_plane.connected_state"] == "1"
            # The new stream asked with the version proxyd held, as Envoy does.
            cds = second.requests(CLUSTER)
            assert cds[0].request.version_info == "v1"
            assert cds[0].request.node.id == "compat-node"
            second.wait_for_ack(CLUSTER, "v2")
        finally:
            second.close()
    finally:
        target.stop()
        first.close()


def test_many_clusters_by_cds_and_eds_and_one_eds_update(tmp_path: Path, upstream) -> None:
    """300 EDS clusters of 10 endpoints over ADS all become routable; an EDS update of one
    changes that cluster only (the accepted update reports one changed resource)."""
    ups = [upstream(f"u{i}") for i in range(10)]
    ports = [u.port for u in ups]
    n = 300
    names = [f"cluster_{i}" for i in range(n)]
    with XdsServer() as xds:
        source = AdsSource(xds, "ingress")
        assignments = [load_assignment(name, ports) for name in names]
        source.push(ENDPOINT, "e1", assignments)
        source.push(CLUSTER, "c1", [eds_cluster(name, ADS_SOURCE) for name in names])
        routes = {f"/c{i}/": name for i, name in enumerate(names)}
        source.push(ROUTE, "r1", [route_config("routes", routes)])
        source.push(LISTENER, "l1", [rds_listener("ingress", 0, "routes", ADS_SOURCE)])
        target = ProxydTarget()
        try:
            admin = target.start(source.bootstrap(), tmp_path)
            port = listener_port(admin, "ingress", timeout=30)
            wait_for(lambda: get(port, f"/c{n - 1}/")[0] == 200, timeout=30)
            assert all(get(port, f"/c{i}/")[0] == 200 for i in range(0, n, 7))
            assert stats(admin)["cluster.cluster_7.membership_total"] == "10"

            moved = list(assignments)
            moved[7] = load_assignment(names[7], [ports[3]])
            source.push(ENDPOINT, "e2", moved)
            wait_for(lambda: all(get(port, "/c7/")[1] == "u3" for _ in range(10)), timeout=10)
            assert stats(admin)["cluster.cluster_7.membership_total"] == "1"
            assert {get(port, "/c8/")[1] for _ in range(20)} == {f"u{i}" for i in range(10)}
            accepted = [
                line for line in target.log_text().splitlines()
                if '"xds_update_accepted"' in line and '"version": "e2"' in line
            ]  # fmt: skip
            assert accepted and '"changed": 1' in accepted[0]
        finally:
            target.stop()


def test_hot_restart_hands_xds_resources_over(tmp_path: Path, upstream) -> None:
    """The old master gives the new one what xDS delivered: with the management server
    down, the new master still serves the dynamic listener and cluster at once."""
    import json
    import os
    import signal

    import psutil

    a = upstream("a")
    xds = XdsServer().start()
    target = ProxydTarget()
    new_pid = 0
    try:
        source = AdsSource(xds, "ingress")
        push_all(source, "v1", 0, a)
        admin = target.start(source.bootstrap(), tmp_path)
        port = listener_port(admin, "ingress")
        wait_for(lambda: get(port, "/")[1] == "a", timeout=10)
        xds.close()  # the control plane is gone from here on
        proc = target._proc
        assert proc is not None
        res = proc.ctl("hot-restart", timeout=60)
        assert res.returncode == 0, res.stderr + proc.log()
        new_pid = int(res.stdout.split("new master pid ")[1].split()[0])
        assert proc.proc is not None
        proc.proc.wait(30)  # the old master drained and left
        assert get(port, "/") == (200, "a")
        status, body = proc.admin("/config_dump")
        dump = {c["@type"].rsplit(".", 1)[-1]: c for c in json.loads(body)["configs"]}
        assert dump["ClustersConfigDump"]["version_info"] == "v1"
        assert [x["name"] for x in dump["ListenersConfigDump"]["dynamic_listeners"]] == ["ingress"]
        assert '"xds_seeded"' in proc.log()
        assert stats(admin)["control_plane.connected_state"] == "0"
    finally:
        if new_pid:
            children = psutil.Process(new_pid).children(recursive=True)
            os.kill(new_pid, signal.SIGTERM)
            psutil.wait_procs([psutil.Process(new_pid), *children], timeout=20)
        target.stop()
        xds.close()
