"""What proxyd supports of the Envoy v3 bootstrap, and the walk that enforces it.

:data:`BOOTSTRAP` is the coverage tree: for each message, the fields proxyd implements,
each mapped to the tree of its own message (or :data:`LEAF` for a scalar, enum,
duration or wrapper). A typed ``Any`` maps its allowed payload types to their trees.
:func:`check_bootstrap` walks the parsed config with ``ListFields`` (so only fields the
user set count) and rejects the first field outside the tree by its path, "... field
not supported by proxyd". It checks Envoy's proto constraints (``proxyd.config.rules``)
on every message it visits, so the compiler may rely on both.

docs/configuration.md describes the same tree for operators; keep them together.
"""

from __future__ import annotations

from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from proxyd.config import filter_matcher, http_filters, network_rbac, overload, rules
from proxyd.config.lb_policy import LB_POLICY_SPEC, SLOW_START_SPEC
from proxyd.config.proto import is_v2_type, join, unknown_type_reason
from proxyd.config.proto import unpack as unpack  # re-exported: the compilers use it
from proxyd.config.route_spec import CUSTOM_TAGS, METADATA, ROUTE_CONFIG, matcher_spec
from proxyd.config.spec import HEADER_MATCHER, LEAF, STRING_MATCHER, AnyOf, Spec
from proxyd.errors import ConfigError

HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY_TYPE = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER_TYPE = "envoy.extensions.filters.http.router.v3.Router"
ZIPKIN_TYPE = "envoy.config.trace.v3.ZipkinConfig"
OTEL_TYPE = "envoy.config.trace.v3.OpenTelemetryConfig"
FILE_LOG_TYPE = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
STDOUT_LOG_TYPE = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
STDERR_LOG_TYPE = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog"
OTEL_LOG_TYPE = "envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig"
# proxyd.config.access_logs (OtelLog), proxyd.worker.otel_access_log: string values only.
_OTEL_KV: Spec = {"values": {"key": LEAF, "value": {"string_value": LEAF}}}
_GRPC_LOG_COMMON_CONFIG: dict[str, Spec] = {
    "log_name": LEAF,
    "grpc_service": {"envoy_grpc": {"cluster_name": LEAF}, "timeout": LEAF},
    "transport_api_version": LEAF,
    "buffer_flush_interval": LEAF,
    "buffer_size_bytes": LEAF,
}
OTEL_ACCESS_LOG: Spec = {
    "common_config": _GRPC_LOG_COMMON_CONFIG,
    "disable_builtin_labels": LEAF,
    "resource_attributes": _OTEL_KV,
    "body": {"string_value": LEAF},
    "attributes": _OTEL_KV,
}
# proxyd.config.access_logs (GrpcAccessLog), proxyd.worker.grpc_access_log.
HTTP_GRPC_LOG_TYPE = "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
TCP_GRPC_LOG_TYPE = "envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig"
_GRPC_LOG_COMMON: dict[str, Spec] = {
    "common_config": {**_GRPC_LOG_COMMON_CONFIG, "custom_tags": CUSTOM_TAGS}
}
HTTP_GRPC_ACCESS_LOG: Spec = {
    **_GRPC_LOG_COMMON,
    "additional_request_headers_to_log": LEAF,
    "additional_response_headers_to_log": LEAF,
}
DOWNSTREAM_TLS_TYPE = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
RAW_BUFFER_TYPE = "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
UPSTREAM_TLS_TYPE = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
TLS_INSPECTOR_TYPE = "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
UPSTREAM_HTTP_TYPE = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
PRESERVE_CASE_TYPE = (
    "envoy.extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig"
)

SOCKET_ADDRESS: Spec = {"address": LEAF, "port_value": LEAF}
ADDRESS: Spec = {"socket_address": SOCKET_ADDRESS}
# Where proxyd also takes a Unix socket (listeners, endpoints; proxyd.pipes).
ADDRESS_OR_PIPE: Spec = {"socket_address": SOCKET_ADDRESS, "pipe": {"path": LEAF, "mode": LEAF}}

ADMIN: Spec = {
    "address": ADDRESS,
    "access_log_path": LEAF,
    "access_log": {
        "name": LEAF,
        "typed_config": AnyOf(
            "access logger", {FILE_LOG_TYPE: {"path": LEAF}, STDOUT_LOG_TYPE: {}}
        ),
    },
    # Accepted: proxyd has no /cpuprofiler or /heapprofiler to write there.
    "profile_path": LEAF,
    "ignore_global_conn_limit": LEAF,
}

# core.v3.ConfigSource: where an xDS resource type comes from (proxyd.config.dynamic).
API_CONFIG_SOURCE: Spec = {
    "api_type": LEAF,
    "transport_api_version": LEAF,
    "cluster_names": LEAF,
    "grpc_services": {"envoy_grpc": {"cluster_name": LEAF}},
    "refresh_delay": LEAF,
    "request_timeout": LEAF,
    "set_node_on_first_message_only": LEAF,
}

