"""A passing active health check ends an outlier ejection (Envoy's
``successful_active_health_check_uneject_host``, on by default), with a real proxyd.

Two demo upstreams, both answering ``/status/500`` with 500: consecutive 5xx eject one
of them (max_ejection_percent keeps the other) for a base_ejection_time of 5 minutes.
Its next health check (``/healthz``, 200) passes, and with the default the host is back
at once; with the field set to false it stays out while the checks keep passing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.master_fixtures import get
from tests.support import ProxydProcess, UpstreamServer, http_config, wait_for

EXTRA = """    health_checks:
    - timeout: 0.5s
      interval: 0.2s
      no_traffic_interval: 0.2s
      unhealthy_threshold: 2
      healthy_threshold: 1
      http_health_check: {{ path: /healthz }}
    outlier_detection:
      consecutive_5xx: 3
      interval: 1s
      base_ejection_time: 300s
      max_ejection_percent: 50{uneject}"""


def _stat(p: ProxydProcess, name: str) -> int:
    return p.stats().get(f"cluster.svc.{name}", -1)


@pytest.mark.parametrize("uneject", [True, False], ids=["default", "off"])
def test_passing_check_ends_the_ejection(tmp_path: Path, uneject: bool) -> None:
    a, b = UpstreamServer("a").start(), UpstreamServer("b").start()
    field = "" if uneject else "\n      successful_active_health_check_uneject_host: false"
    config = http_config(0, 0, {"svc": [a.port, b.port]}, cluster_extra=EXTRA.format(uneject=field))
    try:
        with ProxydProcess(tmp_path, config, concurrency=1) as p:
            listen = p.listener_port()
            assert _stat(p, "lb_healthy_panic") == 0  # listed from the start, as in Envoy
            for _ in range(6):  # round robin: three 500s from each host
                assert get(listen, "/status/500")[0] == 500
            wait_for(lambda: _stat(p, "outlier_detection.ejections_enforced_total") == 1, timeout=5)
            if uneject:
                wait_for(lambda: _stat(p, "outlier_detection.ejections_active") == 0, timeout=5)
                text = p.admin("/clusters")[1]
                assert "failed_outlier_check" not in text
                assert _stat(p, "membership_healthy") == 2
            else:
                passes = _stat(p, "health_check.success")
                wait_for(lambda: _stat(p, "health_check.success") >= passes + 6, timeout=5)
                assert _stat(p, "outlier_detection.ejections_active") == 1
                assert "/failed_outlier_check" in p.admin("/clusters")[1]
                assert _stat(p, "membership_healthy") == 1
            assert _stat(p, "outlier_detection.ejections_enforced_total") == 1
    finally:
        a.stop()
        b.stop()
