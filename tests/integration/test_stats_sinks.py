"""stats_sinks and stats_config on a real proxyd: real UDP receivers on loopback get the
statsd and DogStatsD lines the master flushes after real requests, and the admin
``/stats`` and ``/stats/prometheus`` pages follow the tags and the matcher."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.master_fixtures import get
from tests.statsd_receiver import StatsdReceiver, TcpStatsdReceiver
from tests.support import ProxydProcess, free_port, http_config, wait_for

N = 12


def sinks_yaml(statsd_port: int, dog_port: int, extra: str = "") -> str:
    return f"""stats_sinks:
- name: envoy.stat_sinks.statsd
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
    address: {{socket_address: {{address: 127.0.0.1, port_value: {statsd_port}}}}}
- name: envoy.stat_sinks.dog_statsd
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink
    address: {{socket_address: {{address: 127.0.0.1, port_value: {dog_port}}}}}
    prefix: px
    max_bytes_per_datagram: 512
{extra}"""


STATS_CONFIG = r"""stats_config:
  stats_tags:
  - {tag_name: team, fixed_value: edge}
  - {tag_name: direction, regex: '^http\.\w+\.(downstream_)'}
  stats_matcher:
    exclusion_list:
      patterns:
      - {prefix: "server.memory"}
      - {safe_regex: {regex: '.*_cx_destroy$'}}
"""


@pytest.fixture
def receivers():
    with StatsdReceiver() as statsd, StatsdReceiver() as dog:
        yield statsd, dog


def test_statsd_and_dogstatsd_lines_after_requests(tmp_path: Path, upstream, receivers) -> None:
    statsd, dog = receivers
    up = upstream("up")
    port, admin = free_port(), free_port()
    text = http_config(port, admin, {"up": [up.port]})
    text += sinks_yaml(statsd.port, dog.port, "stats_flush_interval: 0.2s\n") + STATS_CONFIG
    with ProxydProcess(tmp_path, text, admin) as p:
        for _ in range(N):
            assert get(port)[0] == 200
        # Plain statsd: the full name, the deltas add up to the total, one line a datagram.
        statsd.wait_counter("envoy.cluster.up.upstream_rq_total", N)
        statsd.wait_counter("envoy.cluster.up.upstream_rq_200", N)
        statsd.wait_counter("envoy.http.ingress_http.downstream_rq_2xx", N)
        with statsd._lock:
            assert all(b"\n" not in d for d in statsd.datagrams)
        gauges = statsd.gauges()
        assert gauges["envoy.server.live"] == 1
        assert gauges["envoy.cluster.up.membership_total"] == 1
        # The matcher drops stats from the sinks too.
        names = {line.split(":", 1)[0] for line in statsd.lines()}
        assert not [n for n in names if n.startswith("envoy.server.memory")]
        assert not [n for n in names if n.endswith("_cx_destroy")]
        # A counter nothing counted is not sent; a used one is sent every flush, 0 too.
        assert "envoy.cluster.up.upstream_rq_timeout" not in names
        first = statsd.count()
        wait_for(lambda: statsd.count() > first + 10)
        assert "envoy.cluster.up.upstream_rq_total:0|c" in statsd.lines()

        # DogStatsD: tag-extracted names, the tags after the value, packed datagrams.
        dog.wait_counter("px.cluster.upstream_rq_total|#team:edge,envoy.cluster_name:up", N)
        dog.wait_counter(
            "px.cluster.upstream_rq|#envoy.response_code:200,team:edge,envoy.cluster_name:up", N
        )
        dog.wait_counter(
            "px.http.rq_xx|#envoy.response_code_class:2,team:edge,"
            "envoy.http_conn_manager_prefix:ingress_http,direction:downstream_",
            N,
        )
        with dog._lock:
            sizes = [len(d) for d in dog.datagrams]
            assert any(b"\n" in d for d in dog.datagrams)
        assert max(sizes) <= 512
        assert dog.gauges()["px.server.live|#team:edge"] == 1

        # The admin pages follow the same config.
        stats = p.admin("/stats")[1]
        assert "cluster.up.upstream_rq_total: " in stats
        assert "server.memory_physical_size" not in stats
        assert "_cx_destroy:" not in stats
        prom = p.admin("/stats/prometheus")[1]
        assert (
            f'envoy_cluster_upstream_rq_total{{team="edge",envoy_cluster_name="up"}} {N}\n' in prom
        )
        assert (
            'envoy_http_rq_xx{envoy_response_code_class="2",team="edge",'
            f'envoy_http_conn_manager_prefix="ingress_http",direction="downstream_"}} {N}\n'
        ) in prom
        assert "envoy_server_memory_physical_size" not in prom


def test_flush_on_admin_and_reload(tmp_path: Path, upstream, receivers) -> None:
    statsd, dog = receivers
    up = upstream("up")
    port, admin = free_port(), free_port()
    base = http_config(port, admin, {"up": [up.port]})
    text = base + sinks_yaml(statsd.port, dog.port, "stats_flush_on_admin: true\n")
    with ProxydProcess(tmp_path, text, admin) as p:
        for _ in range(N):
            assert get(port)[0] == 200
        wait_for(lambda: p.stats().get("cluster.up.upstream_rq_total") == N)
        # No timer: only reading the stats pages flushes (p.stats() read /stats above).
        wait_for(lambda: statsd.count() > 0)
        before = statsd.count()
        assert p.admin("/stats/prometheus")[0] == 200
        wait_for(lambda: statsd.count() > before)
        assert statsd.counter_sums()["envoy.cluster.up.upstream_rq_total"] == N

        # A reload takes the new sink settings: a prefix and a timer.
        p.config_path.write_text(
            base
            + sinks_yaml(statsd.port, dog.port, "stats_flush_interval: 0.2s\n").replace(
                "prefix: px", "prefix: reloaded"
            )
        )
        assert p.ctl("reload").returncode == 0
        assert get(port)[0] == 200
        # Each request is sent once: the N before under the old prefix, the new one after.
        dog.wait_counter("reloaded.cluster.upstream_rq_total|#envoy.cluster_name:up", 1)
        assert dog.counter_sums()["px.cluster.upstream_rq_total|#envoy.cluster_name:up"] == N


TCP_SINK = """node: {id: n1, cluster: c1}
stats_flush_interval: 0.2s
stats_sinks:
- name: envoy.stat_sinks.statsd
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
    tcp_cluster_name: statsd