CONFIG_SOURCE: Spec = {
    "path_config_source": {"path": LEAF},
    "api_config_source": API_CONFIG_SOURCE,
    "ads": {},
    "resource_api_version": LEAF,
    "initial_fetch_timeout": LEAF,
}

# core.v3.SubstitutionFormatString (proxyd.config.access_logs): no formatter extension
# is implemented, so every ``formatters`` entry is refused by its name and type.
LOG_FORMAT: Spec = {
    "text_format_source": {"inline_string": LEAF, "inline_bytes": LEAF, "filename": LEAF},
    "json_format": LEAF,
    "omit_empty_values": LEAF,
    "content_type": LEAF,
    "formatters": {"name": LEAF, "typed_config": AnyOf("access log formatter", {})},
}

FILE_ACCESS_LOG: Spec = {
    "path": LEAF,
    "format": LEAF,
    "log_format": LOG_FORMAT,
}

_COMPARISON: Spec = {
    "comparison": {"op": LEAF, "value": {"default_value": LEAF, "runtime_key": LEAF}}
}
# config.accesslog.v3.AccessLogFilter (proxyd.protocol.access_log_filters evaluates it);
# extension_filter and metadata_filter are refused by name.
ACCESS_LOG_FILTER: dict[str, Spec] = {
    "status_code_filter": _COMPARISON,
    "duration_filter": _COMPARISON,
    "not_health_check_filter": {},
    "traceable_filter": {},
    "runtime_filter": {
        "runtime_key": LEAF,
        "percent_sampled": {"numerator": LEAF, "denominator": LEAF},
        "use_independent_randomness": LEAF,
    },
    "header_filter": {"header": HEADER_MATCHER},
    "response_flag_filter": {"flags": LEAF},
    "grpc_status_filter": {"statuses": LEAF, "exclude": LEAF},
    "log_type_filter": {"types": LEAF, "exclude": LEAF},
}
ACCESS_LOG_FILTER["and_filter"] = {"filters": ACCESS_LOG_FILTER}
ACCESS_LOG_FILTER["or_filter"] = {"filters": ACCESS_LOG_FILTER}

ACCESS_LOG: Spec = {
    "name": LEAF,
    "filter": ACCESS_LOG_FILTER,
    "typed_config": AnyOf(
        "access logger",
        {
            FILE_LOG_TYPE: FILE_ACCESS_LOG,
            STDOUT_LOG_TYPE: {"log_format": LOG_FORMAT},
            STDERR_LOG_TYPE: {"log_format": LOG_FORMAT},
            OTEL_LOG_TYPE: OTEL_ACCESS_LOG,
            HTTP_GRPC_LOG_TYPE: HTTP_GRPC_ACCESS_LOG,
            TCP_GRPC_LOG_TYPE: _GRPC_LOG_COMMON,
        },
    ),
}

# The filters a matcher may wrap or a composite filter may run (not the router).
_FILTERS = AnyOf("HTTP filter", http_filters.filter_types())

