"""Histograms against real Envoy: the same bootstrap and the same requests, then which
histograms each admin lists and how many samples each holds.

One bootstrap: listener ``ingress`` → cluster ``up`` (a demo upstream) with
``track_cluster_stats`` (timeout budgets and request/response sizes), a route timeout
of 10 s, ``histogram_bucket_settings`` for the size histograms. Each proxy gets the same requests, one connection each: POSTs with a
100-byte body and GETs with none. Then, from ``/stats`` and ``/stats/prometheus``:

* the histogram names are the same, but for the few Envoy keeps that proxyd does not
  (:data:`ENVOY_ONLY`);
* each histogram of the proxy's own listener, connection manager and cluster holds the
  same number of samples (the admin's own depend on how often the test polled);
* the size histograms (``upstream_rq_body_size``, ``upstream_rs_body_size``,
  ``upstream_rq_headers_size``, ``upstream_rs_headers_size`` and the header counts)
  have the same quantiles, to the last digit: the samples are deterministic and the
  bins and the quantile rule are Envoy's;
* the timing ones have plausible quantiles (ascending, within the test's run time) and
  the timeout budgets 0 % on both (a few milliseconds of a 10 s timeout);
* the statsd sink's timer lines: as many per histogram, the same values below 100.

A second scenario, a TCP proxy listener, compares the listener's and the cluster's
connection histograms.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.compat.envoy_runner import EnvoyRunner, envoy_available
from tests.statsd_receiver import StatsdReceiver
from tests.support import ProxydProcess, TcpEchoServer, UpstreamServer, http_config, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

POSTS = 5
GETS = 3
TRACK = "    track_cluster_stats: {timeout_budgets: true, request_response_sizes: true}"
ROUTE = ", timeout: 10s"

# Envoy's histograms proxyd does not keep (see docs/configuration.md, stats).
ENVOY_ONLY = {"cluster.up.external.upstream_rq_time"}
SIZES = (
    "cluster.up.upstream_rq_body_size",
    "cluster.up.upstream_rs_body_size",
    "cluster.up.upstream_rq_headers_size",
    "cluster.up.upstream_rs_headers_size",
    "cluster.up.upstream_rq_headers_count",
    "cluster.up.upstream_rs_headers_count",
)
TIMES = (
    "cluster.up.upstream_rq_time",
    "cluster.up.upstream_cx_connect_ms",
    "http.ingress_http.downstream_rq_time",
    "http.ingress_http.downstream_cx_length_ms",
    "listener.127.0.0.1_{port}.downstream_cx_length_ms",
)
# Envoy sorts a rule's buckets; the first rule that matches a name wins.
BUCKET_SETTINGS = """stats_config:
  histogram_bucket_settings:
  - match: {suffix: _body_size}
    buckets: [1000, 7, 100.5, 50]
  - match: {prefix: cluster.up.upstream_r}
    buckets: [3, 9.5]
"""
SINK = """stats_sinks:
- name: envoy.stat_sinks.statsd
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
    address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}
"""
BUDGETS = (
    "cluster.up.upstream_rq_timeout_budget_percent_used",
    "cluster.up.upstream_rq_timeout_budget_per_try_percent_used",
)


@dataclass
class Side:
    stats: str
    prometheus: str
    # /stats?histogram_buckets=cumulative for the body sizes
    buckets: str = ""
    # the statsd sink's timer samples, by name
    timers: dict[str, list[int]] | None = None
    # /stats?format=json for the size histograms
    json_sizes: str = ""

    def histograms(self) -> dict[str, str]:
        out = {}
        for line in self.stats.splitlines():
            name, _, value = line.partition(": ")
            if value.startswith("P0(") or value == "No recorded values":
                out[name] = value
        return out

    def cumulative(self, name: str) -> list[float]:
        """The cumulative quantiles P0 .. P100 of one histogram."""
        value = self.histograms()[name]
        return [float(c) for c in re.findall(r"P[\d.]+\([^,]+,([^)]+)\)", value)]

    def counts(self) -> dict[str, int]:
        """``_count`` of every histogram series but the admin's, by metric and labels."""
        families = set(re.findall(r"^# TYPE (\w+) histogram$", self.prometheus, re.M))
        out = {}
        for m in re.finditer(r"^(envoy_\w+)_count(\{[^}]*\}) (\d+)$", self.prometheus, re.M):
            if m[1] in families and "_admin_" not in m[1] and '"admin"' not in m[2]:
                out[m[1] + m[2]] = int(m[3])
        return out


def _send(port: int) -> None:
    for i in range(POSTS):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("POST", f"/post/{i}", body=b"p" * 100, headers={"x-test": "histograms"})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
        conn.close()
    for i in range(GETS):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", f"/get/{i}")
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
        conn.close()