"""


def test_tcp_statsd_through_a_cluster(tmp_path: Path, upstream) -> None:
    up = upstream("up")
    port, admin = free_port(), free_port()
    with TcpStatsdReceiver() as tcp:
        text = http_config(port, admin, {"up": [up.port], "statsd": [tcp.port]}) + TCP_SINK
        with ProxydProcess(tmp_path, text, admin):
            for _ in range(N):
                assert get(port)[0] == 200
            tcp.wait_counter("envoy.cluster.up.upstream_rq_total", N)
            assert tcp.gauges()["envoy.server.live"] == 1
            # The peer closes: the next flush comes on a new connection, nothing breaks.
            tcp.close_connections()
            seen = tcp.count()
            wait_for(lambda: len(tcp.connections) == 1 and tcp.count() > seen)
            assert get(port)[0] == 200
            tcp.wait_counter("envoy.cluster.up.upstream_rq_total", N + 1)
        # Every line ended with a newline: no partial line was left on a connection.
        assert all(tail == b"" for tail in tcp.partial_tails)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda t: t.replace("node: {id: n1, cluster: c1}\n", ""),
         "stats_sinks[0].typed_config.tcp_cluster_name: tcp statsd: node 'id' and 'cluster' are required"),
        (lambda t: t.replace("tcp_cluster_name: statsd", "tcp_cluster_name: nope"),
         "stats_sinks[0].typed_config.tcp_cluster_name: tcp statsd: unknown cluster 'nope'"),
    ],
)  # fmt: skip
def test_tcp_statsd_config_errors(tmp_path: Path, change, reason: str) -> None:
    port, admin = free_port(), free_port()
    path = tmp_path / "bad.yaml"
    path.write_text(change(http_config(port, admin, {"up": [1], "statsd": [2]}) + TCP_SINK))
    out = subprocess.run(
        [sys.executable, "-m", "proxyd", "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert reason in out.stdout + out.stderr