HCM: Spec = {
    "stat_prefix": LEAF,
    "codec_type": LEAF,
    # Downstream HTTP/2 (proxyd.config.listeners.compile_http2_options); the other
    # Http2ProtocolOptions fields are refused by name.
    "http2_protocol_options": {
        "max_concurrent_streams": LEAF,
        "initial_stream_window_size": LEAF,
        "initial_connection_window_size": LEAF,
        "allow_connect": LEAF,
        # Envoy's flood limits (proxyd.protocol.h2_flood).
        "max_outbound_frames": LEAF,
        "max_outbound_control_frames": LEAF,
        "max_consecutive_inbound_frames_with_empty_payload": LEAF,
        "max_inbound_priority_frames_per_stream": LEAF,
        "max_inbound_window_update_frames_per_data_frame_sent": LEAF,
    },
    "route_config": ROUTE_CONFIG,
    "rds": {"config_source": CONFIG_SOURCE, "route_config_name": LEAF},
    "http_filters": {
        "name": LEAF,
        "typed_config": AnyOf(
            "HTTP filter",
            {
                # start_child_span: refused when true (proxyd.config.tracing); dynamic_stats
                # true is what proxyd does (false is refused by http_filters).
                ROUTER_TYPE: {"start_child_span": LEAF, "dynamic_stats": LEAF},
                **http_filters.filter_types(),
                # proxyd.config.filter_matcher: a filter with a matcher around it.
                filter_matcher.TYPE: {
                    "extension_config": {"name": LEAF, "typed_config": _FILTERS},
                    "xds_matcher": matcher_spec(
                        4,
                        AnyOf(
                            "filter matcher action",
                            {
                                filter_matcher.SKIP_FILTER_TYPE: {},
                                filter_matcher.EXECUTE_FILTER_TYPE: {
                                    "typed_config": {"name": LEAF, "typed_config": _FILTERS}
                                },
                            },
                        ),
                    ),
                },
            },
        ),
        "disabled": LEAF,
    },
    "access_log": ACCESS_LOG,
    # proxyd.config.tracing (Zipkin), proxyd.worker.tracing.
    "tracing": {
        "provider": {
            "name": LEAF,
            "typed_config": AnyOf(
                "tracer",
                {
                    ZIPKIN_TYPE: {
                        "collector_cluster": LEAF,
                        "collector_endpoint": LEAF,
                        "collector_endpoint_version": LEAF,
                        "trace_id_128bit": LEAF,
                        "shared_span_context": LEAF,
                        "collector_hostname": LEAF,
                        "split_spans_for_request": LEAF,
                        "trace_context_option": LEAF,
                    },
                    # OTLP/HTTP only (proxyd.config.tracing refuses grpc_service).
                    OTEL_TYPE: {
                        "http_service": {
                            "http_uri": {"uri": LEAF, "cluster": LEAF, "timeout": LEAF},
                            "request_headers_to_add": {
                                "header": {"key": LEAF, "value": LEAF},
                            },
                        },
                        "grpc_service": {
                            "envoy_grpc": {"cluster_name": LEAF, "authority": LEAF},
                            "timeout": LEAF,
                            "initial_metadata": {"key": LEAF, "value": LEAF},
                        },
                        "service_name": LEAF,
                    },
                },
            ),
        },
        "random_sampling": {"value": LEAF},
        "client_sampling": {"value": LEAF},
        "overall_sampling": {"value": LEAF},
        "verbose": LEAF,
        "max_path_tag_length": LEAF,
        "spawn_upstream_span": LEAF,
        "operation": LEAF,
        "upstream_operation": LEAF,
        "custom_tags": CUSTOM_TAGS,
    },
    # flush_log_on_tunnel_successfully_established is refused: proxyd has no tunnels.
    "access_log_options": {
        "access_log_flush_interval": LEAF,
        "flush_access_log_on_new_request": LEAF,
    },
    "request_timeout": LEAF,
    "stream_idle_timeout": LEAF,
    "request_headers_timeout": LEAF,
    # proxyd.config.routes.compile_upgrades; proxyd.worker.router (the tunnel).
    "upgrade_configs": {"upgrade_type": LEAF, "enabled": LEAF},
    "common_http_protocol_options": {
        "idle_timeout": LEAF,
        "headers_with_underscores_action": LEAF,
        "max_headers_count": LEAF,
        # proxyd.worker.durations.
        "max_connection_duration": LEAF,
        "max_stream_duration": LEAF,
    },
    # The grace a connection past max_connection_duration gets (proxyd.worker.durations).
    "drain_timeout": LEAF,
    "use_remote_address": LEAF,
    # x-forwarded-client-cert (proxyd.protocol.xfcc); set_current_client_cert_details
    # chain is refused: CPython's ssl does not give the chain a client sent.
    "forward_client_cert_details": LEAF,
    "set_current_client_cert_details": {"subject": LEAF, "cert": LEAF, "dns": LEAF, "uri": LEAF},
    "xff_num_trusted_hops": LEAF,
    "max_request_headers_kb": LEAF,
    "server_name": LEAF,
    "generate_request_id": LEAF,
    # proxyd.config.hcm_transforms, proxyd.worker.request_transforms.
    "normalize_path": LEAF,
    "merge_slashes": LEAF,
    "path_with_escaped_slashes_action": LEAF,
    "server_header_transformation": LEAF,
    "via": LEAF,
    "skip_xff_append": LEAF,
    "preserve_external_request_id": LEAF,
    "always_set_request_id_in_response": LEAF,
    "strip_matching_host_port": LEAF,
    "strip_any_host_port": LEAF,
    "add_user_agent": LEAF,
    # 0s only (proxyd.config.hcm_transforms): proxyd closes at once.
    "delayed_close_timeout": LEAF,
    "internal_address_config": {
        "unix_sockets": LEAF,
        "cidr_ranges": {"address_prefix": LEAF, "prefix_len": LEAF},
    },
    # match_upstream: the :scheme of plain HTTP/1 upstreams, which HTTP/1 does not send.
    "scheme_header_transformation": {"scheme_to_overwrite": LEAF, "match_upstream": LEAF},
    # proxyd.config.hcm_transforms.compile_http1_options, proxyd.protocol.http1_options.
    "http_protocol_options": {
        "accept_http_10": LEAF,
        "default_host_for_http_10": LEAF,
        "header_key_format": {
            "proper_case_words": {},
            "stateful_formatter": {
                "name": LEAF,
                "typed_config": AnyOf(
                    "stateful header formatter",
                    {
                        # forward_reason_phrase acts on responses a cluster's codec
                        # reads: on a connection manager it changes nothing (Envoy 1.40).
                        PRESERVE_CASE_TYPE: {
                            "formatter_type_on_envoy_headers": LEAF,
                            "forward_reason_phrase": LEAF,
                        }
                    },
                ),
            },
        },
    },
}

