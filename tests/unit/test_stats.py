"""The master's stats totals and Envoy's /stats and /stats/prometheus renderings.

Expected lines are copied from real Envoy 1.40 output for the same stat names.
"""

from __future__ import annotations

import pytest

from proxyd.stats import StatsStore, extract_tags, prometheus_name


def _store() -> StatsStore:
    s = StatsStore()
    s.add_report(
        0,
        {
            "cluster.up.upstream_rq_total": 3,
            "cluster.up.upstream_rq_200": 3,
            "cluster.up.upstream_rq_2xx": 3,
            "http.ingress.downstream_rq_total": 3,
            "listener.127.0.0.1_15001.downstream_cx_total": 2,
            "up::127.0.0.1:18081::rq_total": 3,
        },
        {"cluster.up.upstream_cx_active": 1, "up::127.0.0.1:18081::cx_active": 1},
    )
    s.add_report(
        1,
        {
            "cluster.up.upstream_rq_total": 4,
            "cluster.up.upstream_rq_200": 4,
            "cluster.up.upstream_rq_2xx": 4,
            "http.ingress.downstream_rq_total": 4,
            "listener.127.0.0.1_15001.downstream_cx_total": 1,
            "up::127.0.0.1:18081::rq_total": 4,
        },
        {"cluster.up.upstream_cx_active": 2, "up::127.0.0.1:18081::cx_active": 2},
    )
    return s


def test_counters_sum_deltas_over_workers_and_reports() -> None:
    s = _store()
    assert s.counter("cluster.up.upstream_rq_total") == 7
    s.add_report(0, {"cluster.up.upstream_rq_total": 2}, {})
    assert s.counter("cluster.up.upstream_rq_total") == 9


def test_gauges_are_latest_per_worker_summed_and_dropped_with_the_worker() -> None:
    s = _store()
    assert s.gauge("cluster.up.upstream_cx_active") == 3
    s.add_report(0, {}, {"cluster.up.upstream_cx_active": 5})  # absolute, not a delta
    assert s.gauge("cluster.up.upstream_cx_active") == 7
    s.drop_worker(1)
    assert s.gauge("cluster.up.upstream_cx_active") == 5
    # A dead worker's counters stay counted.
    assert s.counter("cluster.up.upstream_rq_total") == 7


def test_host_values_are_kept_apart_for_clusters_page() -> None:
    s = _store()
    assert s.host_stats("up", "127.0.0.1:18081") == {"rq_total": 7, "cx_active": 3}
    assert "::" not in s.render_text()
    assert "::" not in s.render_prometheus()
    s.drop_worker(0)
    assert s.host_stats("up", "127.0.0.1:18081") == {"rq_total": 7, "cx_active": 2}


def test_text_format_is_sorted_name_colon_value() -> None:
    s = _store()
    s.set_gauge("server.live", 1)
    assert s.render_text() == (
        "cluster.up.upstream_cx_active: 3\n"
        "cluster.up.upstream_rq_200: 7\n"
        "cluster.up.upstream_rq_2xx: 7\n"
        "cluster.up.upstream_rq_total: 7\n"
        "http.ingress.downstream_rq_total: 7\n"
        "listener.127.0.0.1_15001.downstream_cx_total: 3\n"
        "server.live: 1\n"
    )
    assert s.render_text(filter_regex=r"^http\.") == "http.ingress.downstream_rq_total: 7\n"


def test_used_only_hides_zero_counters() -> None:
    s = StatsStore()
    s.ensure_counters(["cluster.up.upstream_rq_timeout", "cluster.up.upstream_rq_total"])
    s.add_counter("cluster.up.upstream_rq_total", 2)
    assert s.render_text(used_only=True) == "cluster.up.upstream_rq_total: 2\n"
    assert "cluster.up.upstream_rq_timeout: 0\n" in s.render_text()


