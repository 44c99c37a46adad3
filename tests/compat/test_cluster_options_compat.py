"""Cluster connection options: real Envoy and real proxyd on the same bootstrap.

A cluster with ``upstream_connection_options.tcp_keepalive`` (probes 3, time 77 s,
interval 11 s) sends one request to a keep-alive demo upstream; the pooled upstream
connection must carry the keepalive timer (``ss -o`` shows ``timer:(keepalive,...)``
starting from 77 s) in both proxies, and the cluster's and endpoints' ``metadata``
and a route's must be taken by both.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.compat.hcm_wire import send
from tests.support import (
    ProxydProcess,
    UpstreamServer,
    free_port,
    http_listener,
    static_cluster,
    wait_for,
)

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

METADATA = {"filter_metadata": {"example.com": {"team": "edge", "tier": 1}}}


def bootstrap(admin: int, listen: int, upstream: int) -> str:
    route = {"match": {"prefix": "/"}, "route": {"cluster": "up"}, "metadata": METADATA}
    route_config = {
        "name": "r",
        "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}],
    }
    cluster = static_cluster("up", [upstream])
    cluster["upstream_connection_options"] = {
        "tcp_keepalive": {"keepalive_probes": 3, "keepalive_time": 77, "keepalive_interval": 11}
    }
    cluster["metadata"] = METADATA
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"] = METADATA
    boot = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [http_listener("in", listen, route_config)],
            "clusters": [cluster],
        },
    }
    return yaml.safe_dump(boot, sort_keys=False)


def keepalive_timers(upstream_port: int) -> list[int]:
    """The keepalive timer (whole seconds left) of each connection to the upstream."""
    out = subprocess.run(
        ["ss", "-Htno", "state", "established", f"dport = :{upstream_port}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    timers = []
    for line in out.splitlines():
        m = re.search(r"timer:\(keepalive,(?:(\d+)min)?(\d+)(?:\.\d+)?sec", line)
        if m:
            timers.append(int(m.group(1) or 0) * 60 + int(m.group(2)))
        else:
            timers.append(-1)
    return timers


def observe(start: Callable[[str, int], Any]) -> dict[str, Any]:
    with UpstreamServer("up") as upstream:
        admin, listen = free_port(), free_port()
        with start(bootstrap(admin, listen, upstream.port), admin):
            answer = send(listen, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            timers = keepalive_timers(upstream.port)
            return {
                "status": answer.status,
                "connections": len(timers),
                "keepalive_from_77s": all(60 <= t <= 77 for t in timers),
            }


def test_tcp_keepalive_and_metadata_like_envoy(tmp_path: Path) -> None:
    envoy = observe(lambda text, admin: EnvoyRunner(text))
    proxyd = observe(lambda text, admin: ProxydProcess(tmp_path, text, admin, concurrency=1))
    assert envoy == {"status": 200, "connections": 1, "keepalive_from_77s": True}
    assert proxyd == envoy


def hc_cluster(name: str, hc_port: int, **endpoint: Any) -> dict[str, Any]:
    """A STATIC cluster whose one endpoint (traffic port 1: nothing listens) is checked
    over HTTP; ``endpoint`` fields go on its Endpoint; ``cfg_host`` is the check's host."""
    c = static_cluster(name, [1])
    ep = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    http: dict[str, Any] = {"path": "/healthz"}
    if "cfg_host" in endpoint:
        http["host"] = endpoint.pop("cfg_host")
    ep.update(endpoint)
    ep.setdefault("health_check_config", {})["port_value"] = hc_port
    c["health_checks"] = [
        {"timeout": "1s", "interval": "0.2s", "unhealthy_threshold": 1, "healthy_threshold": 1,
         "http_health_check": http}
    ]  # fmt: skip
    return c


def observe_health_checks(start: Callable[[str, int], Any]) -> dict[str, Any]:
    from tests.compat.hcm_wire import EchoUpstream

    with EchoUpstream() as a, EchoUpstream() as b, EchoUpstream() as c:
        clusters = [
            hc_cluster("a", a.port, hostname="ep-host",
                       health_check_config={"hostname": "hc-host"}),
            hc_cluster("b", b.port, hostname="ep-host", cfg_host="cfg-host",
                       health_check_config={"hostname": "hc-host"}),
            hc_cluster("c", c.port, hostname="ep-only"),
        ]  # fmt: skip
        route_config = {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}  # fmt: skip
        admin = free_port()
        boot = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [http_listener("in", free_port(), route_config)],
                "clusters": clusters,
            },
        }
        with start(yaml.safe_dump(boot, sort_keys=False), admin) as proxy:
            wait_for(lambda: all(u.head_of("") for u in (a, b, c)))
            lines = wait_for(lambda: healthy_lines(proxy.admin_port))
            hosts = {
                name: u.head_of("").decode("latin-1").split("\r\n")[1]
                for name, u in (("a", a), ("b", b), ("c", c))
            }
            return {"hosts": hosts, "clusters": lines}


def healthy_lines(admin: int) -> list[str] | None:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/clusters", timeout=5) as r:
        text = r.read().decode()
    lines = sorted(x for x in text.splitlines() if "::hostname::" in x or "::health_flags::" in x)
    return (
        lines if all("health_flags::healthy" in x for x in lines if "health_flags" in x) else None
    )


def test_endpoint_hostname_and_health_check_config_like_envoy(tmp_path: Path) -> None:
    envoy = observe_health_checks(lambda text, admin: EnvoyRunner(text))
    proxyd = observe_health_checks(
        lambda text, admin: ProxydProcess(tmp_path, text, admin, concurrency=1)
    )
    assert envoy["hosts"] == {"a": "host: hc-host", "b": "host: hc-host", "c": "host: c"}
    assert "a::127.0.0.1:1::hostname::ep-host" in envoy["clusters"]
    assert proxyd == envoy
