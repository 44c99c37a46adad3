"""Pipe (Unix socket) listeners and upstreams, port 0 and --admin-address-path, with a
real proxyd, real sockets and real clients.

Every port here is chosen by the kernel when proxyd (or an upstream) binds it; the test
learns it afterwards (the admin address file, ``/listeners``).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyd import pipes
from tests.integration.master_fixtures import get
from tests.integration.test_hot_restart import MasterLine
from tests.support import (
    PipeUpstreamServer,
    ProxydProcess,
    http_config,
    http_listener,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)


class _PipeConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 5.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(pipes.sockaddr(self.path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def pipe_get(path: str, target: str = "/") -> tuple[int, dict[str, str], bytes]:
    """One request over the Unix socket ``path`` ("@name": abstract namespace)."""
    conn = _PipeConnection(path)
    try:
        conn.request("GET", target, headers={"connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def route_all(cluster: str) -> dict[str, Any]:
    return {
        "virtual_hosts": [
            {
                "name": "all",
                "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
            }
        ]
    }


def pipe_cluster(name: str, paths: list[str]) -> dict[str, Any]:
    endpoints = [{"endpoint": {"address": {"pipe": {"path": p}}}} for p in paths]
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    }


def with_pipe_listener(
    config: str, name: str, path: str, cluster: str, mode: int | None = None, **hcm: Any
) -> str:
    """``config`` (an http_config) with one more listener, on the pipe ``path``."""
    data = yaml.safe_load(config)
    lst = http_listener(name, 0, route_all(cluster), **hcm)
    lst["address"] = {"pipe": {"path": path, **({} if mode is None else {"mode": mode})}}
    data["static_resources"]["listeners"].append(lst)
    return yaml.safe_dump(data, sort_keys=False)


@pytest.fixture
def sock_dir():
    """A short directory for socket files (a Unix socket path has at most 107 bytes)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="pxd-") as d:
        yield Path(d)


def test_pipe_listener_to_pipe_upstream(tmp_path: Path, sock_dir: Path) -> None:
    up_path = str(sock_dir / "up.sock")
    listen_path = str(sock_dir / "in.sock")
    # A stale file where the listener goes: Envoy unlinks whatever is there and binds.
    Path(listen_path).write_text("left over from a crash\n")
    log_path = tmp_path / "access.log"
    access_log = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": str(log_path),
                "log_format": {
                    "text_format_source": {
                        "inline_string": "%DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% "
                        "%UPSTREAM_HOST% %RESPONSE_CODE%\n"
                    }
                },
            },
        }
    ]
    with PipeUpstreamServer("piped", up_path) as up:
        data = yaml.safe_load(http_config(0, 0, {"web": [1]}))
        data["static_resources"]["clusters"] = [pipe_cluster("web", [up_path])]
        config = with_pipe_listener(
            yaml.safe_dump(data), "unix_in", listen_path, "web", mode=0o600, access_log=access_log
        )
        with ProxydProcess(tmp_path, config) as p:
            st = os.stat(listen_path)
            assert stat.S_ISSOCK(st.st_mode)
            assert stat.S_IMODE(st.st_mode) == 0o600
            for _ in range(3):
                status, headers, body = pipe_get(listen_path, "/x")
                assert status == 200, p.log()
                assert headers["x-upstream-name"] == "piped"
            # The TCP listener on a kernel-chosen port reaches the pipe upstream too.
            assert get(p.listener_port("ingress"))[1]["x-upstream-name"] == "piped"
            up.wait_requests(4)

            # Workers push their counters to the admin now and then: wait for both to arrive.
            def counted() -> dict[str, int] | None:
                s = p.stats()
                if s.get(f"listener.{listen_path}.downstream_cx_total") != 3:
                    return None
                return s if s.get("cluster.web.upstream_rq_200", 0) >= 4 else None

            s = wait_for(counted)
            assert s["cluster.web.upstream_rq_200"] == 4
            clusters = json.loads(p.admin("/clusters?format=json")[1])
            (web,) = [c for c in clusters["cluster_statuses"] if c["name"] == "web"]
            assert [h["address"] for h in web["host_statuses"]] == [{"pipe": {"path": up_path}}]
            assert f"web::{up_path}::cx_total::" in p.admin("/clusters")[1]
            text = p.admin("/listeners")[1]
            assert f"unix_in::{listen_path}\n" in text
            listeners = json.loads(p.admin("/listeners?format=json")[1])["listener_statuses"]
            assert {"name": "unix_in", "local_address": {"pipe": {"path": listen_path}}} in listeners  # fmt: skip
            wait_for(lambda: log_path.exists() and log_path.read_text().count("\n") >= 3)
            first = log_path.read_text().splitlines()[0]
            # Envoy names both ends of a Unix socket connection by the listener's path.
            assert first == f"{listen_path} {listen_path} {up_path} 200"
        # proxyd leaves the socket file in place, as Envoy does (the next start replaces it).
        assert stat.S_ISSOCK(os.stat(listen_path).st_mode)