def _settled(page: Callable[[str], str], statsd: StatsdReceiver) -> Side:
    """The admin pages once every connection's and request's samples are in (proxyd's
    worker reports once a second) and a flush closed an interval."""
    listener = 'envoy_listener_downstream_cx_length_ms{envoy_listener_address="127.0.0.1_0"}'
    rq_time = 'envoy_cluster_upstream_rq_time{envoy_cluster_name="up"}'
    total = POSTS + GETS

    def done() -> bool:
        counts = Side("", page("/stats/prometheus")).counts()
        return counts.get(listener) == total and counts.get(rq_time) == total

    wait_for(done, timeout=15)
    key = "envoy.cluster.up.upstream_rq_headers_count"
    wait_for(lambda: len(statsd.timer_samples().get(key, [])) == total, timeout=15)
    buckets = page("/stats?histogram_buckets=cumulative&filter=upstream_r._body_size")
    json_sizes = page("/stats?format=json&filter=_size$")
    return Side(
        page("/stats"), page("/stats/prometheus"), buckets, statsd.timer_samples(), json_sizes
    )


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Side, Side, int]]:
    up = UpstreamServer("up").start()
    try:
        base = http_config(0, 0, {"up": [up.port]}, cluster_extra=TRACK, route_extra=ROUTE)
        base += "stats_flush_interval: 0.2s\n" + BUCKET_SETTINGS
        with StatsdReceiver() as statsd, EnvoyRunner(base + SINK.format(statsd.port)) as envoy:
            port = envoy.listener_port("ingress")

            def envoy_page(path: str) -> str:
                url = f"http://127.0.0.1:{envoy.admin_port}{path}"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return resp.read().decode()

            _send(port)
            envoy_side = _settled(envoy_page, statsd)
        tmp = tmp_path_factory.mktemp("proxyd")
        with (
            StatsdReceiver() as statsd,
            ProxydProcess(tmp, base + SINK.format(statsd.port), concurrency=1) as p,
        ):
            proxyd_port = p.listener_port("ingress")
            assert proxyd_port != 0
            _send(proxyd_port)
            proxyd_side = _settled(lambda path: p.admin(path)[1], statsd)
        # Both listeners are configured on port 0: their stat names say 127.0.0.1_0.
        yield envoy_side, proxyd_side, 0
    finally:
        up.stop()


def _names(names: tuple[str, ...] | set[str], port: int) -> set[str]:
    return {n.format(port=port) for n in names}


def test_same_histogram_names(sides: tuple[Side, Side, int]) -> None:
    envoy, proxyd, port = sides
    e, p = set(envoy.histograms()), set(proxyd.histograms())
    assert e - p == _names(ENVOY_ONLY, port)
    assert p - e == set()
    assert _names(SIZES + TIMES + BUDGETS, port) <= p
    # Prometheus: the same histogram families.
    families = r"^# TYPE (\w+) histogram$"
    e_families = set(re.findall(families, envoy.prometheus, re.M))
    p_families = set(re.findall(families, proxyd.prometheus, re.M))
    assert e_families - p_families == {"envoy_cluster_external_upstream_rq_time"}
    assert p_families <= e_families


def test_same_sample_counts(sides: tuple[Side, Side, int]) -> None:
    envoy, proxyd, _ = sides
    e, p = envoy.counts(), proxyd.counts()
    common = e.keys() & p.keys()
    assert len(common) == 18, (sorted(e.keys() - p.keys()), sorted(p.keys() - e.keys()))
    assert {k: e[k] for k in common} == {k: p[k] for k in common}
    assert p['envoy_cluster_upstream_rq_body_size{envoy_cluster_name="up"}'] == POSTS + GETS
    assert p['envoy_cluster_upstream_rq_per_cx{envoy_cluster_name="up"}'] == 0  # still open
    assert p["envoy_server_initialization_time_ms{}"] == 1