# envoy.filters.network.tcp_proxy (proxyd.config.listeners.compile_tcp_proxy,
# proxyd.worker.tcp_proxy); on_demand, hash_policy's filter_state, metadata_match,
# backoff_options, periodic access logs and the tunnel's response-header propagation
# (filter state no proxyd filter reads) are refused by name.
TCP_PROXY: Spec = {
    "stat_prefix": LEAF,
    "cluster": LEAF,
    "weighted_clusters": {"clusters": {"name": LEAF, "weight": LEAF}},
    "idle_timeout": LEAF,
    "access_log": ACCESS_LOG,
    # access_log_flush_interval (periodic lines) is refused by name.
    "access_log_options": {"flush_access_log_on_connected": LEAF},
    # At most one (Envoy's rule): the client's IP for a RING_HASH or MAGLEV cluster.
    "hash_policy": {"source_ip": {}},
    "max_connect_attempts": LEAF,
    "max_downstream_connection_duration": LEAF,
    # Over HTTP/1.1 CONNECT or POST (proxyd.worker.tcp_tunnel).
    "tunneling_config": {
        "hostname": LEAF,
        "use_post": LEAF,
        "post_path": LEAF,
        "headers_to_add": {
            "header": {"key": LEAF, "value": LEAF},
            "append_action": LEAF,
            "keep_empty_value": LEAF,
        },
    },
}

# A cluster's Http2ProtocolOptions (proxyd.config.clusters.upstream_http2): the
# windows proxyd's HTTP/2 connections to the hosts advertise, and its own stream limit.
UPSTREAM_H2: Spec = {
    "max_concurrent_streams": LEAF,
    "initial_stream_window_size": LEAF,
    "initial_connection_window_size": LEAF,
}

DATA_SOURCE: Spec = {"filename": LEAF, "inline_string": LEAF, "inline_bytes": LEAF}

# -- SDS (proxyd.config.secrets, proxyd.master.xds): secrets from files -------------
# An SdsSecretConfig's sds_config: a watched file (watched_directory is accepted: the
# file is polled by inode, size and time, so a directory swap is seen as well), or a
# management server (api_config_source over gRPC or REST, or ADS).
SDS_CONFIG_SOURCE: Spec = {
    "path_config_source": {"path": LEAF, "watched_directory": {"path": LEAF}},
    "api_config_source": API_CONFIG_SOURCE,
    "ads": LEAF,
    "resource_api_version": LEAF,
    "initial_fetch_timeout": LEAF,
}
SDS_SECRET_CONFIG: Spec = {"name": LEAF, "sds_config": SDS_CONFIG_SOURCE}
_SECRET_VALIDATION: Spec = {
    "trusted_ca": DATA_SOURCE,
    "match_typed_subject_alt_names": {"san_type": LEAF, "matcher": STRING_MATCHER},
}
# extensions.transport_sockets.tls.v3.Secret: static_resources.secrets and SDS files.
SECRET: dict[str, Spec] = {
    "name": LEAF,
    "tls_certificate": {"certificate_chain": DATA_SOURCE, "private_key": DATA_SOURCE},
    "validation_context": _SECRET_VALIDATION,
}
_SDS_COMMON: dict[str, Spec] = {
    "tls_certificate_sds_secret_configs": SDS_SECRET_CONFIG,
    "validation_context_sds_secret_config": SDS_SECRET_CONFIG,
    "combined_validation_context": {
        "default_validation_context": _SECRET_VALIDATION,
        "validation_context_sds_secret_config": SDS_SECRET_CONFIG,
    },
}
# -- end SDS --------------------------------------------------------------------------

# extensions.transport_sockets.tls.v3.DownstreamTlsContext (proxyd.config.tls).
DOWNSTREAM_TLS: Spec = {
    "common_tls_context": {
        "tls_certificates": {"certificate_chain": DATA_SOURCE, "private_key": DATA_SOURCE},
        "tls_params": {
            "tls_minimum_protocol_version": LEAF,
            "tls_maximum_protocol_version": LEAF,
            "cipher_suites": LEAF,
            "ecdh_curves": LEAF,
        },
        "alpn_protocols": LEAF,
        "validation_context": {
            "trusted_ca": DATA_SOURCE,
            "match_typed_subject_alt_names": {"san_type": LEAF, "matcher": STRING_MATCHER},
            # proxyd.config.tls.revocation_and_pins (in a listener's own context only).
            "crl": DATA_SOURCE,
            "only_verify_leaf_cert_crl": LEAF,
            "verify_certificate_hash": LEAF,
            "verify_certificate_spki": LEAF,
        },
        **_SDS_COMMON,
    },
    "require_client_certificate": LEAF,
    "disable_stateless_session_resumption": LEAF,
}

