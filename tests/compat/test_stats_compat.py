"""Stats sinks and stats_config against real Envoy.

Envoy and then proxyd run one bootstrap (a listener, a cluster ``up`` on a demo
upstream, a statsd and a DogStatsD sink each sending to a UDP receiver of this test,
``stats_tags`` with a fixed value and a regex, a ``stats_matcher`` exclusion list), get
the same requests, and flush every 0.2 s. Then, for the stats both have:

* the statsd lines have the same names and types, and the counters' deltas add up to
  the same totals;
* the DogStatsD lines carry the same tag-extracted names and the same tags, in order;
* ``/stats/prometheus`` has the same metric names, labels and values;
* the matcher drops the same stats from ``/stats``;
* both accept a name-only tag for every default tag name proxyd knows, and refuse one
  for a name that is not a default.
"""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxyd.protocol.stats_tags import default_tag_names
from tests.compat.envoy_runner import ENVOY_BINARY, EnvoyRunner, envoy_available
from tests.integration.master_fixtures import get
from tests.statsd_receiver import StatsdReceiver, TcpStatsdReceiver
from tests.support import ProxydProcess, UpstreamServer, free_port, http_config, wait_for

pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(not envoy_available(), reason="the envoy binary is not installed"),
]

N = 10

STATS = r"""stats_flush_interval: 0.2s
stats_config:
  stats_tags:
  - {tag_name: team, fixed_value: edge}
  - {tag_name: direction, regex: '^http\.\w+\.(downstream_)'}
  stats_matcher:
    exclusion_list:
      patterns:
      - {prefix: "cluster_manager."}
      - {safe_regex: {regex: '.*_cx_destroy$'}}
      - {suffix: "_rq_timeout"}
"""


def sinks(statsd: int, dog: int) -> str:
    return f"""stats_sinks:
- name: envoy.stat_sinks.statsd
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
    address: {{socket_address: {{address: 127.0.0.1, port_value: {statsd}}}}}
    prefix: cmp
- name: envoy.stat_sinks.dog_statsd
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink
    address: {{socket_address: {{address: 127.0.0.1, port_value: {dog}}}}}
    max_bytes_per_datagram: 1024
"""


@dataclass
class Run:
    statsd: dict[str, int]  # counter sums
    statsd_types: dict[str, str]
    statsd_gauges: dict[str, int]
    dog: dict[str, int]
    prometheus: str
    stats: str
    # Datagram shapes: statsd lines one per datagram; DogStatsD packed up to the limit.
    statsd_multiline: int
    dog_multiline: int
    dog_largest: int


def _types(receiver: StatsdReceiver) -> dict[str, str]:
    return {p["name"]: p["type"] for p in receiver.parsed()}


def _drive(port: int, admin_page, statsd: StatsdReceiver, dog: StatsdReceiver) -> Run:
    for _ in range(N):
        assert get(port)[0] == 200
    key = "cmp.cluster.up.upstream_rq_total"
    statsd.wait_counter(key, N)
    dog.wait_counter("envoy.cluster.upstream_rq_total|#team:edge,envoy.cluster_name:up", N)
    # Two more flushes, so every counter's last delta is in.
    seen = statsd.count()
    wait_for(lambda: statsd.counter_sums().get(key) == N and statsd.count() > seen + 4)
    return Run(
        statsd=statsd.counter_sums(),
        statsd_types=_types(statsd),
        statsd_gauges=statsd.gauges(),
        dog=dog.counter_sums(),
        prometheus=admin_page("/stats/prometheus"),
        stats=admin_page("/stats"),
        statsd_multiline=sum(b"\n" in d for d in list(statsd.datagrams)),
        dog_multiline=sum(b"\n" in d for d in list(dog.datagrams)),
        dog_largest=max(len(d) for d in list(dog.datagrams)),
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Run, Run, int]]:
    up = UpstreamServer("up").start()
    try:
        port, admin = free_port(), free_port()
        base = http_config(port, admin, {"up": [up.port]}) + STATS
        with StatsdReceiver() as statsd, StatsdReceiver() as dog:
            text = base + sinks(statsd.port, dog.port)
            with EnvoyRunner(text) as envoy:

                def envoy_page(path: str) -> str:
                    url = f"http://127.0.0.1:{envoy.admin_port}{path}"
                    with urllib.request.urlopen(url, timeout=5) as resp:
                        return resp.read().decode()

                envoy_run = _drive(port, envoy_page, statsd, dog)
        with StatsdReceiver() as statsd, StatsdReceiver() as dog:
            text = base + sinks(statsd.port, dog.port)
            tmp = tmp_path_factory.mktemp("proxyd")
            with ProxydProcess(tmp, text, admin, concurrency=2) as p:
                proxyd_run = _drive(port, lambda path: p.admin(path)[1], statsd, dog)
        yield envoy_run, proxyd_run, port
    finally:
        up.stop()