def test_json_format() -> None:
    s = StatsStore()
    s.add_counter("a.b", 1)
    s.set_gauge("c.d", 2)
    assert s.render_json() == {"stats": [{"name": "a.b", "value": 1}, {"name": "c.d", "value": 2}]}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cluster.up.upstream_rq_total", ("cluster.upstream_rq_total", (("envoy.cluster_name", "up"),))),
        (
            "cluster.up.upstream_rq_200",
            ("cluster.upstream_rq", (("envoy.response_code", "200"), ("envoy.cluster_name", "up"))),
        ),
        (
            "cluster.up.upstream_rq_2xx",
            ("cluster.upstream_rq_xx", (("envoy.response_code_class", "2"), ("envoy.cluster_name", "up"))),
        ),
        (
            "http.ingress.downstream_rq_total",
            ("http.downstream_rq_total", (("envoy.http_conn_manager_prefix", "ingress"),)),
        ),
        (
            "listener.127.0.0.1_15001.downstream_cx_total",
            ("listener.downstream_cx_total", (("envoy.listener_address", "127.0.0.1_15001"),)),
        ),
        (
            "listener.127.0.0.1_15001.http.ingress.downstream_rq_5xx",
            (
                "listener.http.downstream_rq_xx",
                (
                    ("envoy.response_code_class", "5"),
                    ("envoy.http_conn_manager_prefix", "ingress"),
                    ("envoy.listener_address", "127.0.0.1_15001"),
                ),
            ),
        ),
        (
            "listener.127.0.0.1_15001.worker_1.downstream_cx_total",
            (
                "listener.worker_downstream_cx_total",
                (("envoy.worker_id", "1"), ("envoy.listener_address", "127.0.0.1_15001")),
            ),
        ),
        (
            "listener.[__1]_8080.downstream_cx_total",
            ("listener.downstream_cx_total", (("envoy.listener_address", "[__1]_8080"),)),
        ),
        # Not an address: no tag, as Envoy's listener.admin.* stats.
        ("listener.admin.downstream_cx_total", ("listener.admin.downstream_cx_total", ())),
        ("server.live", ("server.live", ())),
        ("tcp.db.downstream_cx_total", ("tcp.downstream_cx_total", (("envoy.tcp_prefix", "db"),))),
        ("vhost.vh.vcluster.other.upstream_rq_retry", ("vhost.vcluster.upstream_rq_retry", (("envoy.virtual_cluster", "other"), ("envoy.virtual_host", "vh")))),
    ],
)  # fmt: skip
def test_tag_extraction_matches_envoy(name: str, expected: tuple) -> None:
    assert extract_tags(name) == expected


def test_prometheus_names_are_sanitised() -> None:
    assert prometheus_name("cluster.upstream_rq_total") == "envoy_cluster_upstream_rq_total"
    assert prometheus_name("a-b.c") == "envoy_a_b_c"


def test_prometheus_format() -> None:
    s = _store()
    s.set_gauge("server.live", 1)
    s.add_report(0, {"cluster.other.upstream_rq_total": 1}, {})
    text = s.render_prometheus()
    assert text == (
        "# TYPE envoy_cluster_upstream_rq counter\n"
        'envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="up"} 7\n'
        "# TYPE envoy_cluster_upstream_rq_total counter\n"
        'envoy_cluster_upstream_rq_total{envoy_cluster_name="other"} 1\n'
        'envoy_cluster_upstream_rq_total{envoy_cluster_name="up"} 7\n'
        "# TYPE envoy_cluster_upstream_rq_xx counter\n"
        'envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="up"} 7\n'
        "# TYPE envoy_http_downstream_rq_total counter\n"
        'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress"} 7\n'
        "# TYPE envoy_listener_downstream_cx_total counter\n"
        'envoy_listener_downstream_cx_total{envoy_listener_address="127.0.0.1_15001"} 3\n'
        "# TYPE envoy_cluster_upstream_cx_active gauge\n"
        'envoy_cluster_upstream_cx_active{envoy_cluster_name="up"} 3\n'
        "# TYPE envoy_server_live gauge\n"
        "envoy_server_live{} 1\n"
    )


def test_prometheus_label_values_are_escaped() -> None:
    s = StatsStore()
    s.add_counter('cluster.a"b.upstream_rq_total', 1)
    assert (
        'envoy_cluster_upstream_rq_total{envoy_cluster_name="a\\"b"} 1\n' in s.render_prometheus()
    )


def test_worker_host_stats_travel_as_host_keys_and_stay_out_of_stats() -> None:
    from proxyd.worker.stats import StatsStore as WorkerStats

    worker = WorkerStats()
    h = worker.host("up", "127.0.0.1:8080")
    assert worker.host("up", "127.0.0.1:8080") is h  # resolved once, then reused
    h.rq_total += 2
    h.rq_success += 2
    h.cx_active = 1
    counters, gauges = worker.report()
    assert counters == {"up::127.0.0.1:8080::rq_total": 2, "up::127.0.0.1:8080::rq_success": 2}
    assert gauges["up::127.0.0.1:8080::cx_active"] == 1
    assert gauges["up::127.0.0.1:8080::rq_active"] == 0
    assert worker.report()[0] == {}  # deltas: nothing new since the last report
    master = StatsStore()
    master.add_report(0, counters, gauges)
    master.add_report(1, {"up::127.0.0.1:8080::rq_total": 1}, {"up::127.0.0.1:8080::cx_active": 1})
    values = master.host_stats("up", "127.0.0.1:8080")
    assert values["rq_total"] == 3 and values["rq_success"] == 2 and values["cx_active"] == 2
    assert "::" not in master.render_text()