# extensions.transport_sockets.tls.v3.UpstreamTlsContext (proxyd.config.upstream_tls,
# proxyd.worker.upstream_tls): TLS to a cluster's hosts.
UPSTREAM_TLS: Spec = {
    "sni": LEAF,
    "common_tls_context": {
        "tls_certificates": {"certificate_chain": DATA_SOURCE, "private_key": DATA_SOURCE},
        "tls_params": {
            "tls_minimum_protocol_version": LEAF,
            "tls_maximum_protocol_version": LEAF,
            "cipher_suites": LEAF,
            "ecdh_curves": LEAF,
        },
        # http/1.1 only (h2 is refused by name in proxyd.config.upstream_tls).
        "alpn_protocols": LEAF,
        "validation_context": {
            "trusted_ca": DATA_SOURCE,
            "match_typed_subject_alt_names": {"san_type": LEAF, "matcher": STRING_MATCHER},
            "match_subject_alt_names": STRING_MATCHER,
        },
        **_SDS_COMMON,
    },
    "allow_renegotiation": LEAF,
    "max_session_keys": LEAF,
}

FILTER_CHAIN: Spec = {
    "filters": {
        "name": LEAF,
        "typed_config": AnyOf(
            "network filter",
            {HCM_TYPE: HCM, TCP_PROXY_TYPE: TCP_PROXY, network_rbac.TYPE: network_rbac.SPEC},
        ),
    },
    # A label (/config_dump).
    "name": LEAF,
    # Chosen per connection by proxyd.protocol.chain_match (SNI from the ClientHello).
    "filter_chain_match": {
        "destination_port": LEAF,
        "prefix_ranges": {"address_prefix": LEAF, "prefix_len": LEAF},
        "server_names": LEAF,
        "transport_protocol": LEAF,
        "application_protocols": LEAF,
        "direct_source_prefix_ranges": {"address_prefix": LEAF, "prefix_len": LEAF},
        "source_type": LEAF,
        "source_prefix_ranges": {"address_prefix": LEAF, "prefix_len": LEAF},
        "source_ports": LEAF,
    },
    # TLS termination (proxyd.config.tls, proxyd.worker.tls).
    "transport_socket": {
        "name": LEAF,
        "typed_config": AnyOf(
            "transport socket",
            {DOWNSTREAM_TLS_TYPE: DOWNSTREAM_TLS, RAW_BUFFER_TYPE: {}},
        ),
    },
    "transport_socket_connect_timeout": LEAF,
}

LISTENER: dict[str, Spec] = {
    "name": LEAF,
    "address": ADDRESS_OR_PIPE,
    "per_connection_buffer_limit_bytes": LEAF,
    # true only (proxyd.config.listeners): each worker has its own SO_REUSEPORT socket.
    "enable_reuse_port": LEAF,
    # One line per downstream connection, at close (proxyd.worker.accesslog).
    "access_log": ACCESS_LOG,
    "ignore_global_conn_limit": LEAF,
    # Set on the listening sockets by the master (proxyd.master.listeners).
    "freebind": LEAF,
    "tcp_backlog_size": LEAF,
    "socket_options": {
        "description": LEAF,
        "level": LEAF,
        "name": LEAF,
        "int_value": LEAF,
        "buf_value": LEAF,
        "state": LEAF,
        "type": {"stream": {}, "datagram": {}},
    },
    # The only listener filter is the TLS inspector, whose work proxyd's handshake does.
    "listener_filters_timeout": LEAF,
    "continue_on_listener_filters_timeout": LEAF,
    # Envoy uses it for tracing and Windows original_dst only: no effect in proxyd.
    "traffic_direction": LEAF,
    # exact_balance: each worker accepts from its own SO_REUSEPORT socket (see docs).
    "connection_balance_config": {"exact_balance": {}},
    "filter_chains": FILTER_CHAIN,
    "default_filter_chain": FILTER_CHAIN,
    # The TLS inspector: proxyd reads the SNI in the handshake itself (nothing to set).
    "listener_filters": {
        "name": LEAF,
        "typed_config": AnyOf("listener filter", {TLS_INSPECTOR_TYPE: {}}),
    },
}

UPSTREAM_HTTP: Spec = {
    # http2_protocol_options {}: HTTP/2 to the hosts (proxyd.worker.h2_upstream; its
    # fields are refused by name: proxyd's own defaults apply).
    # http_protocol_options.header_key_format: how request header names are written
    # upstream (proxyd.config.clusters, proxyd.protocol.http1_options). preserve_case's
    # formatter_type_on_envoy_headers (the response's added names) is refused by name.
    "explicit_http_config": {
        "http_protocol_options": {
            "header_key_format": {
                "proper_case_words": {},
                "stateful_formatter": {
                    "name": LEAF,
                    "typed_config": AnyOf(
                        "stateful header formatter",
                        # forward_reason_phrase: proxyd forwards an upstream's reason
                        # phrase as it came in any case (docs: Known differences).
                        {PRESERVE_CASE_TYPE: {"forward_reason_phrase": LEAF}},
                    ),
                },
            },
        },
        "http2_protocol_options": UPSTREAM_H2,
    },
    # HTTP/2 upstream for HTTP/2 clients, HTTP/1.1 for the others (proxyd.config.
    # clusters._downstream_protocol); auto_config (TLS only) picks each host's protocol
    # by ALPN.
    "use_downstream_protocol_config": {
        "http_protocol_options": {},
        "http2_protocol_options": UPSTREAM_H2,
    },
    "auto_config": {"http_protocol_options": {}, "http2_protocol_options": UPSTREAM_H2},
    "common_http_protocol_options": {"idle_timeout": LEAF, "max_requests_per_connection": LEAF},
    # With a TLS transport_socket (proxyd.config.upstream_tls): the SNI and the SAN
    # checked come from each request's Host (or the named header).
    "upstream_http_protocol_options": {
        "auto_sni": LEAF,
        "auto_san_validation": LEAF,
        "override_auto_sni_header": LEAF,
    },
}