def test_abstract_namespace_listener_and_upstream(tmp_path: Path) -> None:
    tag = f"proxyd-test-{os.getpid()}-{id(tmp_path)}"
    up_name, in_name = f"@{tag}-up", f"@{tag}-in"
    with PipeUpstreamServer("abstract", up_name):
        data = yaml.safe_load(http_config(0, 0, {"web": [1]}))
        data["static_resources"]["clusters"] = [pipe_cluster("web", [up_name])]
        config = with_pipe_listener(yaml.safe_dump(data), "abs_in", in_name, "web")
        with ProxydProcess(tmp_path, config) as p:
            status, headers, _ = pipe_get(in_name)
            assert (status, headers["x-upstream-name"]) == (200, "abstract")
            assert f"abs_in::{in_name}\n" in p.admin("/listeners")[1]
            assert wait_for(lambda: p.stats().get(f"listener.{in_name}.downstream_cx_total") == 1)


def test_a_missing_pipe_upstream_is_a_connect_failure(tmp_path: Path, sock_dir: Path) -> None:
    data = yaml.safe_load(http_config(0, 0, {"web": [1]}))
    data["static_resources"]["clusters"] = [pipe_cluster("web", [str(sock_dir / "none.sock")])]
    with ProxydProcess(tmp_path, yaml.safe_dump(data)) as p:
        status, _, body = get(p.listener_port())
        assert status == 503
        assert b"upstream connect error" in body or b"no healthy upstream" in body
        assert wait_for(lambda: p.stats().get("cluster.web.upstream_cx_connect_fail", 0) >= 1)


def test_admin_address_path_holds_the_bound_admin_address(tmp_path: Path, upstream) -> None:
    a = upstream("a")
    with ProxydProcess(tmp_path, http_config(0, 0, {"a": [a.port]})) as p:
        text = p.admin_address_path.read_text()
        assert text == f"127.0.0.1:{p.admin_port}"  # Envoy's format: no newline
        assert p.admin_port != 0
        assert p.admin("/ready") == (200, "LIVE\n")


def test_port_zero_listener_shows_its_port_and_keeps_it_over_reloads(
    tmp_path: Path, upstream
) -> None:
    a, b = upstream("a"), upstream("b")
    config = http_config(0, 0, {"a": [a.port], "b": [b.port]})
    with ProxydProcess(tmp_path, config, concurrency=2) as p:
        port = p.listener_port("ingress")
        assert port != 0
        assert f"ingress::127.0.0.1:{port}\n" in p.admin("/listeners")[1]
        # Both workers accept on the one port the master bound.
        for _ in range(4):
            assert get(port)[1]["x-upstream-name"] == "a"
        # Envoy's stat scope is the configured address, port 0 included.
        assert wait_for(lambda: p.stats().get("listener.127.0.0.1_0.downstream_cx_total") == 4)
        # A reload with the listener unchanged, then one that changes its routes: the
        # listener keeps its socket, so its port.
        assert p.ctl("reload").returncode == 0
        assert p.listener_port("ingress") == port
        changed = config.replace("route: { cluster: a", "route: { cluster: b")
        assert changed != config
        p.config_path.write_text(changed)
        res = p.ctl("reload")
        assert res.returncode == 0, res.stderr
        assert p.listener_port("ingress") == port
        assert get(port)[1]["x-upstream-name"] == "b"


def test_pipe_and_port_zero_listeners_survive_a_hot_restart(
    tmp_path: Path, sock_dir: Path, upstream
) -> None:
    a = upstream("a")
    listen_path = str(sock_dir / "in.sock")
    config = with_pipe_listener(http_config(0, 0, {"a": [a.port]}), "unix_in", listen_path, "a")
    args = ("--drain-time-s", "5", "--parent-shutdown-time-s", "10")
    p = ProxydProcess(tmp_path, config, extra_args=args).start()
    line = MasterLine(p)
    try:
        port = p.listener_port("ingress")
        inode = os.stat(listen_path).st_ino
        assert pipe_get(listen_path)[0] == 200
        res = line.hot_restart()
        assert res.returncode == 0, res.stderr + p.log()
        assert p.status()["pid"] == line.master_pid
        assert p.admin_address_path.read_text() == f"127.0.0.1:{p.admin_port}"
        assert os.stat(listen_path).st_ino == inode  # the same socket, not a new bind
        assert p.listener_port("ingress") == port
        assert pipe_get(listen_path)[0] == 200
        assert get(port)[0] == 200
        wait_for(lambda: all(not _alive(pid) for pid in line.pids[:-1]), timeout=30)
        # The old master is gone and did not take the socket file with it.
        assert os.stat(listen_path).st_ino == inode
        assert pipe_get(listen_path)[0] == 200
    finally:
        line.stop()


