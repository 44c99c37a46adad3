"""The connection-manager transform fields, listener socket settings and cluster
connection/endpoint fields: what they compile to, and what is refused with its path."""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxyd.config import compile_bootstrap
from proxyd.epoch import Epoch, HcmTransforms, SocketOption
from proxyd.errors import ConfigError

BASE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).parent / "config_corpus" / "good-full.yaml").read_text()
)
LISTENER = "static_resources.listeners[0]"
HCM_PATH = f"{LISTENER}.filter_chains[0].filters[0].typed_config"


def base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def listener(d: dict[str, Any]) -> dict[str, Any]:
    return d["static_resources"]["listeners"][0]


def hcm(d: dict[str, Any]) -> dict[str, Any]:
    return listener(d)["filter_chains"][0]["filters"][0]["typed_config"]


def cluster(d: dict[str, Any]) -> dict[str, Any]:
    return d["static_resources"]["clusters"][0]


def compiled(d: dict[str, Any]) -> Epoch:
    return compile_bootstrap(d, "conf.yaml").epoch_template


def reject(d: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        compile_bootstrap(d, "conf.yaml")
    return info.value


def test_no_transform_field_means_no_transforms() -> None:
    d = base()
    hcm(d)["path_with_escaped_slashes_action"] = "IMPLEMENTATION_SPECIFIC_DEFAULT"
    hcm(d)["server_header_transformation"] = "OVERWRITE"
    hcm(d)["normalize_path"] = False
    assert compiled(d).listeners[0].hcm.transforms is None


def test_transform_fields() -> None:
    d = base()
    hcm(d).update(
        {
            "normalize_path": True,
            "merge_slashes": True,
            "path_with_escaped_slashes_action": "unescape_and_redirect",
            "server_header_transformation": "PASS_THROUGH",
            "via": "1.1 edge",
            "skip_xff_append": True,
            "preserve_external_request_id": True,
            "always_set_request_id_in_response": True,
            "strip_any_host_port": True,
            "common_http_protocol_options": {"headers_with_underscores_action": "DROP_HEADER"},
            "add_user_agent": True,
            "scheme_header_transformation": {"scheme_to_overwrite": "https"},
        }
    )
    assert compiled(d).listeners[0].hcm.transforms == HcmTransforms(
        normalize_path=True,
        merge_slashes=True,
        escaped_slashes="UNESCAPE_AND_REDIRECT",
        server_header_transformation="PASS_THROUGH",
        via="1.1 edge",
        skip_xff_append=True,
        preserve_external_request_id=True,
        always_set_request_id_in_response=True,
        strip_host_port="any",
        headers_with_underscores="DROP_HEADER",
        add_user_agent=True,
        scheme="https",
    )


def test_strip_port_modes_exclude_each_other() -> None:
    d = base()
    hcm(d).update({"strip_matching_host_port": True, "strip_any_host_port": True})
    err = reject(d)
    assert err.path == f"{HCM_PATH}.strip_any_host_port"
    assert "only one of strip_matching_host_port or strip_any_host_port" in err.reason


def test_via_must_be_latin1() -> None:
    d = base()
    hcm(d)["via"] = "pr☃xy"
    assert reject(d).path == f"{HCM_PATH}.via"


@pytest.mark.parametrize(
    ("field", "value", "refused"),
    [
        (
            "http_protocol_options",
            {"enable_trailers": True},
            "http_protocol_options.enable_trailers",
        ),
        (
            "http2_protocol_options",
            {"hpack_table_size": 100},
            "http2_protocol_options.hpack_table_size",
        ),
        ("http1_safe_max_connection_duration", True, "http1_safe_max_connection_duration"),
    ],
)
def test_hcm_fields_left_out_are_refused_by_name(field: str, value: Any, refused: str) -> None:
    d = base()
    hcm(d)[field] = value
    err = reject(d)
    assert err.path == f"{HCM_PATH}.{refused}"
    assert err.reason == "field not supported by proxyd"


def test_common_http_protocol_options_left_out_are_refused() -> None:
    d = base()
    hcm(d)["common_http_protocol_options"] = {"max_requests_per_connection": 5}
    err = reject(d)
    assert err.path == f"{HCM_PATH}.common_http_protocol_options.max_requests_per_connection"


def test_durations_compile() -> None:
    d = base()
    hcm(d)["common_http_protocol_options"] = {
        "max_connection_duration": "2s",
        "max_stream_duration": "0.5s",
    }
    hcm(d)["drain_timeout"] = "1.5s"
    route = hcm(d)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]
    route["max_stream_duration"] = {"max_stream_duration": "0s"}
    (lst,) = compiled(d).listeners
    assert lst.hcm.max_connection_duration_s == 2.0
    assert lst.hcm.max_stream_duration_s == 0.5
    assert lst.hcm.drain_timeout_s == 1.5
    r = lst.hcm.route_config.virtual_hosts[0].routes[0]
    assert r.stream_duration_set and r.max_stream_duration_s == 0.0
    route["max_stream_duration"] = {}
    r = compiled(d).listeners[0].hcm.route_config.virtual_hosts[0].routes[0]
    assert r.stream_duration_set and r.max_stream_duration_s is None
    route["max_stream_duration"] = {"grpc_timeout_header_max": "1s", "grpc_timeout_header_offset": "0.2s"}  # fmt: skip
    r = compiled(d).listeners[0].hcm.route_config.virtual_hosts[0].routes[0]
    assert (r.grpc_timeout_header_max_s, r.grpc_timeout_header_offset_s) == (1.0, 0.2)
    assert r.max_stream_duration_s is None


