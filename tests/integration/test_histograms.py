"""Histograms on a real proxyd: requests through a worker, then the master's ``/stats``
(text, ``histogram_buckets=cumulative``, JSON), ``/stats/prometheus`` and a statsd and a
DogStatsD sink (real UDP receivers) show the request-path histograms and the
``track_cluster_stats`` ones with one sample per request (or connection)."""

from __future__ import annotations

import http.client
import json
import re
from pathlib import Path

from tests.statsd_receiver import StatsdReceiver
from tests.support import ProxydProcess, http_config, wait_for

N = 6
BODY = b"b" * 100

TRACK = "    track_cluster_stats: {timeout_budgets: true, request_response_sizes: true}"


def sinks(statsd: int, dog: int) -> str:
    return f"""stats_flush_interval: 0.2s
stats_sinks:
- name: envoy.stat_sinks.statsd
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
    address: {{socket_address: {{address: 127.0.0.1, port_value: {statsd}}}}}
- name: envoy.stat_sinks.dog_statsd
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink
    address: {{socket_address: {{address: 127.0.0.1, port_value: {dog}}}}}
"""


def post(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("POST", "/x", body=BODY, headers={"connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def prom_count(text: str, metric: str) -> int:
    """The sample count of ``metric`` for proxyd's own listener, HCM or cluster (not
    the admin's)."""
    pattern = rf'^{metric}_count\{{[^}}]*"(?:up|ingress_http|127\.0\.0\.1_\d+)"\}} (\d+)$'
    m = re.search(pattern, text, re.M)
    return int(m[1]) if m else -1


def test_histograms_through_a_worker(tmp_path: Path, upstream) -> None:
    up = upstream("up")
    with StatsdReceiver() as statsd, StatsdReceiver() as dog:
        text = http_config(0, 0, {"up": [up.port]}, cluster_extra=TRACK)
        text += sinks(statsd.port, dog.port)
        with ProxydProcess(tmp_path, text, concurrency=1) as p:
            port = p.listener_port()
            for _ in range(N):
                assert post(port) == 200

            def prometheus() -> str:
                return p.admin("/stats/prometheus")[1]

            # The worker reports once a second; connections close after their response.
            wait_for(
                lambda: (
                    prom_count(prometheus(), "envoy_listener_downstream_cx_length_ms") == N
                    and prom_count(prometheus(), "envoy_cluster_upstream_rq_time") == N
                )
            )
            prom = prometheus()
            assert "# TYPE envoy_cluster_upstream_rq_time histogram" in prom
            for metric in (
                "envoy_cluster_upstream_rq_time",
                "envoy_http_downstream_rq_time",
                "envoy_http_downstream_cx_length_ms",
                "envoy_listener_downstream_cx_length_ms",
                "envoy_cluster_upstream_rq_timeout_budget_percent_used",
                "envoy_cluster_upstream_rq_timeout_budget_per_try_percent_used",
                "envoy_cluster_upstream_rq_headers_size",
                "envoy_cluster_upstream_rq_body_size",
                "envoy_cluster_upstream_rs_headers_size",
                "envoy_cluster_upstream_rs_body_size",
            ):
                assert prom_count(prom, metric) == N, metric
            # one connection to the upstream, reused by every request
            assert prom_count(prom, "envoy_cluster_upstream_cx_connect_ms") == 1
            assert 'envoy_cluster_upstream_rq_body_size_bucket{envoy_cluster_name="up",le="50"} 0' in prom  # fmt: skip
            assert 'envoy_cluster_upstream_rq_body_size_bucket{envoy_cluster_name="up",le="100"} 6' in prom  # fmt: skip
            assert 'envoy_http_downstream_rq_time_count{envoy_http_conn_manager_prefix="ingress_http"} 6' in prom  # fmt: skip

            stats = p.admin("/stats")[1]
            lines = dict(line.split(": ", 1) for line in stats.splitlines())
            # six samples of 100 bytes in [100, 110): Envoy's quantiles exactly
            body = lines["cluster.up.upstream_rq_body_size"]
            assert "P50(" in body and body.endswith(",108.57142857142857)")
            assert "P0(" in body and ",101.42857142857143) " in body
            assert lines["cluster.up.upstream_cx_length_ms"] == "No recorded values"
            assert lines["cluster.up.upstream_rq_timeout_budget_percent_used"].startswith("P0(")
            # histograms come after the counters and gauges
            names = [line.split(": ", 1)[0] for line in stats.splitlines()]
            first = names.index("cluster.up.upstream_cx_connect_ms")
            assert all(": P0(" in s or ": No recorded" in s for s in stats.splitlines()[first:])
            cumulative = p.admin("/stats?histogram_buckets=cumulative&filter=rq_body_size")[1]
            assert cumulative.startswith("cluster.up.upstream_rq_body_size: B0.5(")
            assert "B50(" in cumulative and ",6) B250(" in cumulative
            status, _ = p.admin("/stats?histogram_buckets=detailed")
            assert status == 400
            doc = json.loads(p.admin("/stats?format=json&filter=upstream_rs_body_size")[1])
            (computed,) = doc["stats"][-1]["histograms"]["computed_quantiles"]
            assert computed["name"] == "cluster.up.upstream_rs_body_size"
            assert computed["values"][0]["cumulative"] > 0

            # statsd: each sample a timer line (below 100 the sample itself)
            wait_for(
                lambda: (
                    len(statsd.timer_samples().get("envoy.cluster.up.upstream_rq_time", [])) == N
                )
            )
            timers = statsd.timer_samples()
            assert timers["envoy.cluster.up.upstream_rq_body_size"] == [105] * N
            assert len(timers["envoy.http.ingress_http.downstream_rq_time"]) == N
            wait_for(
                lambda: (
                    len(
                        dog.timer_samples().get(
                            "envoy.cluster.upstream_rq_time|#envoy.cluster_name:up", []
                        )
                    )
                    == N
                )
            )