PAYLOAD: Spec = {"text": LEAF, "binary": LEAF}

HEALTH_CHECK: Spec = {
    "timeout": LEAF,
    "interval": LEAF,
    "initial_jitter": LEAF,
    "interval_jitter": LEAF,
    "interval_jitter_percent": LEAF,
    "unhealthy_threshold": LEAF,
    "healthy_threshold": LEAF,
    "reuse_connection": LEAF,
    "no_traffic_interval": LEAF,
    "no_traffic_healthy_interval": LEAF,
    "unhealthy_interval": LEAF,
    "unhealthy_edge_interval": LEAF,
    "healthy_edge_interval": LEAF,
    "http_health_check": {
        "host": LEAF,
        "path": LEAF,
        "method": LEAF,
        "request_headers_to_add": {
            "header": {"key": LEAF, "value": LEAF},
            "append_action": LEAF,
        },
        "expected_statuses": {"start": LEAF, "end": LEAF},
        "retriable_statuses": {"start": LEAF, "end": LEAF},
    },
    "tcp_health_check": {"send": PAYLOAD, "receive": PAYLOAD},
    # proxyd.master.health.grpc_check; the cluster must be HTTP/2 (health_checks.py).
    "grpc_health_check": {
        "service_name": LEAF,
        "authority": LEAF,
        "initial_metadata": {
            "header": {"key": LEAF, "value": LEAF},
            "append_action": LEAF,
        },
    },
}

# Everything but ``monitors`` (extension monitors); see proxyd.config.outlier.
OUTLIER_DETECTION: Spec = {
    name: LEAF
    for name in (
        "consecutive_5xx", "interval", "base_ejection_time", "max_ejection_percent",
        "enforcing_consecutive_5xx", "enforcing_success_rate", "success_rate_minimum_hosts",
        "success_rate_request_volume", "success_rate_stdev_factor",
        "consecutive_gateway_failure", "enforcing_consecutive_gateway_failure",
        "split_external_local_origin_errors", "consecutive_local_origin_failure",
        "enforcing_consecutive_local_origin_failure", "enforcing_local_origin_success_rate",
        "failure_percentage_threshold", "enforcing_failure_percentage",
        "enforcing_failure_percentage_local_origin", "failure_percentage_minimum_hosts",
        "failure_percentage_request_volume", "max_ejection_time", "max_ejection_time_jitter",
        "successful_active_health_check_uneject_host", "always_eject_one_host",
    )
}  # fmt: skip

# Envoy's c-ares resolver (proxyd.master.dns_client implements it); the other
# CaresDnsResolverConfig fields are rejected by name.
CARES_TYPE = "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
DNS_RESOLVER: Spec = {
    "name": LEAF,
    "typed_config": AnyOf(
        "DNS resolver",
        {
            CARES_TYPE: {
                "resolvers": ADDRESS,
                "use_resolvers_as_fallback": LEAF,
                "dns_resolver_options": {
                    "use_tcp_for_dns_lookups": LEAF,
                    "no_default_search_domain": LEAF,
                },
            }
        },
    ),
}

# endpoint.v3.ClusterLoadAssignment: a cluster's load_assignment and an EDS resource
# (proxyd.config.endpoints compiles it).
CLUSTER_LOAD_ASSIGNMENT: Spec = {
    "cluster_name": LEAF,
    "endpoints": {
        "locality": {"region": LEAF, "zone": LEAF, "sub_zone": LEAF},
        "lb_endpoints": {
            "endpoint": {
                "address": ADDRESS_OR_PIPE,
                "hostname": LEAF,
                "health_check_config": {"port_value": LEAF, "hostname": LEAF},
            },
            "load_balancing_weight": LEAF,
            "metadata": METADATA,
        },
        "load_balancing_weight": LEAF,
        "priority": LEAF,
        # filter_metadata["envoy.transport_socket_match"] (transport_socket_matches).
        "metadata": METADATA,
    },
    "policy": {"overprovisioning_factor": LEAF},
}

_UPSTREAM_TRANSPORT_SOCKET: Spec = {
    "name": LEAF,
    "typed_config": AnyOf(
        "transport socket", {UPSTREAM_TLS_TYPE: UPSTREAM_TLS, RAW_BUFFER_TYPE: {}}
    ),
}