def test_listener_socket_settings() -> None:
    d = base()
    listener(d).update(
        {
            "freebind": True,
            "tcp_backlog_size": 55,
            "traffic_direction": "OUTBOUND",
            "listener_filters_timeout": "1s",
            "continue_on_listener_filters_timeout": True,
            "connection_balance_config": {"exact_balance": {}},
            "socket_options": [
                {"level": 6, "name": 2, "int_value": 1200},
                {"level": 1, "name": 25, "buf_value": "ZXRoMA==", "state": "STATE_BOUND"},
                {"level": 1, "name": 9, "int_value": 1, "type": {"datagram": {}}},
            ],
        }
    )
    lst = compiled(d).listeners[0]
    assert lst.freebind and lst.tcp_backlog_size == 55
    assert lst.socket_options == (
        SocketOption(level=6, name=2, int_value=1200),
        SocketOption(level=1, name=25, buf_value=b"eth0", is_buf=True, state="STATE_BOUND"),
    )


def test_socket_option_needs_a_value() -> None:
    d = base()
    listener(d)["socket_options"] = [{"level": 6, "name": 2}]
    err = reject(d)
    assert err.path.startswith(f"{LISTENER}.socket_options[0]")


def test_extend_balance_is_refused() -> None:
    d = base()
    listener(d)["connection_balance_config"] = {
        "extend_balance": {
            "name": "x",
            "typed_config": {"@type": "type.googleapis.com/google.protobuf.Empty"},
        }
    }
    err = reject(d)
    assert err.path == f"{LISTENER}.connection_balance_config.extend_balance"


def test_cluster_keepalive_and_endpoint_fields() -> None:
    d = base()
    c = cluster(d)
    c["upstream_connection_options"] = {"tcp_keepalive": {"keepalive_time": 30}}
    c["metadata"] = {"filter_metadata": {"x": {"y": 1}}}
    lb = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    lb["metadata"] = {"filter_metadata": {"x": {"y": 2}}}
    lb["endpoint"]["hostname"] = "web-1"
    lb["endpoint"]["health_check_config"] = {"port_value": 9901, "hostname": "hc.example"}
    out = compiled(d).clusters[0]
    assert (out.tcp_keepalive, out.keepalive_time_s, out.keepalive_probes) == (True, 30, 0)
    e = out.endpoints[0]
    assert (e.endpoint_hostname, e.hc_port, e.hc_hostname) == ("web-1", 9901, "hc.example")