def _well_known(port: int) -> list[str]:
    """Counters whose totals depend only on the N requests (one connection each)."""
    return [
        "cluster.up.upstream_rq_total",
        "cluster.up.upstream_rq_200",
        "cluster.up.upstream_rq_2xx",
        "cluster.up.upstream_rq_completed",
        "http.ingress_http.downstream_rq_total",
        "http.ingress_http.downstream_rq_2xx",
        "http.ingress_http.downstream_cx_total",
        f"listener.127.0.0.1_{port}.downstream_cx_total",
    ]


def test_statsd_lines_match_envoy(runs: tuple[Run, Run, int]) -> None:
    envoy, proxyd, port = runs
    for name in _well_known(port):
        key = f"cmp.{name}"
        if key not in proxyd.statsd and name.endswith("_completed"):
            continue  # proxyd does not count upstream_rq_completed per cluster
        assert proxyd.statsd.get(key) == envoy.statsd.get(key) == N, key
    # Every name both send is sent with the same type.
    common = envoy.statsd_types.keys() & proxyd.statsd_types.keys()
    assert len(common) >= 15, sorted(common)
    diff = {n: (envoy.statsd_types[n], proxyd.statsd_types[n]) for n in common if envoy.statsd_types[n] != proxyd.statsd_types[n]}  # fmt: skip
    assert not diff
    for gauge in ("cmp.server.live", "cmp.cluster.up.membership_total", "cmp.cluster.up.membership_healthy"):  # fmt: skip
        assert envoy.statsd_gauges[gauge] == proxyd.statsd_gauges[gauge] == 1, gauge
    # The matcher keeps the same stats out of both.
    for run in (envoy, proxyd):
        names = run.statsd_types.keys()
        assert not [n for n in names if n.startswith("cmp.cluster_manager.")]
        assert not [n for n in names if n.endswith(("_cx_destroy", "_rq_timeout"))]


def test_dogstatsd_tags_match_envoy(runs: tuple[Run, Run, int]) -> None:
    envoy, proxyd, port = runs
    for run in (envoy, proxyd):
        assert run.statsd_multiline == 0
        assert run.dog_multiline > 0
        assert run.dog_largest <= 1024
    expected = [
        "envoy.cluster.upstream_rq_total|#team:edge,envoy.cluster_name:up",
        "envoy.cluster.upstream_rq|#envoy.response_code:200,team:edge,envoy.cluster_name:up",
        "envoy.cluster.upstream_rq_xx|#envoy.response_code_class:2,team:edge,envoy.cluster_name:up",
        "envoy.http.rq_xx|#envoy.response_code_class:2,team:edge,"
        "envoy.http_conn_manager_prefix:ingress_http,direction:downstream_",
        "envoy.http.rq_total|#team:edge,envoy.http_conn_manager_prefix:ingress_http,"
        "direction:downstream_",
        f"envoy.listener.downstream_cx_total|#team:edge,envoy.listener_address:127.0.0.1_{port}",
    ]
    for key in expected:
        assert envoy.dog.get(key) == proxyd.dog.get(key) == N, (key, envoy.dog.get(key))
    # Every counter name both send carries the same tags.
    common = {k.split("|#")[0] for k in envoy.dog} & {k.split("|#")[0] for k in proxyd.dog}
    assert len(common) >= 10
    for name in common:
        e = {k for k in envoy.dog if k.split("|#")[0] == name}
        p = {k for k in proxyd.dog if k.split("|#")[0] == name}
        shared = e & p
        assert shared, (name, e, p)


