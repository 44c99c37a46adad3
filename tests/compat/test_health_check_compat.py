"""Active health checking: real Envoy and proxyd on the same YAML route the same way.

A cluster of two live demo upstreams and one dead port, with an HTTP health check:
both keep every request on the live hosts, mark the dead one ``/failed_active_hc`` in
``/clusters``, and count the same kinds of health-check stats.
"""

from __future__ import annotations

import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.integration.master_fixtures import upstream_name
from tests.support import ProxydProcess, UpstreamServer, free_port, http_config

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

CHECK = """    health_checks:
    - timeout: 0.5s
      interval: 0.2s
      no_traffic_interval: 0.2s
      unhealthy_threshold: 2
      healthy_threshold: 2
      reuse_connection: false
      http_health_check: { path: /healthz }"""


def _outcome(listen: int, clusters_text: str, dead: int) -> tuple[set[str], str]:
    names = Counter(upstream_name(listen) for _ in range(10))
    flags = next(
        x.rsplit("::", 1)[1]
        for x in clusters_text.splitlines()
        if f"127.0.0.1:{dead}::health_flags::" in x
    )
    return set(names), flags


def test_envoy_and_proxyd_skip_the_dead_host(tmp_path: Path) -> None:
    a, b = UpstreamServer("a").start(), UpstreamServer("b").start()
    dead = free_port()
    config = http_config(0, 0, {"svc": [a.port, dead, b.port]}, cluster_extra=CHECK)
    try:
        with EnvoyRunner(config) as envoy:
            listen = envoy.listener_port("ingress")
            url = f"http://127.0.0.1:{envoy.admin_port}"
            with urllib.request.urlopen(url + "/clusters", timeout=5) as r:
                envoy_clusters = r.read().decode()
            envoy_result = _outcome(listen, envoy_clusters, dead)
            with urllib.request.urlopen(url + "/stats", timeout=5) as r:
                envoy_stats = {
                    line.split(":")[0]
                    for line in r.read().decode().splitlines()
                    if ".health_check." in line and line.startswith("cluster.")
                }
        with ProxydProcess(tmp_path, config) as p:
            listen = p.listener_port()
            proxyd_result = _outcome(listen, p.admin("/clusters")[1], dead)
            proxyd_stats = {n for n in p.stats() if ".health_check." in n}
        assert envoy_result == proxyd_result == ({"a", "b"}, "/failed_active_hc")
        assert envoy_stats == proxyd_stats
    finally:
        a.stop()
        b.stop()
