"""Outlier detection: real Envoy and proxyd on the same YAML eject the same host.

A cluster of a good demo upstream and one that answers 500 to everything, with
consecutive_5xx 3: after a dozen requests both mark the bad host
``/failed_outlier_check`` in ``/clusters``, send nothing more to it, count one enforced
consecutive-5xx ejection, and have the same ``outlier_detection.*`` stat names.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.integration.failing_upstream import always_500
from tests.integration.master_fixtures import get
from tests.support import ProxydProcess, UpstreamServer, http_config, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

OUTLIER = """    outlier_detection:
      consecutive_5xx: 3
      interval: 1s
      base_ejection_time: 30s
      max_ejection_percent: 50"""


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def _flags(clusters_text: str, port: int) -> str:
    return next(
        x.rsplit("::", 1)[1]
        for x in clusters_text.splitlines()
        if f"127.0.0.1:{port}::health_flags::" in x
    )


def _stats(stats_text: str) -> dict[str, int]:
    out = {}
    for line in stats_text.splitlines():
        name, _, value = line.partition(": ")
        if ".outlier_detection." in name and value.strip().isdigit():
            out[name] = int(value)
    return out


def _run(listen: int, admin_url: str, bad_port: int) -> tuple[str, set[str], dict[str, int]]:
    """Requests until the bad host is out; (its flags, who answered after, stats)."""
    for _ in range(12):
        get(listen)
    wait_for(lambda: "failed_outlier_check" in _flags(_fetch(admin_url + "/clusters"), bad_port))
    wait_for(lambda: all(get(listen)[1].get("x-upstream-name") == "good" for _ in range(4)))
    after = {get(listen)[1].get("x-upstream-name", "?") for _ in range(10)}
    flags = _flags(_fetch(admin_url + "/clusters"), bad_port)
    return flags, after, _stats(_fetch(admin_url + "/stats"))


def test_envoy_and_proxyd_eject_the_failing_host(tmp_path: Path) -> None:
    good = UpstreamServer("good").start()
    try:
        with always_500() as bad:
            bad_port = bad.server_address[1]
            config = http_config(0, 0, {"svc": [good.port, bad_port]}, cluster_extra=OUTLIER)
            with EnvoyRunner(config) as envoy:
                listen = envoy.listener_port("ingress")
                envoy_result = _run(listen, f"http://127.0.0.1:{envoy.admin_port}", bad_port)
            with ProxydProcess(tmp_path, config, concurrency=2) as p:
                listen = p.listener_port()
                proxyd_result = _run(listen, f"http://127.0.0.1:{p.admin_port}", bad_port)
    finally:
        good.stop()
    for flags, after, stats in (envoy_result, proxyd_result):
        assert flags == "/failed_outlier_check"
        assert after == {"good"}
        assert stats["cluster.svc.outlier_detection.ejections_enforced_consecutive_5xx"] == 1
        assert stats["cluster.svc.outlier_detection.ejections_active"] == 1
    assert set(envoy_result[2]) == set(proxyd_result[2])
