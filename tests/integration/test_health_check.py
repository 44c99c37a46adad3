"""Active health checking with a real proxyd, real upstreams and a port nobody serves.

A cluster of three live demo upstreams and one dead port: after warm-up no request goes
to the dead host; stopping an upstream takes it out within the configured intervals,
starting one again on the same port brings it back; /clusters and /stats say so.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.integration.master_fixtures import get, upstream_name
from tests.support import ProxydProcess, UpstreamServer, free_port, http_config, wait_for

HTTP_CHECK = """    health_checks:
    - timeout: 0.5s
      interval: 0.2s
      no_traffic_interval: 0.2s
      unhealthy_threshold: 2
      healthy_threshold: 2
      reuse_connection: false
      http_health_check:
        path: /healthz
        request_headers_to_add:
        - header: { key: x-hc, value: "1" }"""

TCP_CHECK = """    health_checks:
    - timeout: 0.5s
      interval: 0.2s
      no_traffic_interval: 0.2s
      unhealthy_threshold: 1
      healthy_threshold: 1
      tcp_health_check: {}"""

NO_PANIC = """
    common_lb_config:
      healthy_panic_threshold: { value: 0 }"""


def _names(port: int, n: int) -> Counter[str]:
    return Counter(upstream_name(port) for _ in range(n))


def _flags(p: ProxydProcess, port: int) -> str:
    text = p.admin("/clusters")[1]
    line = next(x for x in text.splitlines() if f"127.0.0.1:{port}::health_flags::" in x)
    return line.rsplit("::", 1)[1]


@pytest.mark.parametrize("check", [HTTP_CHECK, TCP_CHECK], ids=["http", "tcp"])
def test_traffic_follows_health(tmp_path: Path, check: str) -> None:
    a, b, c = (UpstreamServer(n).start() for n in ("a", "b", "c"))
    dead = free_port()
    config = http_config(0, 0, {"svc": [a.port, b.port, c.port, dead]}, cluster_extra=check)
    restarted = None
    try:
        with ProxydProcess(tmp_path, config) as p:
            listen = p.listener_port()
            # Warm-up: the master checked every host before going live.
            assert set(_names(listen, 12)) == {"a", "b", "c"}
            assert _flags(p, dead) == "/failed_active_hc"
            assert _flags(p, a.port) == "healthy"
            stats = p.stats()
            assert stats["cluster.svc.health_check.healthy"] == 3
            assert stats["cluster.svc.membership_healthy"] == 3
            assert stats["cluster.svc.health_check.attempt"] >= 4
            assert stats["cluster.svc.health_check.network_failure"] >= 1
            assert stats["cluster.svc.health_check.success"] >= 3

            a.stop()
            wait_for(lambda: _flags(p, a.port) == "/failed_active_hc", timeout=5)
            wait_for(lambda: "a" not in _names(listen, 6), timeout=5)
            assert set(_names(listen, 12)) == {"b", "c"}
            assert p.stats()["cluster.svc.health_check.healthy"] == 2

            restarted = UpstreamServer("a2", port=a.port).start()
            wait_for(lambda: _flags(p, a.port) == "healthy", timeout=5)
            wait_for(lambda: "a2" in _names(listen, 6), timeout=5)
            assert set(_names(listen, 12)) == {"a2", "b", "c"}
            stats = p.stats()
            assert stats["cluster.svc.health_check.healthy"] == 3
            assert stats["cluster.svc.health_check.failure"] >= 2
    finally:
        for up in (b, c, restarted):
            if up is not None:
                up.stop()


def test_expected_statuses_and_timeouts(tmp_path: Path) -> None:
    """expected_statuses decides what passes; a host that answers too late is failed
    with Envoy's extra "/active_hc_timeout" flag."""
    up = UpstreamServer("a").start()
    check = HTTP_CHECK.replace("path: /healthz", "path: /status/503")
    extra = check + "\n        expected_statuses: [{ start: 500, end: 504 }]"
    # Panic mode off: with Envoy's default 50% threshold a cluster whose only host
    # failed its checks would still route to it.
    slow = HTTP_CHECK.replace("path: /healthz", "path: /delay/2000") + NO_PANIC
    (tmp_path / "ok").mkdir()
    (tmp_path / "slow").mkdir()
    try:
        config = http_config(0, 0, {"svc": [up.port]}, cluster_extra=extra)
        with ProxydProcess(tmp_path / "ok", config) as p:
            listen = p.listener_port()
            assert upstream_name(listen) == "a"
            assert _flags(p, up.port) == "healthy"
        config = http_config(0, 0, {"svc": [up.port]}, cluster_extra=slow)
        with ProxydProcess(tmp_path / "slow", config) as p:
            listen = p.listener_port()
            assert _flags(p, up.port) == "/failed_active_hc/active_hc_timeout"
            text = p.admin("/clusters?format=json")[1]
            assert '"failed_active_health_check": true' in text
            assert get(listen)[0] == 503
    finally:
        up.stop()
