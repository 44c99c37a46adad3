"""The global downstream connection limit: real Envoy and proxyd on the same YAML.

The overload manager's ``envoy.resource_monitors.global_downstream_max_connections``
monitor allows 3 connections. On each proxy: 3 keep-alive connections are served, the
next 3 are closed at accept without an answer, closing one frees a slot for exactly
one more; the listener's ``downstream_global_cx_overflow`` and the monitor's
``failed_updates`` count the refusals alike, and the admin is never refused. (Envoy
runs one worker thread here, proxyd two worker processes sharing the count.)
"""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import pytest

from proxyd.config import load
from tests.compat.envoy_runner import ENVOY_BINARY, EnvoyRunner, envoy_available
from tests.integration.test_overload import connection_limit, open_served
from tests.support import ProxydProcess, UpstreamServer, free_port, http_config, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

LIMIT = 3
FAILED = "overload.envoy.resource_monitors.global_downstream_max_connections.failed_updates"


def _stats(admin_port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name] = int(value)
    return out


def _scenario(port: int, admin_port: int) -> tuple[list[bool], dict[str, int]]:
    """What a client sees, and the stats after it."""
    seen: list[bool] = []
    held = [open_served(port) for _ in range(LIMIT)]
    seen += [s is not None for s in held]
    refused = [open_served(port) for _ in range(3)]
    seen += [s is not None for s in refused]
    overflow = f"listener.127.0.0.1_{port}.downstream_global_cx_overflow"
    wait_for(lambda: _stats(admin_port).get(overflow) == 3, timeout=5)
    first = held.pop(0)
    assert first is not None
    first.close()
    # Once the proxy has seen the close, the freed slot takes one connection only.
    active = f"listener.127.0.0.1_{port}.downstream_cx_active"
    wait_for(lambda: _stats(admin_port).get(active) == LIMIT - 1, timeout=5)
    again = open_served(port)
    seen += [again is not None, open_served(port) is not None]
    for s in [*held, again]:
        if s is not None:
            s.close()
    wait_for(lambda: _stats(admin_port).get(overflow, 0) >= 4, timeout=5)
    stats = _stats(admin_port)
    return seen, {"overflow": stats[overflow], "failed_updates": stats[FAILED]}


def test_connection_limit_matches_envoy(tmp_path: Path) -> None:
    upstream = UpstreamServer("up").start()
    try:
        envoy_port = free_port()
        envoy_config = http_config(envoy_port, free_port(), {"up": [upstream.port]})
        with EnvoyRunner(envoy_config + connection_limit(LIMIT)) as envoy:
            envoy_seen, envoy_stats = _scenario(envoy_port, envoy.admin_port)
        port, admin = free_port(), free_port()
        config = http_config(port, admin, {"up": [upstream.port]}) + connection_limit(LIMIT)
        with ProxydProcess(tmp_path, config, admin, concurrency=2) as p:
            seen, stats = _scenario(port, admin)
            assert p.admin("/ready")[0] == 200
    finally:
        upstream.stop()
    assert envoy_seen == [True] * LIMIT + [False] * 3 + [True, False]
    assert seen == envoy_seen
    assert stats == envoy_stats == {"overflow": 4, "failed_updates": 4}


FULL = """
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 0}}
  profile_path: /tmp/envoy.prof
  ignore_global_conn_limit: true
  access_log:
  - name: envoy.access_loggers.stdout
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
cluster_manager:
  local_cluster_name: up
watchdog:
  miss_timeout: 0.5s
overload_manager:
  refresh_interval: 0.25s
  resource_monitors:
  - name: envoy.resource_monitors.global_downstream_max_connections
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig
      max_active_downstream_connections: 1000
  - name: envoy.resource_monitors.fixed_heap
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig
      max_heap_size_bytes: 2147483648
  actions:
  - name: envoy.overload_actions.disable_http_keepalive
    triggers:
    - name: envoy.resource_monitors.fixed_heap
      threshold: {value: 0.95}
  - name: envoy.overload_actions.stop_accepting_connections
    triggers:
    - name: envoy.resource_monitors.fixed_heap
      threshold: {value: 0.99}
    - name: envoy.resource_monitors.global_downstream_max_connections
      threshold: {value: 0.99}
  - name: envoy.overload_actions.reject_incoming_connections
    triggers:
    - name: envoy.resource_monitors.fixed_heap
      threshold: {value: 0.999}
"""


def test_every_field_proxyd_takes_here_is_accepted_by_envoy_too(tmp_path: Path) -> None:
    path = tmp_path / "full.yaml"
    text = http_config(10000, 0, {"up": [8080]}).split("static_resources:", 1)[1]
    text = text.replace(
        "  - name: ingress\n", "  - name: ingress\n    ignore_global_conn_limit: true\n"
    )
    path.write_text(FULL + "static_resources:" + text)
    loaded = load(str(path))
    assert loaded.overload.global_cx_limit == 1000 and len(loaded.overload.actions) == 3
    assert loaded.watchdogs.worker.miss_s == 0.5 and loaded.local_cluster_name == "up"
    result = subprocess.run(
        [ENVOY_BINARY, "--mode", "validate", "-c", str(path), "--log-level", "critical"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