CLUSTER: dict[str, Spec] = {
    # proxyd.worker.router: the most of a response body read at once from its hosts.
    "per_connection_buffer_limit_bytes": LEAF,
    "name": LEAF,
    "type": LEAF,
    "connect_timeout": LEAF,
    "lb_policy": LEAF,
    "least_request_lb_config": {"choice_count": LEAF, "slow_start_config": SLOW_START_SPEC},
    # proxyd.config.lb_policy, proxyd.protocol.hash_lb.
    **LB_POLICY_SPEC,
    "load_assignment": CLUSTER_LOAD_ASSIGNMENT,
    "common_lb_config": {
        "healthy_panic_threshold": {"value": LEAF},
        "locality_weighted_lb_config": {},
        # proxyd.filters.stateful_session.override: the statuses a session may pick.
        "override_host_status": {"statuses": LEAF},
        # 0s only (proxyd.config.clusters): updates are applied at once.
        "update_merge_window": LEAF,
    },
    # proxyd removes a host as soon as service discovery drops it (true's meaning).
    "ignore_health_on_host_removal": LEAF,
    # HTTP pools drain a host's connections when it fails a check, as Envoy's do.
    "close_connections_on_host_health_failure": LEAF,
    "dns_lookup_family": LEAF,
    "dns_refresh_rate": LEAF,
    "respect_dns_ttl": LEAF,
    "dns_failure_refresh_rate": {"base_interval": LEAF, "max_interval": LEAF},
    "dns_jitter": LEAF,
    "typed_dns_resolver_config": DNS_RESOLVER,
    "eds_cluster_config": {"eds_config": CONFIG_SOURCE, "service_name": LEAF},
    "max_requests_per_connection": LEAF,
    "health_checks": HEALTH_CHECK,
    "circuit_breakers": {
        "thresholds": {
            "priority": LEAF,
            "max_connections": LEAF,
            "max_pending_requests": LEAF,
            "max_requests": LEAF,
            "max_retries": LEAF,
            "retry_budget": {"budget_percent": {"value": LEAF}, "min_retry_concurrency": LEAF},
        },
    },
    "typed_extension_protocol_options": AnyOf(
        "protocol options", {UPSTREAM_HTTP_TYPE: UPSTREAM_HTTP}
    ),
    "outlier_detection": OUTLIER_DETECTION,
    # SO_KEEPALIVE and its timers on upstream connections (proxyd.worker.pool).
    "upstream_connection_options": {
        "tcp_keepalive": {
            "keepalive_probes": LEAF,
            "keepalive_time": LEAF,
            "keepalive_interval": LEAF,
        },
    },
    "metadata": METADATA,
    # Histograms (proxyd.worker.stats.ClusterStats); per_endpoint_stats is refused.
    "track_cluster_stats": {"timeout_budgets": LEAF, "request_response_sizes": LEAF},
    # TLS to the hosts (proxyd.config.upstream_tls).
    "transport_socket": _UPSTREAM_TRANSPORT_SOCKET,
    # A transport socket per host, chosen by endpoint/locality metadata (Envoy's
    # envoy.transport_socket_match); transport_socket_matcher is refused by name.
    "transport_socket_matches": {
        "name": LEAF,
        "match": LEAF,
        "transport_socket": _UPSTREAM_TRANSPORT_SOCKET,
    },
}

# metrics.v3.StatsConfig and the statsd sinks (proxyd.config.stats); a histogram bucket
# rule's ``bins`` (circllhist's initial size) is refused by name. A UDP sink's socket_address may say
# "protocol: UDP" (or TCP, which Envoy ignores there too: the sink sends datagrams).
SINK_ADDRESS: Spec = {
    "socket_address": {"address": LEAF, "port_value": LEAF, "protocol": LEAF},
}
STATS_CONFIG: Spec = {
    "stats_tags": {"tag_name": LEAF, "regex": LEAF, "fixed_value": LEAF},
    "use_all_default_tags": LEAF,
    "stats_matcher": {
        "reject_all": LEAF,
        "exclusion_list": {"patterns": STRING_MATCHER},
        "inclusion_list": {"patterns": STRING_MATCHER},
    },
    "histogram_bucket_settings": {"match": STRING_MATCHER, "buckets": LEAF},
}
STATS_SINK: Spec = {
    "name": LEAF,
    "typed_config": AnyOf(
        "stats sink",
        {
            "envoy.config.metrics.v3.StatsdSink": {
                "address": SINK_ADDRESS,
                "tcp_cluster_name": LEAF,
                "prefix": LEAF,
            },
            "envoy.config.metrics.v3.DogStatsdSink": {
                "address": SINK_ADDRESS,
                "prefix": LEAF,
                "max_bytes_per_datagram": LEAF,
            },
        },
    ),
}

# proxyd.config.overload: the monitors and actions it implements, threshold triggers.
OVERLOAD_MANAGER: Spec = {
    "refresh_interval": LEAF,
    "resource_monitors": {
        "name": LEAF,
        "typed_config": AnyOf(
            "resource monitor",
            {
                overload.DOWNSTREAM_CONNECTIONS_TYPE: {"max_active_downstream_connections": LEAF},
                overload.FIXED_HEAP_TYPE: {"max_heap_size_bytes": LEAF},
            },
        ),
    },
    "actions": {"name": LEAF, "triggers": {"name": LEAF, "threshold": {"value": LEAF}}},
}