def test_pipe_listener_added_and_removed_by_reload(tmp_path: Path, sock_dir: Path, upstream) -> None:  # fmt: skip
    a = upstream("a")
    listen_path = str(sock_dir / "in.sock")
    config = http_config(0, 0, {"a": [a.port]})
    with ProxydProcess(tmp_path, config) as p:
        p.config_path.write_text(with_pipe_listener(config, "unix_in", listen_path, "a"))
        res = p.ctl("reload")
        assert res.returncode == 0, res.stderr
        assert pipe_get(listen_path)[1]["x-upstream-name"] == "a"
        # The same name on another path is refused, as Envoy refuses a changed address.
        other = str(sock_dir / "other.sock")
        p.config_path.write_text(with_pipe_listener(config, "unix_in", other, "a"))
        res = p.ctl("reload")
        assert res.returncode != 0
        assert "different address" in res.stdout + res.stderr
        assert pipe_get(listen_path)[0] == 200
        p.config_path.write_text(config)
        assert p.ctl("reload").returncode == 0
        wait_for(lambda: "unix_in::" not in p.admin("/listeners")[1])
        with pytest.raises(OSError):
            pipe_get(listen_path)


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_ads_over_a_pipe_management_server(tmp_path: Path, sock_dir: Path, upstream) -> None:
    """An envoy_grpc service whose cluster's endpoint is a pipe: xDS over AF_UNIX."""
    from tests.compat.xds_harness import ADS_SOURCE, AdsSource, ProxydTarget, admin_get
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

    a = upstream("a")
    grpc_path = str(sock_dir / "xds.sock")
    server = XdsServer(grpc_pipe=grpc_path).start()
    target = ProxydTarget()
    try:
        source = AdsSource(server, "ingress")
        source.push(ENDPOINT, "v1", [load_assignment("web", [a.port])])
        source.push(CLUSTER, "v1", [eds_cluster("web", ADS_SOURCE)])
        source.push(ROUTE, "v1", [route_config("routes", {"/": "web"})])
        source.push(LISTENER, "v1", [rds_listener("ingress", 0, "routes", ADS_SOURCE)])
        boot = source.bootstrap()
        (xds_cluster,) = [c for c in boot["static_resources"]["clusters"] if c["name"] == "xds_cluster"]  # fmt: skip
        lb = xds_cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        lb["endpoint"]["address"] = {"pipe": {"path": grpc_path}}
        admin = target.start(boot, tmp_path)

        def port() -> int:
            body = admin_get(admin, "/listeners?format=json")[1]
            for entry in json.loads(body)["listener_statuses"]:
                if entry["name"] == "ingress":
                    return int(entry["local_address"]["socket_address"]["port_value"])
            return 0

        listen = wait_for(port, timeout=20)
        wait_for(lambda: get(listen)[0] == 200, timeout=20)
        assert get(listen)[1]["x-upstream-name"] == "a"
        server.wait_for_ack(LISTENER, "v1", timeout=5)
        assert "control_plane.connected_state: 1" in admin_get(admin, "/stats")[1]
    finally:
        target.stop()
        server.close()


def test_health_checks_reach_a_pipe_upstream(tmp_path: Path, sock_dir: Path) -> None:
    from tests.support import FAST_HEALTH_CHECK

    up_path = str(sock_dir / "up.sock")
    with PipeUpstreamServer("piped", up_path) as up:
        data = yaml.safe_load(http_config(0, 0, {"web": [1]}))
        cluster = pipe_cluster("web", [up_path])
        cluster["health_checks"] = [FAST_HEALTH_CHECK]
        data["static_resources"]["clusters"] = [cluster]
        with ProxydProcess(tmp_path, yaml.safe_dump(data)) as p:
            assert wait_for(lambda: p.stats().get("cluster.web.health_check.success", 0) >= 2)
            assert get(p.listener_port())[0] == 200
            up.stop()
            os.unlink(up_path)  # nothing listens there any more: the checks fail
            wait_for(lambda: get(p.listener_port())[0] == 503, timeout=10)
            # A request can fail on the missing socket before the next check does.
            assert wait_for(lambda: p.stats().get("cluster.web.health_check.failure", 0) >= 1)


def test_rest_and_grpc_clients_reach_a_pipe(sock_dir: Path) -> None:
    """The master's xDS clients connect to an endpoint with port 0 over its pipe: REST
    with the cluster name as Host (as Envoy's REST fetcher sends it)."""
    import trio

    from proxyd.master.xds.grpc import GrpcError, open_stream
    from proxyd.master.xds.http_client import post_json

    path = str(sock_dir / "rest.sock")
    with PipeUpstreamServer("rest", path):

        async def main() -> tuple[int, bytes]:
            return await post_json(path, 0, "/echo", b"{}", authority="xds_cluster")

        status, body = trio.run(main)
    assert status == 200
    headers = dict(json.loads(body)["headers"])
    assert {k.lower(): v for k, v in headers.items()}["host"] == "xds_cluster"

    async def refused() -> None:
        async with open_stream(str(sock_dir / "none.sock"), 0, "/x.Y/Z", connect_timeout_s=2):
            raise AssertionError("connected to a pipe nobody listens on")

    with pytest.raises(GrpcError) as failed:
        trio.run(refused)
    assert f"connect to {sock_dir / 'none.sock'} failed" in failed.value.message