_PROM_LINE = re.compile(r"^(envoy_\w+)(\{.*\}) (\S+)$")


def _prom(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = _PROM_LINE.match(line)
        if m:
            out[m.group(1) + m.group(2)] = m.group(3)
    return out


def test_prometheus_names_and_labels_match_envoy(runs: tuple[Run, Run, int]) -> None:
    envoy, proxyd, port = runs
    e, p = _prom(envoy.prometheus), _prom(proxyd.prometheus)
    expected = [
        'envoy_cluster_upstream_rq_total{team="edge",envoy_cluster_name="up"}',
        'envoy_cluster_upstream_rq{envoy_response_code="200",team="edge",envoy_cluster_name="up"}',
        'envoy_http_rq_xx{envoy_response_code_class="2",team="edge",'
        'envoy_http_conn_manager_prefix="ingress_http",direction="downstream_"}',
        f'envoy_listener_downstream_cx_total{{team="edge",envoy_listener_address="127.0.0.1_{port}"}}',
    ]
    for series in expected:
        assert e.get(series) == p.get(series) == str(N), series
    for series in ('envoy_server_live{team="edge"}', 'envoy_cluster_membership_total{team="edge",envoy_cluster_name="up"}'):  # fmt: skip
        assert e.get(series) == p.get(series) == "1", series
    # Each metric family proxyd has under a name Envoy also has carries the same labels.
    by_family_e: dict[str, set[str]] = {}
    for series in e:
        name, labels = series.split("{", 1)
        by_family_e.setdefault(name, set()).add("{" + labels)
    for series in p:
        name, labels = series.split("{", 1)
        if name in by_family_e and not name.startswith("envoy_server_proxyd"):
            keys = set(re.findall(r'(\w+)="', labels))
            envoy_keys = [set(re.findall(r'(\w+)="', lab)) for lab in by_family_e[name]]
            assert keys in envoy_keys, (series, by_family_e[name])
    # The matcher: gone from both.
    for run in (envoy, proxyd):
        assert "envoy_cluster_manager_" not in run.prometheus
        assert "_cx_destroy{" not in run.prometheus


def test_matcher_hides_stats_from_admin_as_envoy(runs: tuple[Run, Run, int]) -> None:
    envoy, proxyd, _ = runs
    for run in (envoy, proxyd):
        names = [line.split(":", 1)[0] for line in run.stats.splitlines()]
        assert "cluster.up.upstream_rq_total" in names
        assert not [n for n in names if n.startswith("cluster_manager.")]
        assert not [n for n in names if n.endswith(("_cx_destroy", "_rq_timeout"))]


TCP_SINK = """node: {id: n1, cluster: c1}
stats_flush_interval: 0.2s
stats_sinks:
- name: envoy.stat_sinks.statsd
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.StatsdSink
    tcp_cluster_name: statsd
    prefix: tcp
"""


def test_tcp_statsd_lines_match_envoy(tmp_path: Path) -> None:
    up = UpstreamServer("up").start()
    sums: list[dict[str, int]] = []
    types: list[dict[str, str]] = []
    try:
        port, admin = free_port(), free_port()
        for runner in ("envoy", "proxyd"):
            with TcpStatsdReceiver() as tcp:
                text = http_config(port, admin, {"up": [up.port], "statsd": [tcp.port]}) + TCP_SINK

                def drive(r: TcpStatsdReceiver = tcp) -> None:
                    for _ in range(N):
                        assert get(port)[0] == 200
                    r.wait_counter("tcp.cluster.up.upstream_rq_total", N)
                    target = r.count() + 40
                    wait_for(lambda: r.count() > target)  # a few more flushes
                    sums.append(r.counter_sums())
                    types.append(_types(r))

                if runner == "envoy":
                    with EnvoyRunner(text):
                        drive()
                else:
                    with ProxydProcess(tmp_path, text, admin, concurrency=2):
                        drive()
                        # The flushes go over one connection, kept open.
                        assert len(tcp.connections) == 1
    finally:
        up.stop()
    envoy, proxyd = sums
    for name in _well_known(port):
        if name.endswith("_completed"):
            continue
        assert envoy.get(f"tcp.{name}") == proxyd.get(f"tcp.{name}") == N, name
    common = types[0].keys() & types[1].keys()
    assert len(common) >= 15
    assert all(types[0][n] == types[1][n] for n in common)


def _validate(binary: list[str], path: Path) -> int:
    out = subprocess.run([*binary, "--mode", "validate", "-c", str(path)], capture_output=True, timeout=120)  # fmt: skip
    return out.returncode


def test_name_only_tags_accepted_for_each_default_name(tmp_path: Path) -> None:
    proxyd = [sys.executable, "-m", "proxyd"]
    envoy = [ENVOY_BINARY, "--disable-hot-restart"]
    tags = "".join(f"  - {{tag_name: {name}}}\n" for name in sorted(default_tag_names()))
    good = tmp_path / "good.yaml"
    good.write_text(f"stats_config:\n  use_all_default_tags: false\n  stats_tags:\n{tags}")
    assert _validate(envoy, good) == 0
    assert _validate(proxyd, good) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("stats_config:\n  stats_tags:\n  - {tag_name: envoy.not_a_default}\n")
    assert _validate(envoy, bad) != 0
    assert _validate(proxyd, bad) != 0


EDGE_TAGS = r"""stats_config:
  use_all_default_tags: false
  stats_tags:
  - {tag_name: two, regex: '^cluster\.(up(x?))\.'}
  - {tag_name: one, regex: '\.(membership_total)$'}
  - {tag_name: lead, regex: '^(cluster)\.up\.upstream_cx_connect_fail'}
static_resources:
  clusters:
  - name: up
    connect_timeout: 1s
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}
"""


def test_custom_regex_edge_cases_match_envoy(tmp_path: Path) -> None:
    """An empty group 2 gives an empty value; trailing dots left by the removals go,
    leading ones stay; only the named defaults run without use_all_default_tags."""
    wanted = (
        "envoy_cluster{",  # cluster.up.membership_total: "cluster.." → "cluster"
        "envoy___upstream_cx_connect_fail{",  # ".up..." with "up" removed too
        "envoy_cluster__upstream_cx_total{",
    )

    def pick(text: str) -> set[str]:
        return {line for line in text.splitlines() if line.startswith(wanted)}

    admin = free_port()
    text = f"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}}}\n"
    with EnvoyRunner(text + EDGE_TAGS) as envoy:
        url = f"http://127.0.0.1:{envoy.admin_port}/stats/prometheus"
        with urllib.request.urlopen(url, timeout=5) as resp:
            envoy_lines = pick(resp.read().decode())
    with ProxydProcess(tmp_path, text + EDGE_TAGS, admin) as p:
        proxyd_lines = pick(p.admin("/stats/prometheus")[1])
    assert envoy_lines == proxyd_lines
    assert envoy_lines == {
        'envoy_cluster{one="membership_total",two=""} 1',
        'envoy___upstream_cx_connect_fail{lead="cluster",two=""} 0',
        'envoy_cluster__upstream_cx_total{two=""} 0',
    }