def test_sizes_match_exactly(sides: tuple[Side, Side, int]) -> None:
    envoy, proxyd, _ = sides
    for name in SIZES:
        assert len(proxyd.cumulative(name)) == 10, name
        assert proxyd.cumulative(name) == envoy.cumulative(name), name
    # histogram_buckets=cumulative: the configured bounds, (interval,cumulative) counts
    # (the interval column depends on when each flush ran: compared without it)
    assert re.sub(r"\(\d+,", "(", proxyd.buckets) == re.sub(r"\(\d+,", "(", envoy.buckets)
    assert proxyd.buckets.startswith("cluster.up.upstream_rq_body_size: B7(")
    assert ",3) B100.5(" in proxyd.buckets and ",8) B1000(" in proxyd.buckets
    # /stats?format=json: the same histograms entry, cumulative values equal
    e_json, p_json = json.loads(envoy.json_sizes), json.loads(proxyd.json_sizes)
    e_hist, p_hist = e_json["stats"][-1]["histograms"], p_json["stats"][-1]["histograms"]
    assert p_hist["supported_quantiles"] == e_hist["supported_quantiles"]
    assert [h["name"] for h in p_hist["computed_quantiles"]] == [
        h["name"] for h in e_hist["computed_quantiles"]
    ]
    for ph, eh in zip(p_hist["computed_quantiles"], e_hist["computed_quantiles"], strict=True):
        assert [v["cumulative"] for v in ph["values"]] == [v["cumulative"] for v in eh["values"]]
        assert all(set(v) == {"interval", "cumulative"} for v in ph["values"])
    # /stats/prometheus: the same buckets, _sum (to the last digit) and _count
    for name in SIZES:
        metric = "envoy_" + name.replace(".up.", ".").replace(".", "_")
        lines = [rf"^{metric}_(bucket|sum|count)\{{.*$"]
        e_lines = re.findall(lines[0], envoy.prometheus, re.M)
        # histogram_bucket_settings: 4 bounds for the body sizes, 2 for the others
        assert len(e_lines) == (7 if "body" in metric else 5), metric
        assert [m.group(0) for m in re.finditer(lines[0], proxyd.prometheus, re.M)] == [
            m.group(0) for m in re.finditer(lines[0], envoy.prometheus, re.M)
        ], metric
    # The quantiles say what was sent: 3 empty GET bodies, then five of 100 bytes.
    body = proxyd.cumulative("cluster.up.upstream_rq_body_size")
    assert body[0] == 0 and 100 <= body[-1] < 110


def test_timings_plausible(sides: tuple[Side, Side, int]) -> None:
    envoy, proxyd, port = sides
    for side in (envoy, proxyd):
        for name in _names(TIMES, port):
            values = side.cumulative(name)
            assert len(values) == 10, name
            assert values == sorted(values), name
            assert 0 <= values[0] and values[-1] < 10_000, name
        for name in BUDGETS:
            assert side.cumulative(name) == [0.0] * 10, name
    assert proxyd.histograms()["cluster.up.upstream_cx_length_ms"] == "No recorded values"
    assert envoy.histograms()["cluster.up.upstream_cx_length_ms"] == "No recorded values"


def test_statsd_timers(sides: tuple[Side, Side, int]) -> None:
    """Envoy sends each sample as a timer line; proxyd one line per sample of the
    interval, the sample itself below 100 (the bin's middle above)."""
    envoy, proxyd, port = sides
    assert envoy.timers is not None and proxyd.timers is not None
    total = POSTS + GETS
    for name in ("cluster.up.upstream_rq_headers_count", "cluster.up.upstream_rs_headers_count"):
        key = "envoy." + name
        assert sorted(proxyd.timers[key]) == sorted(envoy.timers[key]), key
        assert len(proxyd.timers[key]) == total
    for name in _names(TIMES + SIZES + BUDGETS, port):
        key = "envoy." + name
        if name.endswith("connect_ms"):
            assert len(proxyd.timers[key]) == len(envoy.timers[key]) == 1
        else:
            assert len(proxyd.timers[key]) == len(envoy.timers[key]) == total, key
    # 100-byte bodies: Envoy sends 100, proxyd the middle of [100, 110)
    assert sorted(envoy.timers["envoy.cluster.up.upstream_rq_body_size"]) == [0] * GETS + [100] * POSTS  # fmt: skip
    assert sorted(proxyd.timers["envoy.cluster.up.upstream_rq_body_size"]) == [0] * GETS + [105] * POSTS  # fmt: skip


