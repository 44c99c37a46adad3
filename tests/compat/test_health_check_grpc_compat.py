"""gRPC health checking: real Envoy and proxyd on the same YAML judge hosts the same way.

An HTTP/2 cluster of a SERVING grpcio server, one that does not know the service
(NOT_FOUND) and a dead port; then the first server turns NOT_SERVING. Both mark the
same hosts ``/failed_active_hc`` in ``/clusters``, register the same health_check
stats and send the servers the same service name and metadata.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.grpc_health_server import NOT_SERVING, SERVING, HealthServer
from tests.integration.test_health_check_grpc import grpc_config
from tests.support import ProxydProcess, free_port, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]


def _flags(clusters_text: str, ports: list[int]) -> list[str]:
    out = []
    for port in ports:
        line = next(
            x for x in clusters_text.splitlines() if f"127.0.0.1:{port}::health_flags::" in x
        )
        out.append(line.rsplit("::", 1)[1])
    return out


def _fetch(admin: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as r:
        return r.read().decode()


def _run(fetch: Callable[[str], str], ports: list[int], a: HealthServer) -> list[list[str]]:
    """The flags at first, then once ``a`` turned NOT_SERVING, from one proxy's admin."""
    seen = []
    for expected in (
        ["healthy", "/failed_active_hc", "/failed_active_hc"],
        ["/failed_active_hc"] * 3,
    ):
        if seen:
            a.set("app", NOT_SERVING)
        wait_for(lambda: _flags(fetch("/clusters"), ports) == expected, timeout=10)  # noqa: B023
        seen.append(_flags(fetch("/clusters"), ports))
    a.set("app", SERVING)
    return seen


def test_envoy_and_proxyd_judge_the_same(tmp_path: Path) -> None:
    with HealthServer() as a, HealthServer() as b:
        a.set("app", SERVING)
        dead = free_port()
        ports = [a.port, b.port, dead]
        config = grpc_config(0, ports)  # admin on port 0
        with EnvoyRunner(config) as envoy:
            envoy_result = _run(lambda path: _fetch(envoy.admin_port, path), ports, a)
            envoy_stats = {
                line.split(":")[0]
                for line in _fetch(envoy.admin_port, "/stats").splitlines()
                if line.startswith("cluster.backend.health_check.")
            }
        envoy_call = a.calls[-1]
        a.calls.clear()
        with ProxydProcess(tmp_path, config) as p:
            proxyd_result = _run(lambda path: p.admin(path)[1], ports, a)
            proxyd_stats = {n for n in p.stats() if n.startswith("cluster.backend.health_check.")}
        proxyd_call = a.calls[-1]
    assert envoy_result == proxyd_result
    assert envoy_stats == proxyd_stats
    assert envoy_call[0] == proxyd_call[0] == "app"
    assert envoy_call[1]["x-hc"] == proxyd_call[1]["x-hc"] == "1"
