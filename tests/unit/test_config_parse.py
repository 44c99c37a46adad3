"""Envoy's parsing rules in proxyd's loader, by what the compiled config holds.

tests/compat/test_config_parse_compat.py checks the verdicts against real Envoy; these
check the meaning: that a lenient form or a deprecated field compiles to what its
canonical form or its replacement compiles to, and that errors name the field as the
file has it.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import structlog
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from proxyd.config import compile_bootstrap
from proxyd.config.loader import LoadedConfig
from proxyd.config.source import parse_config_text
from proxyd.config.translate import Translation
from proxyd.epoch import StringMatch
from proxyd.errors import ConfigError
from proxyd.master.xds.resources import CLUSTER, Context, compile_resource

HCM_T = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"  # noqa: E501
ROUTER_T = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
LOG_T = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"
UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HCM = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
CLUSTER0 = "static_resources.clusters[0]"

BASE = f"""
static_resources:
  listeners:
  - name: front
    address: {{socket_address: {{address: 127.0.0.1, port_value: 10000}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {HCM_T}
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: /}}
                route: {{cluster: web}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": {ROUTER_T}}}
  clusters:
  - name: web
    type: STATIC
    load_assignment:
      cluster_name: web
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 8080}}}}}}
"""


def base() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(BASE)
    return copy.deepcopy(data)


def hcm(d: dict[str, Any]) -> dict[str, Any]:
    return d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def cluster(d: dict[str, Any]) -> dict[str, Any]:
    return d["static_resources"]["clusters"][0]


def route(d: dict[str, Any]) -> dict[str, Any]:
    return hcm(d)["route_config"]["virtual_hosts"][0]["routes"][0]


def load(d: dict[str, Any]) -> LoadedConfig:
    return compile_bootstrap(d, "conf.yaml")


def reject(d: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(d)
    return info.value


# -- YAML ------------------------------------------------------------------------------


def test_ignore_keys_are_dropped_and_their_anchors_usable() -> None:
    text = "!ignore defs:\n  port: &port 8080\nport: *port\n!ignore defs2: [1]\n"
    assert parse_config_text(text, "c.yaml") == {"port": 8080}


def test_ignore_on_a_value_and_other_tags_read_as_untagged() -> None:
    text = "a: !ignore {b: 1}\nc: !custom 12\nd: !custom [x]\ne: !!str 80\n"
    assert parse_config_text(text, "c.yaml") == {"a": {"b": 1}, "c": 12, "d": ["x"], "e": "80"}


def test_merge_key_is_an_ordinary_key() -> None:
    assert parse_config_text("a:\n  <<: {b: 1}\n", "c.yaml") == {"a": {"<<": {"b": 1}}}
    d = base()
    cluster(d)["<<"] = {"type": "STATIC"}
    assert reject(d).path == f"{CLUSTER0}.<<"


def test_duplicate_keys_take_the_last_value_with_a_warning() -> None:
    with structlog.testing.capture_logs() as logs:
        assert parse_config_text("a: 1\nb: {c: 1}\na: 2\n", "c.yaml") == {"a": 2, "b": {"c": 1}}
    assert [(e["key"], e["line"], e["first_line"]) for e in logs] == [("a", 3, 1)]


@pytest.mark.parametrize(
    ("text", "value"),
    [("yes", True), ("Y", True), ("tRuE", True), ("1", True), ("N", False), ("0", False)],
)
def test_bools_in_quotes(text: str, value: bool) -> None:
    d = base()
    hcm(d)["use_remote_address"] = text
    assert load(d).epoch_template.listeners[0].hcm.use_remote_address is value


def test_quoted_on_is_not_a_bool() -> None:
    d = base()
    hcm(d)["use_remote_address"] = "on"
    err = reject(d)
    assert (err.path, "got the string 'on'" in err.reason) == (f"{HCM}.use_remote_address", True)


# -- Envoy's lenient JSON forms --------------------------------------------------------


@pytest.mark.parametrize("text", ["round_robin", "Round_Robin", "ROUND_ROBIN", 0])
def test_enum_in_any_case(text: Any) -> None:
    d = base()
    cluster(d)["lb_policy"] = text
    assert load(d).epoch_template.clusters[0].lb_policy == "ROUND_ROBIN"


def test_unknown_enum_name_names_its_path() -> None:
    d = base()
    cluster(d)["lb_policy"] = "round-robin"
    assert reject(d).path == f"{CLUSTER0}.lb_policy"


def test_single_values_for_lists() -> None:
    d = base()
    vhost = hcm(d)["route_config"]["virtual_hosts"][0]
    vhost["domains"] = "Example.com"
    vhost["routes"] = vhost["routes"][0]
    hcm(d)["route_config"]["virtual_hosts"] = vhost
    hcm(d)["http_filters"] = hcm(d)["http_filters"][0]
    vh = load(d).epoch_template.listeners[0].hcm.route_config.virtual_hosts[0]
    assert vh.domains == ("example.com",)
    assert len(vh.routes) == 1


def test_duration_and_wrapper_objects() -> None:
    d = base()
    cluster(d)["connect_timeout"] = {"seconds": 2, "nanos": 500_000_000}
    route(d)["route"]["timeout"] = {"seconds": "3"}
    hcm(d)["max_request_headers_kb"] = {"value": 80}
    hcm(d)["use_remote_address"] = "true"
    loaded = load(d)
    assert loaded.epoch_template.clusters[0].connect_timeout_s == 2.5
    listener_hcm = loaded.epoch_template.listeners[0].hcm
    assert listener_hcm.route_config.virtual_hosts[0].routes[0].timeout_s == 3.0
    assert listener_hcm.max_request_headers_kb == 80
    assert listener_hcm.use_remote_address is True


@pytest.mark.parametrize(
    ("value", "path", "reason"),
    [
        ({"seconds": 1, "minutes": 2}, "connect_timeout.minutes", "unknown field 'minutes'"),
        ({"seconds": 1, "nanos": 1_000_000_000}, "connect_timeout", "out-of-range"),
        ({"seconds": 1, "nanos": -1}, "connect_timeout", "out-of-range"),
        ({"seconds": 1.5}, "connect_timeout.seconds", "expected an integer"),
        ("5", "connect_timeout", 'end with letter "s"'),
    ],
)
def test_bad_durations(value: Any, path: str, reason: str) -> None:
    d = base()
    cluster(d)["connect_timeout"] = value
    err = reject(d)
    assert (err.path, reason in err.reason) == (f"{CLUSTER0}.{path}", True), err


def test_object_for_a_string_names_the_kind() -> None:
    d = base()
    cluster(d)["name"] = {"a": 1}
    err = reject(d)
    assert (err.path, err.reason) == (f"{CLUSTER0}.name", "expected a string, got an object")


def test_v2_type_url_is_unknown() -> None:
    d = base()
    hcm(d)["@type"] = HCM_T.replace("http_connection_manager.v3", "http_connection_manager.v2")
    hcm(d)["@type"] = hcm(d)["@type"].replace("extensions.filters", "config.filter")
    err = reject(d)
    assert err.path == f"{HCM}.@type"
    assert "v2 API type" in err.reason


# -- TypedStruct -----------------------------------------------------------------------


@pytest.mark.parametrize("wrapper", ["udpa.type.v1.TypedStruct", "xds.type.v3.TypedStruct"])
def test_typed_struct_unwraps_to_the_named_type(wrapper: str) -> None:
    d = base()
    hcm(d)["access_log"] = [
        {
            "name": "envoy.access_loggers.file",
            "typed_config": {
                "@type": f"type.googleapis.com/{wrapper}",
                "type_url": LOG_T,
                "value": {"path": "/dev/null", "format": "%PROTOCOL%\n"},
            },
        }
    ]
    logs = load(d).epoch_template.listeners[0].hcm.access_logs
    assert [(a.path, a.format) for a in logs] == [("/dev/null", "%PROTOCOL%\n")]


def test_errors_inside_a_typed_struct_name_its_value() -> None:
    d = base()
    wrapped = {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct", "type_url": LOG_T}
    hcm(d)["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": wrapped}]
    wrapped["value"] = {"pth": "/dev/null"}
    assert reject(d).path == f"{HCM}.access_log[0].typed_config.value.pth"
    # Refused later (by the allow-list), after a deprecated field moved: the same path.
    wrapped["value"] = {"path": "/dev/null", "json_format": {"a": "%CLUSTER_METADATA(x)%"}}
    err = reject(d)
    assert err.path == f"{HCM}.access_log[0].typed_config.value.json_format"
    assert "%CLUSTER_METADATA% is not supported by proxyd" in err.reason
    wrapped["type_url"] = "type.googleapis.com/example.Nothing"
    assert reject(d).path == f"{HCM}.access_log[0].typed_config.type_url"


# -- deprecated fields -----------------------------------------------------------------


def test_cluster_http_options_mean_http_protocol_options() -> None:
    d = base()
    cluster(d)["common_http_protocol_options"] = {"idle_timeout": "30s"}
    cluster(d)["http_protocol_options"] = {}
    cluster(d)["max_requests_per_connection"] = 7
    loaded = load(d)
    c = loaded.epoch_template.clusters[0]
    assert (c.idle_timeout_s, c.max_requests_per_connection, c.http2) == (30.0, 7, False)
    assert any("common_http_protocol_options" in m for m in loaded.deprecations)
    assert loaded.bootstrap_json["static_resources"]["clusters"][0]["http_protocol_options"] == {}


def test_cluster_header_key_format() -> None:
    d = base()
    cluster(d)["http_protocol_options"] = {"header_key_format": {"proper_case_words": {}}}
    assert load(d).epoch_template.clusters[0].header_key_format == "proper_case_words"
    del cluster(d)["http_protocol_options"]
    preserve = {
        "name": "preserve_case",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.http.header_formatters."
            "preserve_case.v3.PreserveCaseFormatterConfig",
            "forward_reason_phrase": True,
        },
    }
    typed = {
        "@type": f"type.googleapis.com/{UPSTREAM_HTTP}",
        "explicit_http_config": {
            "http_protocol_options": {"header_key_format": {"stateful_formatter": preserve}}
        },
    }
    cluster(d)["typed_extension_protocol_options"] = {UPSTREAM_HTTP: typed}
    assert load(d).epoch_template.clusters[0].header_key_format == "preserve_case"
    preserve["typed_config"]["formatter_type_on_envoy_headers"] = "PROPER_CASE"
    assert reject(d).path.endswith(
        "stateful_formatter.typed_config.formatter_type_on_envoy_headers"
    )
    typed["explicit_http_config"] = {"http_protocol_options": {"header_key_format": {}}}
    assert "one of its fields is required" in reject(d).reason  # as Envoy's PGV rule
    typed["explicit_http_config"] = {"http_protocol_options": {}}
    assert load(d).epoch_template.clusters[0].header_key_format == ""


def test_cluster_http2_options_make_an_http2_cluster() -> None:
    d = base()
    cluster(d)["http2_protocol_options"] = {}
    d["node"] = {"id": "n", "cluster": "c"}
    d["dynamic_resources"] = {
        "ads_config": {"api_type": "GRPC", "grpc_services": {"envoy_grpc": {"cluster_name": "web"}}}
    }
    hcm(d)["route_config"]["virtual_hosts"][0]["routes"] = []
    assert load(d).epoch_template.clusters[0].http2 is True


def test_legacy_http_options_are_ignored_beside_typed_ones() -> None:
    d = base()
    cluster(d)["http2_protocol_options"] = {}
    cluster(d)["typed_extension_protocol_options"] = {
        UPSTREAM_HTTP: {
            "@type": f"type.googleapis.com/{UPSTREAM_HTTP}",
            "explicit_http_config": {"http_protocol_options": {}},
        }
    }
    with structlog.testing.capture_logs() as logs:
        assert load(d).epoch_template.clusters[0].http2 is False
    assert logs[0]["field"] == f"{CLUSTER0}.http2_protocol_options"
    assert "typed_extension_protocol_options" in logs[0]["ignored_because"]


def test_unsupported_replacement_is_refused_by_the_deprecated_name() -> None:
    d = base()
    cluster(d)["common_http_protocol_options"] = {"max_headers_count": 10}
    err = reject(d)
    assert (err.path, err.reason) == (
        f"{CLUSTER0}.common_http_protocol_options.max_headers_count",
        "field not supported by proxyd",
    )
    d = base()
    # watchdog is watchdogs' two watchdogs; their actions (extensions) are refused.
    d["watchdog"] = {"miss_timeout": "1s", "actions": [{"event": "KILL"}]}
    assert reject(d).path == "watchdog.actions"
    d["watchdog"] = {"miss_timeout": "1s"}
    d["watchdogs"] = {}
    assert "Only one of watchdog or watchdogs" in reject(d).reason


def test_cluster_dns_fields_mean_a_cares_resolver() -> None:
    d = base()
    cluster(d)["type"] = "STRICT_DNS"
    cluster(d)["use_tcp_for_dns_lookups"] = True
    cluster(d)["dns_resolvers"] = [{"socket_address": {"address": "127.0.0.53", "port_value": 53}}]
    dns = load(d).epoch_template.clusters[0].dns
    assert dns is not None
    assert (dns.use_tcp, dns.resolvers) == (True, (("127.0.0.53", 53),))
    cluster(d)["dns_resolvers"][0]["socket_address"]["address"] = "dns.example"
    assert reject(d).path == f"{CLUSTER0}.dns_resolvers[0].socket_address.address"


def test_admin_access_log_path_is_an_access_log() -> None:
    d = base()
    d["admin"] = {
        "access_log_path": "/tmp/admin.log",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}},
    }
    admin = load(d).admin
    assert admin is not None
    assert admin.access_log_path == "/tmp/admin.log"


def test_reuse_port_means_enable_reuse_port() -> None:
    d = base()
    d["static_resources"]["listeners"][0]["reuse_port"] = True
    load(d)
    d["static_resources"]["listeners"][0]["enable_reuse_port"] = False
    err = reject(d)
    assert err.path == "static_resources.listeners[0].enable_reuse_port"


def test_config_source_path_is_a_path_config_source() -> None:
    d = base()
    d["node"] = {"id": "n", "cluster": "c"}
    d["dynamic_resources"] = {"cds_config": {"path": "/etc/proxyd/cds.yaml"}}
    cds = load(d).dynamic.cds
    assert cds is not None
    assert (cds.kind, cds.path) == ("path", "/etc/proxyd/cds.yaml")


def test_file_log_format_and_text_format() -> None:
    d = base()
    log = {"@type": LOG_T, "path": "/dev/null", "format": "%PROTOCOL%\n"}
    hcm(d)["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": log}]
    assert load(d).epoch_template.listeners[0].hcm.access_logs[0].format == "%PROTOCOL%\n"
    del log["format"]
    log["log_format"] = {"text_format": "%BYTES_SENT%\n"}
    assert load(d).epoch_template.listeners[0].hcm.access_logs[0].format == "%BYTES_SENT%\n"
    log["log_format"] = {"text_format": "%NOT_AN_OPERATOR%"}
    assert reject(d).path == f"{HCM}.access_log[0].typed_config.log_format.text_format"


def test_header_matchers_mean_string_match() -> None:
    d = base()
    route(d)["match"]["headers"] = [
        {"name": "x-a", "exact_match": "one"},
        {"name": "x-b", "prefix_match": "tw"},
        {"name": "x-c", "suffix_match": "ee"},
        {"name": "x-d", "contains_match": "ou"},
        {"name": "x-e", "safe_regex_match": {"google_re2": {}, "regex": "f.*"}},
    ]
    headers = load(d).epoch_template.listeners[0].hcm.route_config.virtual_hosts[0].routes[0]
    assert [h.match for h in headers.match.headers] == [
        StringMatch("exact", "one"),
        StringMatch("prefix", "tw"),
        StringMatch("suffix", "ee"),
        StringMatch("contains", "ou"),
        StringMatch("safe_regex", "f.*"),
    ]
    route(d)["match"]["headers"][4]["safe_regex_match"]["regex"] = "(?=x)"
    assert (
        reject(d).path
        == f"{HCM}.route_config.virtual_hosts[0].routes[0].match.headers[4].safe_regex_match.regex"
    )  # noqa: E501
    route(d)["match"]["headers"][4]["safe_regex_match"] = {
        "google_re2": {"max_program_size": 100},
        "regex": "f",
    }
    assert reject(d).path.endswith("headers[4].safe_regex_match.google_re2")


def test_header_value_append_means_append_action() -> None:
    d = base()
    cluster(d)["health_checks"] = [
        {
            "timeout": "1s",
            "interval": "5s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "http_health_check": {
                "path": "/healthz",
                "request_headers_to_add": [
                    {"header": {"key": "x-a", "value": "1"}, "append": False},
                    {"header": {"key": "x-b", "value": "2"}, "append": True},
                ],
            },
        }
    ]
    check = load(d).epoch_template.clusters[0].health_checks[0]
    assert [h.action for h in check.http_headers] == [
        "OVERWRITE_IF_EXISTS_OR_ADD",
        "APPEND_IF_EXISTS_OR_ADD",
    ]
    add = cluster(d)["health_checks"][0]["http_health_check"]["request_headers_to_add"][0]
    add["append_action"] = "ADD_IF_ABSENT"
    err = reject(d)
    assert err.path.endswith("request_headers_to_add[0]")
    assert "Both append and append_action" in err.reason


def test_deprecated_grpc_timeouts_keep_their_meaning_unless_max_stream_duration() -> None:
    d = base()
    route(d)["route"]["max_grpc_timeout"] = "10s"
    route(d)["route"]["grpc_timeout_offset"] = "0.1s"
    r = compile_bootstrap(d, "f.yaml").epoch_template.listeners[0].hcm.route_config
    action = r.virtual_hosts[0].routes[0]
    assert (action.max_grpc_timeout_s, action.grpc_timeout_offset_s) == (10.0, 0.1)
    assert action.grpc_timeout_header_max_s is None and not action.stream_duration_set
    route(d)["route"]["max_stream_duration"] = {"grpc_timeout_header_max": "2s"}
    r = compile_bootstrap(d, "f.yaml").epoch_template.listeners[0].hcm.route_config
    action = r.virtual_hosts[0].routes[0]
    assert action.max_grpc_timeout_s is None  # unused by Envoy then
    assert action.grpc_timeout_header_max_s == 2.0


def test_deprecations_are_logged_with_field_and_replacement() -> None:
    d = base()
    cluster(d)["respect_dns_ttl"] = True
    with structlog.testing.capture_logs() as logs:
        load(d)
    assert logs == [
        {
            "event": "deprecated field",
            "log_level": "warning",
            "component": "proxyd.config",
            "file": "conf.yaml",
            "field": f"{CLUSTER0}.respect_dns_ttl",
            "option": "envoy.config.cluster.v3.Cluster.respect_dns_ttl",
            "replacement": "cluster_type envoy.cluster.dns "
            "(envoy.extensions.clusters.dns.v3.DnsCluster.respect_dns_ttl)",
        }
    ]


def test_file_path_undoes_nested_moves() -> None:
    t = Translation("f")
    t.moved("a.typed_config", "a.typed_config.value", whole=False)
    t.moved("a.typed_config.log_format", "a.typed_config.json_format")
    t.moved("a.typed_config.log_format.json_format", "a.typed_config.json_format")
    assert t.file_path("a.typed_config.log_format.json_format.x") == (
        "a.typed_config.value.json_format.x"
    )
    assert t.file_path("a.typed_config") == "a.typed_config"
    assert t.file_path("a.typed_configs") == "a.typed_configs"
    assert t.file_path("b") == "b"


# -- xDS resources ---------------------------------------------------------------------


def test_xds_cluster_with_deprecated_fields() -> None:
    message = cluster_pb2.Cluster()
    json_format.ParseDict(
        {
            "name": "grpc",
            "type": "STATIC",
            "http2_protocol_options": {},
            "common_http_protocol_options": {"max_headers_count": 10},
        },
        message,
    )
    ctx = Context(route_targets=frozenset(), check_source=lambda *a: None)
    with pytest.raises(ConfigError) as info:
        compile_resource(CLUSTER, message, b"", "1", "resources[0]", "CDS update", ctx)
    assert info.value.path == "resources[0].common_http_protocol_options.max_headers_count"
    message.ClearField("common_http_protocol_options")
    resource = compile_resource(CLUSTER, message, b"", "1", "resources[0]", "CDS update", ctx)
    assert resource.value.http2 is True
    assert message.HasField("http2_protocol_options")  # /config_dump shows it as delivered


def test_a_change_alone_in_a_typed_config_is_kept() -> None:
    # Only google_re2 {} (dropped, no field moved) inside the HCM's Any.
    d = base()
    route(d)["match"] = {"safe_regex": {"google_re2": {}, "regex": "/.*"}}
    load(d)
    d = base()
    log = {"@type": LOG_T, "path": "/dev/null", "format": ""}  # empty: the default format
    hcm(d)["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": log}]
    assert load(d).epoch_template.listeners[0].hcm.access_logs[0].format == ""


def test_a_deprecated_field_fatal_by_default_is_refused() -> None:
    d = base()
    action = {
        "dynamic_metadata": {
            "descriptor_key": "k",
            "metadata_key": {"key": "a", "path": [{"key": "b"}]},
        }
    }  # noqa: E501
    hcm(d)["route_config"]["virtual_hosts"][0]["rate_limits"] = [{"actions": [action]}]
    err = reject(d)
    assert (
        err.path
        == f"{HCM}.route_config.virtual_hosts[0].rate_limits[0].actions[0].dynamic_metadata"
    )  # noqa: E501
    assert "fatal by default" in err.reason


def test_null_items_are_default_values() -> None:
    d = base()
    hcm(d)["route_config"]["virtual_hosts"][0]["domains"] = ["Example.com", None]
    vh = load(d).epoch_template.listeners[0].hcm.route_config.virtual_hosts[0]
    assert vh.domains == ("example.com", "")
    hcm(d)["http_filters"] = [None]
    assert reject(d).path == f"{HCM}.http_filters[0].name"  # an HttpFilter with no name


def test_undecodable_payload_in_an_xds_resource() -> None:
    message = cluster_pb2.Cluster(name="grpc", type=cluster_pb2.Cluster.STATIC)
    options = message.typed_extension_protocol_options[UPSTREAM_HTTP]
    options.type_url = f"type.googleapis.com/{UPSTREAM_HTTP}"
    options.value = b"\xff\xff"
    ctx = Context(route_targets=frozenset(), check_source=lambda *a: None)
    with pytest.raises(ConfigError, match="cannot decode") as info:
        compile_resource(CLUSTER, message, b"", "1", "resources[0]", "CDS update", ctx)
    assert info.value.path == f"resources[0].typed_extension_protocol_options[{UPSTREAM_HTTP!r}]"


def test_typed_json_format_is_the_json_log_format() -> None:
    d = base()
    log = {"@type": LOG_T, "path": "/dev/null", "typed_json_format": {"code": "%RESPONSE_CODE%"}}
    hcm(d)["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": log}]
    al = load(d).epoch_template.listeners[0].hcm.access_logs[0]
    assert json.loads(al.json_format) == {"code": "%RESPONSE_CODE%"}
    log["typed_json_format"] = {"code": "%CLUSTER_METADATA(x)%"}
    err = reject(d)
    assert err.path == f"{HCM}.access_log[0].typed_config.typed_json_format"
    assert "CLUSTER_METADATA" in err.reason


def test_errors_in_a_single_value_name_it_as_the_file_has_it() -> None:
    d = base()
    vhosts = hcm(d)["route_config"]["virtual_hosts"]
    hcm(d)["route_config"]["virtual_hosts"] = vhosts[0]
    vhosts[0]["domains"] = {"host": "example.com"}  # parse error, in a single value
    err = reject(d)
    assert (err.path, err.reason) == (
        f"{HCM}.route_config.virtual_hosts.domains",
        "expected a string, got an object",
    )
    vhosts[0]["domains"] = "*"
    vhosts[0]["routes"] = {"match": {"prefix": "/"}, "route": {"cluster": "nowhere"}}
    assert reject(d).path == f"{HCM}.route_config.virtual_hosts.routes.route.cluster"
    vhosts[0]["routes"] = {"match": {"prefix": "/", "headers": {"name": "x", "exact_match": "y"}}}
    vhosts[0]["routes"]["route"] = {"cluster": "web", "internal_redirect_policy": {}}
    where = f"{HCM}.route_config.virtual_hosts.routes.route"
    assert reject(d).path == f"{where}.internal_redirect_policy"
    wrapped = {"@type": "type.googleapis.com/udpa.type.v1.TypedStruct", "type_url": HCM_T}
    wrapped["value"] = {"stat_prefix": "s", "http_filters": {"name": "x"}, "route_config": {}}
    hcm(d).clear()
    hcm(d).update(wrapped)
    assert reject(d).path == f"{HCM}.value.http_filters"