TCP = """admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
stats_flush_interval: 0.2s
static_resources:
  listeners:
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: t
          cluster: echo
  clusters:
  - name: echo
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: echo
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""
TCP_CONNECTIONS = 3


def _echo_round_trips(port: int) -> None:
    for _ in range(TCP_CONNECTIONS):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"hi")
            s.shutdown(socket.SHUT_WR)
            while s.recv(100):
                pass


def test_tcp_proxy_histograms(tmp_path: Path) -> None:
    """A TCP proxy listener: the listener's connection lengths and the cluster's connect
    and connection-length samples, one per connection, on both; no upstream_rq_per_cx."""
    sides: list[Side] = []
    with TcpEchoServer() as echo:
        text = TCP.format(port=echo.port)
        listener = 'envoy_listener_downstream_cx_length_ms{envoy_listener_address="127.0.0.1_0"}'
        with EnvoyRunner(text) as envoy:
            _echo_round_trips(envoy.listener_port("tcp"))

            def envoy_page(path: str) -> str:
                url = f"http://127.0.0.1:{envoy.admin_port}{path}"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return resp.read().decode()

            wait_for(lambda: Side("", envoy_page("/stats/prometheus")).counts().get(listener) == TCP_CONNECTIONS)  # fmt: skip
            sides.append(Side(envoy_page("/stats"), envoy_page("/stats/prometheus")))
        with ProxydProcess(tmp_path, text, concurrency=1) as p:
            _echo_round_trips(p.listener_port("tcp"))
            page = p.admin
            wait_for(lambda: Side("", page("/stats/prometheus")[1]).counts().get(listener) == TCP_CONNECTIONS)  # fmt: skip
            sides.append(Side(page("/stats")[1], page("/stats/prometheus")[1]))
    envoy, proxyd = sides
    e, p = envoy.counts(), proxyd.counts()
    cluster = '{envoy_cluster_name="echo"}'
    for key in (
        listener,
        "envoy_cluster_upstream_cx_connect_ms" + cluster,
        "envoy_cluster_upstream_cx_length_ms" + cluster,
    ):
        assert p[key] == e[key] == TCP_CONNECTIONS, key
    assert p["envoy_cluster_upstream_rq_per_cx" + cluster] == e["envoy_cluster_upstream_rq_per_cx" + cluster] == 0  # fmt: skip
    assert set(envoy.histograms()) == set(proxyd.histograms())
    accepted = 'envoy_listener_connections_accepted_per_socket_event{envoy_listener_address="127.0.0.1_0"}'  # fmt: skip
    assert p[accepted] == e[accepted] == TCP_CONNECTIONS  # one at a time


BUDGET_ROUTES = """
              - match: { prefix: "/" }
                route:
                  cluster: up
                  timeout: 1s
                  retry_policy: {retry_on: "5xx", num_retries: 1, per_try_timeout: 0.4s}"""


def _budget_requests(port: int) -> list[int]:
    statuses = []
    for path in ("/delay/100/a", "/delay/100/b", "/delay/600/c"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        statuses.append(resp.status)
        conn.close()
    return statuses


def test_timeout_budgets(tmp_path: Path) -> None:
    """Route timeout 1 s, per-try timeout 0.4 s, one retry: two answers after 100 ms
    use about 10 % of the budget and 25 % of a try's; one that takes 600 ms runs out
    both of its tries (about 100 % each) and is answered 504 after about 80 % of the
    route timeout. Envoy records a try's sample when the try ends, and the request's
    when it completes or a timeout ends it."""
    up = UpstreamServer("up").start()
    sides: list[Side] = []
    try:
        text = http_config(
            0, 0, {"up": [up.port]}, routes=BUDGET_ROUTES,
            cluster_extra="    track_cluster_stats: {timeout_budgets: true}",
        ) + "stats_flush_interval: 0.2s\n"  # fmt: skip
        per_try = 'envoy_cluster_upstream_rq_timeout_budget_per_try_percent_used{envoy_cluster_name="up"}'  # fmt: skip
        with EnvoyRunner(text) as envoy:
            assert _budget_requests(envoy.listener_port("ingress")) == [200, 200, 504]

            def envoy_page(path: str) -> str:
                url = f"http://127.0.0.1:{envoy.admin_port}{path}"
                with urllib.request.urlopen(url, timeout=5) as resp:
                    return resp.read().decode()

            wait_for(lambda: Side("", envoy_page("/stats/prometheus")).counts().get(per_try) == 4)
            sides.append(Side(envoy_page("/stats"), envoy_page("/stats/prometheus")))
        with ProxydProcess(tmp_path, text, concurrency=1) as p:
            assert _budget_requests(p.listener_port("ingress")) == [200, 200, 504]
            page = p.admin
            wait_for(lambda: Side("", page("/stats/prometheus")[1]).counts().get(per_try) == 4)
            sides.append(Side(page("/stats")[1], page("/stats/prometheus")[1]))
    finally:
        up.stop()
    envoy, proxyd = sides
    budget = 'envoy_cluster_upstream_rq_timeout_budget_percent_used{envoy_cluster_name="up"}'
    assert proxyd.counts()[budget] == envoy.counts()[budget] == 3
    for side in (envoy, proxyd):
        # (bounds with room for a loaded machine: only the lower ones are sure)
        whole = side.cumulative("cluster.up.upstream_rq_timeout_budget_percent_used")
        assert 10 <= whole[0] < 60, whole  # 100 ms of 1 s
        assert 80 <= whole[-1] < 110, whole  # two tries of 400 ms
        tries = side.cumulative("cluster.up.upstream_rq_timeout_budget_per_try_percent_used")
        assert 25 <= tries[0] < 99, tries  # 100 ms of 400 ms
        assert 99 <= tries[-1] < 110, tries  # the tries that ran out
