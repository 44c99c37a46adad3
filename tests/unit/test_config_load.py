"""proxyd.config.load compiles a bootstrap into the epoch with Envoy's defaults."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import msgpack
import pytest

from proxyd.config import AdminConfig, LoadedConfig, load
from proxyd.epoch import (
    AccessLog,
    AccessLogFilter,
    Cluster,
    Endpoint,
    Epoch,
    HeaderMatch,
    RouteMatch,
    StringMatch,
    from_wire,
    to_wire,
)

GOOD = Path(__file__).parent / "config_corpus" / "good-full.yaml"

MINIMAL = """
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 8000}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
              - match: {prefix: /}
                route: {cluster: c}
  clusters:
  - name: c
    load_assignment:
      cluster_name: c
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9000}}}
"""


@pytest.fixture(scope="module")
def full() -> LoadedConfig:
    return load(str(GOOD))


def write(tmp_path: Path, text: str, name: str = "bootstrap.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_loaded_config_shape(full: LoadedConfig) -> None:
    assert full.file == str(GOOD)
    assert full.epoch_template.number == 0
    assert full.admin == AdminConfig("127.0.0.1", 9901, "/tmp/admin_access.log")
    numbered = dataclasses.replace(full.epoch_template, number=7)
    assert numbered.number == 7 and numbered.listeners == full.epoch_template.listeners


def test_bootstrap_json_is_plain_data_with_proto_names(full: LoadedConfig) -> None:
    dumped = json.loads(json.dumps(full.bootstrap_json))
    assert dumped["node"] == {"id": "node-1", "cluster": "edge"}
    listener = dumped["static_resources"]["listeners"][0]
    assert listener["per_connection_buffer_limit_bytes"] == 32768
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["@type"].endswith("HttpConnectionManager")
    assert hcm["stat_prefix"] == "ingress_http"


def test_listener_and_hcm(full: LoadedConfig) -> None:
    (listener,) = full.epoch_template.listeners
    assert (listener.name, listener.address, listener.port) == ("front", "0.0.0.0", 10000)
    assert listener.per_connection_buffer_limit_bytes == 32768
    hcm = listener.hcm
    assert hcm.stat_prefix == "ingress_http"
    assert hcm.codec_type == "HTTP1"
    assert hcm.request_timeout_s == 30.0
    assert hcm.stream_idle_timeout_s == 0.0  # "0s" disables it
    assert hcm.request_headers_timeout_s == 2.5
    assert hcm.idle_timeout_s == 120.0
    assert hcm.use_remote_address is True
    assert hcm.xff_num_trusted_hops == 1
    assert hcm.max_request_headers_kb == 96
    assert hcm.server_name == "edge"
    assert hcm.generate_request_id is False
    assert hcm.access_logs == (
        AccessLog(
            "/tmp/access.log",
            '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"'
            " %RESPONSE_CODE%\n",
        ),
        AccessLog("/tmp/access2.log", ""),
        AccessLog(
            "",
            sink="stdout",
            json_format='{"flags": "%RESPONSE_FLAGS%", "path": "%PATH(NQ)%", "status": "%RESPONSE_CODE%"}',
            omit_empty_values=True,
            filter=AccessLogFilter(
                "or",
                children=(
                    AccessLogFilter(
                        "status_code", op="GE", value=500, runtime_key="log.min_status"
                    ),
                    AccessLogFilter("runtime", value=1, denominator=100, runtime_key="log.sample"),
                ),
            ),
        ),
    )
    assert hcm.access_log_flush_interval_s == 10.0
    assert not hcm.flush_access_log_on_new_request
    (conn_log,) = listener.access_logs
    assert (conn_log.sink, conn_log.path, conn_log.writer_key) == ("stderr", "", "stderr:")


def test_routes(full: LoadedConfig) -> None:
    rc = full.epoch_template.listeners[0].hcm.route_config
    assert rc.name == "local_route"
    api, fallback = rc.virtual_hosts
    assert api.domains == ("api.example.com", "api.example.com:8080")  # lower-cased
    assert fallback.domains == ("*",)
    health, versioned, static = api.routes
    assert health.name == "exact-health"
    assert health.match == RouteMatch("path", "/healthz")
    assert (health.cluster, health.timeout_s) == ("api", 0.0)  # 0 disables the timeout
    assert versioned.match.kind == "safe_regex"
    assert versioned.match.value == "/v[0-9]+/.*"
    assert versioned.timeout_s == 1.5
    assert versioned.match.headers == (
        HeaderMatch("x-canary", None),
        HeaderMatch("x-debug", None, invert_match=True),  # present_match: false
        HeaderMatch("x-env", StringMatch("exact", "prod"), invert_match=True),
        HeaderMatch(
            "x-tenant",
            StringMatch("prefix", "acme-", ignore_case=True),
            treat_missing_as_empty=True,
        ),
        HeaderMatch("x-id", StringMatch("safe_regex", "[a-f0-9]{8}")),
        HeaderMatch("x-trace", None),  # no specifier: the header must be present
    )
    assert static.match == RouteMatch("prefix", "/Static", case_sensitive=False)
    assert static.timeout_s == 15.0  # Envoy's default route timeout
    assert fallback.routes[0].cluster == "static"


def test_clusters(full: LoadedConfig) -> None:
    api = full.epoch_template.cluster("api")
    assert api == Cluster(
        name="api",
        type="STRICT_DNS",
        connect_timeout_s=0.25,
        lb_policy="LEAST_REQUEST",
        endpoints=(
            Endpoint("api.internal", 8080, weight=3, hostname="api.internal"),
            Endpoint("10.0.0.7", 8080),
        ),
        choice_count=3,
        max_requests_per_connection=100,
        idle_timeout_s=30.0,
        dns_lookup_family="V4_ONLY",
        dns_refresh_rate_s=10.0,
    )
    static = full.epoch_template.cluster("static")
    assert static is not None
    assert static.type == "STATIC"
    assert static.lb_policy == "RANDOM"
    assert static.connect_timeout_s == 5.0
    assert static.max_requests_per_connection == 10
    assert static.endpoints == (Endpoint("127.0.0.1", 8081), Endpoint("::1", 8082))


def test_envoy_defaults(tmp_path: Path) -> None:
    loaded = load(write(tmp_path, MINIMAL))
    assert loaded.admin is None
    (listener,) = loaded.epoch_template.listeners
    assert listener.per_connection_buffer_limit_bytes == 1024 * 1024
    hcm = listener.hcm
    assert hcm.codec_type == "AUTO"
    assert hcm.access_logs == ()
    assert (hcm.request_timeout_s, hcm.stream_idle_timeout_s) == (0.0, 300.0)
    assert (hcm.request_headers_timeout_s, hcm.idle_timeout_s) == (0.0, 3600.0)
    assert hcm.max_request_headers_kb == 60
    assert hcm.server_name == "envoy"
    assert hcm.generate_request_id is True
    assert hcm.use_remote_address is False
    assert hcm.route_config.virtual_hosts[0].routes[0].timeout_s == 15.0
    (cluster,) = loaded.epoch_template.clusters
    assert cluster.type == "STATIC"
    assert cluster.lb_policy == "ROUND_ROBIN"
    assert cluster.connect_timeout_s == 5.0
    assert cluster.choice_count == 2
    assert cluster.max_requests_per_connection == 0
    assert cluster.idle_timeout_s == 3600.0
    assert (cluster.dns_lookup_family, cluster.dns_refresh_rate_s) == ("AUTO", 5.0)
    assert cluster.endpoints == (Endpoint("127.0.0.1", 9000, weight=1, hostname=""),)


def test_listener_without_name_gets_its_address(tmp_path: Path) -> None:
    loaded = load(write(tmp_path, MINIMAL.replace("  - name: l\n", "  -\n")))
    assert loaded.epoch_template.listeners[0].name == "127.0.0.1_8000"


def test_json_file(tmp_path: Path) -> None:
    import yaml

    data = yaml.safe_load(MINIMAL)
    loaded = load(write(tmp_path, json.dumps(data), "bootstrap.json"))
    assert loaded.epoch_template.clusters[0].name == "c"


def test_camel_case_json_names_are_accepted(tmp_path: Path) -> None:
    text = MINIMAL.replace("stat_prefix: s", "statPrefix: s").replace(
        "load_assignment:", "loadAssignment:"
    )
    loaded = load(write(tmp_path, text))
    assert loaded.epoch_template.listeners[0].hcm.stat_prefix == "s"


def test_epoch_round_trips_through_the_wire(full: LoadedConfig) -> None:
    epoch = dataclasses.replace(full.epoch_template, number=3)
    packed = msgpack.packb(to_wire(epoch), use_bin_type=True)
    assert from_wire(Epoch, msgpack.unpackb(packed, raw=False)) == epoch


def test_a_thousand_clusters(tmp_path: Path) -> None:
    clusters = "".join(
        f"""
  - name: c{i}
    type: STRICT_DNS
    load_assignment:
      cluster_name: c{i}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: host{i}.internal, port_value: 80}}}}}}
"""
        for i in range(1000)
    )
    text = MINIMAL.replace("  clusters:\n", "  clusters:\n" + clusters, 1)
    loaded = load(write(tmp_path, text))
    assert len(loaded.epoch_template.clusters) == 1001
    assert loaded.epoch_template.cluster("c999") is not None