def test_health_check_config_address_is_refused() -> None:
    d = base()
    lb = cluster(d)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    lb["endpoint"]["health_check_config"] = {
        "address": {"socket_address": {"address": "127.0.0.2", "port_value": 1}}
    }
    err = reject(d)
    assert err.path.endswith("endpoint.health_check_config.address")


def test_keepalive_options_for_the_socket() -> None:
    from proxyd.worker.pool import keepalive_options

    d = base()
    cluster(d)["upstream_connection_options"] = {
        "tcp_keepalive": {"keepalive_probes": 4, "keepalive_interval": 7}
    }
    assert keepalive_options(compiled(d).clusters[0]) == [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 7),
    ]


def test_host_update_fields() -> None:
    d = base()
    c = cluster(d)
    c["ignore_health_on_host_removal"] = True
    c["close_connections_on_host_health_failure"] = True
    c["common_lb_config"] = {"update_merge_window": "0s"}
    compiled(d)
    c["common_lb_config"] = {"update_merge_window": "1s"}
    err = reject(d)
    assert err.path == "static_resources.clusters[0].common_lb_config.update_merge_window"
    assert "applied at once" in err.reason


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        (
            "track_cluster_stats",
            {"per_endpoint_stats": True},
            "track_cluster_stats.per_endpoint_stats",
        ),
    ],
)
def test_cluster_fields_left_out_are_refused_by_name(field: str, value: Any, path: str) -> None:
    d = base()
    cluster(d)[field] = value
    err = reject(d)
    assert err.path == f"static_resources.clusters[0].{path}"
    assert "not supported by proxyd" in err.reason


def test_track_cluster_stats_rides_in_the_epoch() -> None:
    d = base()
    cluster(d)["track_cluster_stats"] = {"timeout_budgets": True}
    c = compiled(d).clusters[0]
    assert (c.track_timeout_budgets, c.track_request_response_sizes) == (True, False)
    assert not compiled(d).clusters[1].track_timeout_budgets
    cluster(d)["track_cluster_stats"] = {"request_response_sizes": True}
    c = compiled(d).clusters[0]
    assert (c.track_timeout_budgets, c.track_request_response_sizes) == (False, True)


def test_node_rides_in_the_epoch() -> None:
    d = base()
    d["node"] = {"id": "n-1", "cluster": "svc"}
    epoch = compiled(d)
    assert (epoch.node_id, epoch.node_cluster) == ("n-1", "svc")


def test_internal_address_config() -> None:
    d = base()
    hcm(d)["internal_address_config"] = {
        "cidr_ranges": [{"address_prefix": "10.1.2.3", "prefix_len": 8}]
    }
    t = compiled(d).listeners[0].hcm.transforms
    assert t is not None and t.internal_address_config and t.internal_cidrs == ("10.0.0.0/8",)
    hcm(d)["internal_address_config"] = {
        "cidr_ranges": [{"address_prefix": "ten", "prefix_len": 8}]
    }
    err = reject(d)
    assert err.path.endswith("internal_address_config.cidr_ranges[0]")


def test_internal_addresses_matcher() -> None:
    from proxyd.worker.request_transforms import InternalAddresses

    defaults = InternalAddresses((), unix_sockets=False)
    assert defaults("10.9.9.9") and defaults("::1") and defaults("fd00::1")
    assert not defaults("8.8.8.8") and not defaults("/run/x.sock")
    assert InternalAddresses(("8.8.8.0/24",), unix_sockets=True)("/run/x.sock")


def test_delayed_close_timeout_zero_only() -> None:
    d = base()
    hcm(d)["delayed_close_timeout"] = "0s"
    compiled(d)
    hcm(d)["delayed_close_timeout"] = "1s"
    err = reject(d)
    assert err.path == f"{HCM_PATH}.delayed_close_timeout"
    assert "other than 0s" in err.reason


def test_max_headers_count() -> None:
    d = base()
    hcm(d)["common_http_protocol_options"] = {"max_headers_count": 7}
    assert compiled(d).listeners[0].hcm.max_headers_count == 7
