"""The admin API served by the master: Envoy's paths and shapes, totals over workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.master_fixtures import get
from tests.support import ProxydProcess, http_config, wait_for

N = 40


@pytest.fixture
def proxy(tmp_path: Path, upstream):
    up = upstream("up")
    log_path = tmp_path / "admin_access.log"
    text = http_config(0, 0, {"up": [up.port]}).replace(
        "admin:\n", f"admin:\n  access_log_path: {log_path}\n", 1
    )
    with ProxydProcess(tmp_path, text) as p:
        p.listen_port, p.upstream_port, p.admin_log = p.listener_port(), up.port, log_path
        yield p


def test_stats_sum_counters_over_both_workers(proxy: ProxydProcess) -> None:
    for _ in range(N):  # a new connection each: the kernel spreads them over both workers
        assert get(proxy.listen_port)[0] == 200
    # Workers report about once a second.
    wait_for(lambda: proxy.stats().get("cluster.up.upstream_rq_total") == N, timeout=10)
    stats = proxy.stats()
    assert stats["http.ingress_http.downstream_rq_total"] == N
    assert stats["server.live"] == 1
    assert stats["server.concurrency"] == 2
    assert stats["cluster.up.membership_total"] == 1
    text = proxy.admin("/stats")[1]
    lines = text.splitlines()
    assert all(": " in line for line in lines)
    # counters and gauges sorted, then the histograms sorted (as Envoy lists them)
    histograms = [line for line in lines if ": P0(" in line or ": No recorded" in line]
    plain = lines[: len(lines) - len(histograms)]
    assert plain == sorted(plain) and histograms == sorted(histograms)
    assert "http.ingress_http.downstream_rq_time" in {h.split(": ")[0] for h in histograms}

    status, prom = proxy.admin("/stats/prometheus")
    assert status == 200
    assert "# TYPE envoy_cluster_upstream_rq_total counter\n" in prom
    assert f'envoy_cluster_upstream_rq_total{{envoy_cluster_name="up"}} {N}\n' in prom
    assert (
        f'envoy_http_downstream_rq_total{{envoy_http_conn_manager_prefix="ingress_http"}} {N}\n'
        in prom
    )
    assert "# TYPE envoy_server_live gauge\nenvoy_server_live{} 1\n" in prom

    doc = json.loads(proxy.admin("/stats?format=json")[1])
    assert {"name": "cluster.up.upstream_rq_total", "value": N} in doc["stats"]


def test_clusters_page(proxy: ProxydProcess) -> None:
    status, text = proxy.admin("/clusters")
    assert status == 200
    host = f"up::127.0.0.1:{proxy.upstream_port}::"
    assert "up::observability_name::up\n" in text
    assert "up::default_priority::max_connections::1024\n" in text
    assert f"{host}health_flags::healthy\n" in text
    assert f"{host}weight::1\n" in text
    assert f"{host}rq_total::" in text
    doc = json.loads(proxy.admin("/clusters?format=json")[1])
    assert doc["cluster_statuses"][0]["name"] == "up"


def test_config_dump(proxy: ProxydProcess) -> None:
    status, text = proxy.admin("/config_dump")
    assert status == 200
    configs = json.loads(text)["configs"]
    types = [c["@type"].rsplit(".", 1)[1] for c in configs]
    for wanted in ("BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump", "RoutesConfigDump"):  # fmt: skip
        assert wanted in types
    by_type = {c["@type"].rsplit(".", 1)[1]: c for c in configs}
    cluster = by_type["ClustersConfigDump"]["static_clusters"][0]["cluster"]
    assert cluster["@type"] == "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    assert cluster["name"] == "up"
    listener = by_type["ListenersConfigDump"]["static_listeners"][0]["listener"]
    assert listener["name"] == "ingress"
    route = by_type["RoutesConfigDump"]["static_route_configs"][0]["route_config"]
    assert route["@type"] == "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    assert route["name"] == "local_route"
    assert "static_resources" in by_type["BootstrapConfigDump"]["bootstrap"]


def test_server_info_listeners_ready(proxy: ProxydProcess) -> None:
    info = json.loads(proxy.admin("/server_info")[1])
    assert info["state"] == "LIVE"
    assert info["command_line_options"]["concurrency"] == 2
    assert info["uptime_current_epoch"].endswith("s")
    assert info["version"].split("/")[1]
    assert "hot_restart_version" in info and "node" in info
    assert proxy.admin("/ready") == (200, "LIVE\n")
    assert proxy.admin("/listeners") == (200, f"ingress::127.0.0.1:{proxy.listen_port}\n")
    listeners = json.loads(proxy.admin("/listeners?format=json")[1])
    assert listeners["listener_statuses"][0]["local_address"]["socket_address"]["port_value"] == proxy.listen_port  # fmt: skip
    status, text = proxy.admin("/no/such/page")
    assert status == 404 and "admin commands are" in text
    assert proxy.admin("/stats?filter=(")[0] == 400
    assert proxy.admin("/stats?filter=^server%5C.live$") == (200, "server.live: 1\n")


def test_admin_access_log(proxy: ProxydProcess) -> None:
    proxy.admin("/ready")
    proxy.admin("/nope")
    # The line is written once the response went out: the client may be faster.
    wanted = ('"GET /ready HTTP/1.1" 200', '"GET /nope HTTP/1.1" 404')

    def logged() -> bool:
        text = proxy.admin_log.read_text()
        return all(w in text for w in wanted)

    wait_for(logged, timeout=5)
    line = next(x for x in proxy.admin_log.read_text().splitlines() if "/nope" in x)
    assert line.startswith("[") and '"-" "Python-urllib' in line


def test_quitquitquit_is_post_only_and_stops_gracefully(proxy: ProxydProcess) -> None:
    assert proxy.admin("/quitquitquit")[0] == 405
    assert proxy.admin("/quitquitquit", method="POST") == (200, "OK\n")
    assert proxy.proc.wait(20) == 0


def test_clusters_page_counts_requests_per_host(proxy: ProxydProcess) -> None:
    """Per-host values come from the workers' reports, summed over both workers."""
    errors = 3
    for _ in range(N):  # a new connection each: the kernel spreads them over both workers
        assert get(proxy.listen_port)[0] == 200
    for _ in range(errors):
        assert get(proxy.listen_port, "/status/503")[0] == 503
    host = f"up::127.0.0.1:{proxy.upstream_port}::"

    def host_values() -> dict[str, str]:
        text = proxy.admin("/clusters")[1]
        return {
            line[len(host) :].partition("::")[0]: line.rpartition("::")[2]
            for line in text.splitlines()
            if line.startswith(host)
        }

    wait_for(lambda: host_values().get("rq_total") == str(N + errors), timeout=10)
    values = host_values()
    assert values["rq_success"] == str(N)
    assert values["rq_error"] == str(errors)
    assert values["rq_timeout"] == "0"
    assert values["rq_active"] == "0"
    assert values["cx_connect_fail"] == "0"
    assert int(values["cx_total"]) >= 1  # each worker pools its upstream connections
    assert int(values["cx_active"]) <= int(values["cx_total"])
    doc = json.loads(proxy.admin("/clusters?format=json")[1])
    (status,) = doc["cluster_statuses"][0]["host_statuses"]
    stats = {s["name"]: s["value"] for s in status["stats"]}
    assert stats["rq_total"] == str(N + errors) and stats["rq_success"] == str(N)
    # Per-host values stay out of /stats, as in Envoy.
    assert "::" not in proxy.admin("/stats")[1]