WATCHDOG: Spec = {
    "miss_timeout": LEAF,
    "megamiss_timeout": LEAF,
    "kill_timeout": LEAF,
    "max_kill_timeout_jitter": LEAF,
    "multikill_timeout": LEAF,
    "multikill_threshold": {"value": LEAF},
}

BOOTSTRAP: dict[str, Spec] = {
    "admin": ADMIN,
    # proxyd.config.node: sent in every xDS request; metadata, dynamic_parameters and
    # the rest as written (Struct and map leaves).
    "node": {
        "id": LEAF,
        "cluster": LEAF,
        "metadata": LEAF,
        "dynamic_parameters": LEAF,
        "locality": {"region": LEAF, "zone": LEAF, "sub_zone": LEAF},
        "user_agent_name": LEAF,
        "user_agent_version": LEAF,
        "user_agent_build_version": LEAF,
        "extensions": LEAF,
        "client_features": LEAF,
    },
    # proxyd.config.runtime and proxyd.master.runtime; rtds_layer's Runtime resources
    # come through proxyd.master.xds.
    "layered_runtime": {
        "layers": {
            "name": LEAF,
            "static_layer": LEAF,
            "disk_layer": {
                "symlink_root": LEAF,
                "subdirectory": LEAF,
                "append_service_cluster": LEAF,
            },
            "admin_layer": {},
            "rtds_layer": {"name": LEAF, "rtds_config": CONFIG_SOURCE},
        },
    },
    "static_resources": {"listeners": LISTENER, "clusters": CLUSTER, "secrets": SECRET},
    "dynamic_resources": {
        "lds_config": CONFIG_SOURCE,
        "cds_config": CONFIG_SOURCE,
        "ads_config": API_CONFIG_SOURCE,
    },
    "overload_manager": OVERLOAD_MANAGER,
    "watchdogs": {"main_thread_watchdog": WATCHDOG, "worker_watchdog": WATCHDOG},
    "cluster_manager": {"local_cluster_name": LEAF},
    "stats_config": STATS_CONFIG,
    "stats_sinks": STATS_SINK,
    "stats_flush_interval": LEAF,
    "stats_flush_on_admin": LEAF,
}


def check_bootstrap(bootstrap: bootstrap_pb2.Bootstrap, file: str) -> None:
    """Raise ConfigError for the first unsupported field or broken proto constraint."""
    _check_message(bootstrap, BOOTSTRAP, "", file)


def check_message(msg: Message, spec: dict[str, Spec], path: str, file: str) -> None:
    """The same walk for one resource (an xDS Cluster, Listener, ...) under ``path``."""
    _check_message(msg, spec, path, file)


def _check_message(msg: Message, spec: dict[str, Spec], path: str, file: str) -> None:
    for field, value in msg.ListFields():
        sub = spec.get(field.name)
        here = join(path, field.name)
        if sub is None:
            raise ConfigError(file, here, "field not supported by proxyd")
        if sub is LEAF:
            continue
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        assert field.message_type is not None  # set on every message field
        if field.message_type.GetOptions().map_entry:
            for key in sorted(value):
                _check_value(msg, value[key], sub, f"{here}[{key!r}]", file)
        elif field.is_repeated:
            for i, item in enumerate(value):
                _check_value(msg, item, sub, f"{here}[{i}]", file)
        else:
            _check_value(msg, value, sub, here, file)
    for name, reason in rules.violations(msg):
        raise ConfigError(file, join(path, name), reason)


def _check_value(parent: Message, value: Any, spec: Spec, path: str, file: str) -> None:
    if isinstance(spec, AnyOf):
        _check_any(parent, value, spec, path, file)
    elif isinstance(spec, dict):
        _check_message(value, spec, path, file)


def _check_any(parent: Message, any_msg: Any, spec: AnyOf, path: str, file: str) -> None:
    if not any_msg.type_url:
        raise ConfigError(file, join(path, "@type"), "a typed_config needs an '@type' type URL")
    if is_v2_type(any_msg.type_url):
        raise ConfigError(file, join(path, "@type"), unknown_type_reason(any_msg.type_url))
    type_name = any_msg.type_url.rsplit("/", 1)[-1]
    inner_spec = spec.types.get(type_name)
    if inner_spec is None:
        owner = path.rsplit(".", 1)[0] if "." in path else path
        name = getattr(parent, "name", "") if "name" in parent.DESCRIPTOR.fields_by_name else ""
        label = f"'{name}' ({type_name})" if name else type_name
        if path.endswith("]"):  # a map value: the key names it
            owner, label = path, type_name
        raise ConfigError(file, owner, f"{spec.what} {label} not supported by proxyd")
    inner = unpack(any_msg)
    if inner is None:  # parse_bootstrap resolved every type URL already
        raise ConfigError(file, path, f"unknown type URL '{any_msg.type_url}'")
    if isinstance(inner_spec, dict):
        _check_message(inner, inner_spec, path, file)
