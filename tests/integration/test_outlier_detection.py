"""Outlier detection with a real proxyd (two workers), real upstreams, one of them bad.

A cluster of a good upstream and one that answers every request with 500: after three
5xx in a row the master ejects the bad host (stats, /clusters), no request reaches it
while it is out, and after the ejection time it takes requests again. A host whose
port refuses connections is ejected by the local-origin detector when errors are split.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.failing_upstream import always_500
from tests.integration.master_fixtures import get
from tests.support import ProxydProcess, UpstreamServer, free_port, http_config, wait_for

CONSECUTIVE_5XX = """    outlier_detection:
      consecutive_5xx: 3
      interval: 1s
      base_ejection_time: 2s
      max_ejection_percent: 50"""

LOCAL_ORIGIN = """    outlier_detection:
      split_external_local_origin_errors: true
      consecutive_local_origin_failure: 2
      interval: 1s
      base_ejection_time: 30s
      max_ejection_percent: 50"""


@pytest.fixture
def bad_upstream() -> Iterator[Any]:
    with always_500() as server:
        yield server


def _upstreams(port: int, n: int) -> list[str]:
    """Who answered each of ``n`` requests (new connection each)."""
    out = []
    for _ in range(n):
        try:
            status, headers, _ = get(port)
        except (OSError, http.client.HTTPException):
            out.append("error")
            continue
        out.append(headers.get("x-upstream-name", str(status)))
    return out


def _flags(p: ProxydProcess, port: int) -> str:
    text = p.admin("/clusters")[1]
    line = next(x for x in text.splitlines() if f"127.0.0.1:{port}::health_flags::" in x)
    return line.rsplit("::", 1)[1]


def _od(p: ProxydProcess, name: str) -> int:
    return p.stats().get(f"cluster.svc.outlier_detection.{name}", -1)


def test_consecutive_5xx_ejects_and_returns_the_host(tmp_path: Path, bad_upstream: Any) -> None:
    good = UpstreamServer("good").start()
    bad_port = bad_upstream.server_address[1]
    config = http_config(0, 0, {"svc": [good.port, bad_port]}, cluster_extra=CONSECUTIVE_5XX)
    try:
        with ProxydProcess(tmp_path, config, concurrency=2) as p:
            listen = p.listener_port()
            assert _flags(p, bad_port) == "healthy"
            assert _od(p, "ejections_enforced_consecutive_5xx") == 0
            assert _od(p, "ejections_active") == 0
            # Round robin in each worker: every other request meets the bad host.
            seen = _upstreams(listen, 12)
            assert "bad" in seen and "good" in seen
            wait_for(lambda: _od(p, "ejections_enforced_consecutive_5xx") == 1, timeout=5)
            assert _od(p, "ejections_detected_consecutive_5xx") == 1
            assert _od(p, "ejections_enforced_total") == 1
            assert _od(p, "ejections_active") == 1
            assert _flags(p, bad_port) == "/failed_outlier_check"
            assert _flags(p, good.port) == "healthy"
            # Once both workers run the new epoch, nothing reaches the bad host.
            wait_for(lambda: set(_upstreams(listen, 6)) == {"good"}, timeout=5)
            before = bad_upstream.requests
            assert set(_upstreams(listen, 20)) == {"good"}
            assert bad_upstream.requests == before
            # After base_ejection_time (checked on the 1 s interval) it is back.
            wait_for(lambda: "bad" in _upstreams(listen, 4), timeout=10, interval=0.2)
            assert bad_upstream.requests > before
    finally:
        good.stop()


def test_reload_keeps_the_ejection(tmp_path: Path, bad_upstream: Any) -> None:
    good = UpstreamServer("good").start()
    bad_port = bad_upstream.server_address[1]
    slow = CONSECUTIVE_5XX.replace("base_ejection_time: 2s", "base_ejection_time: 60s")
    config = http_config(0, 0, {"svc": [good.port, bad_port]}, cluster_extra=slow)
    try:
        with ProxydProcess(tmp_path, config, concurrency=1) as p:
            listen = p.listener_port()
            _upstreams(listen, 8)
            wait_for(lambda: _flags(p, bad_port) == "/failed_outlier_check", timeout=5)
            res = p.ctl("reload")
            assert res.returncode == 0, res.stderr
            assert _flags(p, bad_port) == "/failed_outlier_check"
            assert set(_upstreams(listen, 10)) == {"good"}
    finally:
        good.stop()


def test_split_local_origin_failures_eject_a_dead_host(tmp_path: Path) -> None:
    good = UpstreamServer("good").start()
    dead = free_port()
    config = http_config(0, 0, {"svc": [good.port, dead]}, cluster_extra=LOCAL_ORIGIN)
    try:
        with ProxydProcess(tmp_path, config, concurrency=2) as p:
            listen = p.listener_port()
            seen = _upstreams(listen, 12)
            assert "503" in seen  # connect failures answered by proxyd
            wait_for(
                lambda: _od(p, "ejections_enforced_consecutive_local_origin_failure") == 1,
                timeout=5,
            )
            assert _od(p, "ejections_detected_consecutive_5xx") == 0
            assert _flags(p, dead) == "/failed_outlier_check"
            wait_for(lambda: set(_upstreams(listen, 6)) == {"good"}, timeout=5)
            assert set(_upstreams(listen, 20)) == {"good"}
    finally:
        good.stop()
