"""Epoch values of listeners: access logs, HTTP filters, tracing, the connection
manager and its options, network filters, filter chains and the listener itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from proxyd.epoch_types.clusters import ConfigSource
from proxyd.epoch_types.routes import (
    CustomTag,
    HeaderAdd,
    HeaderMatch,
    RouteConfig,
    RouteMatcher,
)
from proxyd.epoch_types.tls import DownstreamTls


@dataclass(frozen=True, slots=True)
class AccessLogFilter:
    """One node of Envoy's ``config.accesslog.v3.AccessLogFilter``
    (proxyd.protocol.access_log_filters evaluates it).

    ``kind`` is the filter's field name without ``_filter`` ("status_code", "duration",
    "not_health_check", "traceable", "runtime", "and", "or", "response_flag", "header",
    "grpc_status", "log_type"). Comparisons use ``op`` ("EQ", "GE", "LE") against
    ``value`` unless the runtime has ``runtime_key``; the runtime filter samples
    ``value`` / ``denominator`` (its runtime key overrides). ``names`` holds response
    flags or log types, ``codes`` gRPC status numbers; ``children`` the and/or operands.
    """

    kind: str
    op: str = ""
    value: int = 0
    runtime_key: str = ""
    denominator: int = 100
    independent: bool = False
    names: tuple[str, ...] = ()
    codes: tuple[int, ...] = ()
    exclude: bool = False
    header: HeaderMatch | None = None
    children: tuple[AccessLogFilter, ...] = ()


@dataclass(frozen=True, slots=True)
class AccessLog:
    """An access log: where it goes and its ``log_format``.

    ``sink`` is "file" (``path``), "stdout" or "stderr". ``format`` is Envoy's text
    format ("" for the default format); ``json_format``, when not "", is the JSON text
    of a ``json_format`` Struct and replaces ``format``.
    """

    path: str
    format: str = ""
    sink: str = "file"
    json_format: str = ""
    omit_empty_values: bool = False
    filter: AccessLogFilter | None = None
    # sink "otel": the OpenTelemetry access logger's settings.
    otel: OtelLog | None = None
    # sink "grpc": the gRPC access log service's (http_grpc / tcp_grpc).
    grpc: GrpcAccessLog | None = None

    @property
    def writer_key(self) -> str:
        """The key of the worker's writer: the file path, or "stdout:" / "stderr:"
        ("" for an OpenTelemetry log, which has an exporter instead)."""
        if self.sink in ("otel", "grpc"):
            return ""
        return self.path if self.sink == "file" else f"{self.sink}:"


@dataclass(frozen=True, slots=True)
class OtelLog:
    """``envoy.access_loggers.open_telemetry`` (OpenTelemetryAccessLogConfig): OTLP log
    records exported over gRPC to ``cluster`` (proxyd.worker.otel_access_log). ``body``
    and each attribute value are access-log text formats ("": no body); the resource
    has Envoy's built-in labels (log_name, zone_name, cluster_name, node_name) unless
    ``builtin_labels`` is false, then ``resource_attributes``."""

    log_name: str
    cluster: str
    timeout_s: float = 0.0
    flush_interval_s: float = 1.0
    buffer_size_bytes: int = 16384
    body: str = ""
    attributes: tuple[tuple[str, str], ...] = ()
    resource_attributes: tuple[tuple[str, str], ...] = ()
    builtin_labels: bool = True


@dataclass(frozen=True, slots=True)
class GrpcAccessLog:
    """``envoy.access_loggers.http_grpc`` (HttpGrpcAccessLogConfig) or, when ``tcp``,
    ``envoy.access_loggers.tcp_grpc``: entries streamed to the AccessLogService of
    ``cluster`` (proxyd.worker.grpc_access_log); ``request_headers`` /
    ``response_headers`` are the additional headers to log (lower-case);
    ``custom_tags`` are common_config's (literal, environment: a literal then,
    request_header)."""

    log_name: str
    cluster: str
    tcp: bool = False
    timeout_s: float = 0.0
    flush_interval_s: float = 1.0
    buffer_size_bytes: int = 16384
    request_headers: tuple[str, ...] = ()
    response_headers: tuple[str, ...] = ()
    custom_tags: tuple[CustomTag, ...] = ()


@dataclass(frozen=True, slots=True)
class FilterAction:
    """An action of a filter's matcher: ``kind`` "skip" (SkipFilter: the filter sits
    out the stream) or "execute" (the composite filter's ExecuteFilterAction: ``filter``
    runs in the composite's place for the stream)."""

    kind: str
    filter: HttpFilter | None = None


@dataclass(frozen=True, slots=True)
class FilterMatcher:
    """ExtensionWithMatcher's ``xds_matcher`` around a filter: ``tree`` over the request
    headers, whose actions are indexes into ``actions``."""

    tree: RouteMatcher
    actions: tuple[FilterAction, ...]


@dataclass(frozen=True, slots=True)
class HttpFilter:
    """One entry of the HCM's http_filters other than the terminal router.

    ``type_name`` is its typed_config's proto type (``proxyd.filters.compilers``, ``proxyd.filters.runtimes``);
    ``config`` is the plain data its compiler made; ``disabled`` is Envoy's
    ``HttpFilter.disabled`` (off unless a route enables it)."""

    name: str
    type_name: str
    config: Any
    disabled: bool = False
    # ExtensionWithMatcher around the filter (None: the filter takes every stream).
    matcher: FilterMatcher | None = None


@dataclass(frozen=True, slots=True)
class Tracing:
    """HttpConnectionManager.tracing with the Zipkin or the OpenTelemetry provider
    (proxyd.config.tracing, proxyd.worker.tracing). For OpenTelemetry the collector
    fields come from ``http_service.http_uri`` (endpoint: the uri's path, hostname: its
    authority)."""

    collector_cluster: str
    collector_endpoint: str
    collector_hostname: str
    trace_id_128bit: bool = False
    shared_span_context: bool = True
    # "SERVER" for an INBOUND (or unspecified) listener, "CLIENT" for OUTBOUND.
    kind: str = "SERVER"
    # (numerator, denominator) of each sampling (Envoy's Percent is over 10,000).
    random_sampling: tuple[int, int] = (10000, 10000)
    client_sampling: tuple[int, int] = (10000, 10000)
    overall_sampling: tuple[int, int] = (10000, 10000)
    custom_tags: tuple[CustomTag, ...] = ()
    max_path_tag_length: int = 256
    # Tracing.operation: the span's name when the route has no decorator ("" = the
    # request's Host, Envoy's default).
    operation: str = ""
    # "zipkin" or "opentelemetry".
    provider: str = "zipkin"
    # OpenTelemetry: service_name, http_service.request_headers_to_add (name, value)
    # and http_uri.timeout.
    service_name: str = ""
    collector_headers: tuple[tuple[str, str], ...] = ()
    collector_timeout_s: float = 5.0
    # OpenTelemetry over grpc_service.envoy_grpc: unary TraceService/Export calls to
    # the collector cluster (collector_endpoint is the method, collector_hostname the
    # :authority, collector_headers the initial_metadata).
    collector_grpc: bool = False


@dataclass(frozen=True, slots=True)
class HttpConnectionManager:
    stat_prefix: str
    # "AUTO", "HTTP1" or "HTTP2" (proxyd.worker.h2_downstream).
    codec_type: str
    route_config: RouteConfig
    access_logs: tuple[AccessLog, ...] = ()
    use_remote_address: bool = False
    xff_num_trusted_hops: int = 0
    # forward_client_cert_details (proxyd.protocol.xfcc.MODES) and the fields of
    # set_current_client_cert_details that are true (proxyd.protocol.xfcc.DETAILS).
    forward_client_cert: str = "SANITIZE"
    client_cert_details: tuple[str, ...] = ()
    max_request_headers_kb: int = 60
    # Envoy's defaults: request_timeout disabled (0), stream_idle_timeout 5 min,
    # request_headers_timeout disabled, idle_timeout (downstream keep-alive) 1 h.
    request_timeout_s: float = 0.0
    stream_idle_timeout_s: float = 300.0
    request_headers_timeout_s: float = 0.0
    idle_timeout_s: float = 3600.0
    # Value of the "server" response header (Envoy's server_name, default "envoy").
    server_name: str = "envoy"
    # Envoy's generate_request_id (default true).
    generate_request_id: bool = True
    # RDS: the RouteConfiguration name; the master puts the delivered one in
    # ``route_config`` before a worker sees the listener.
    rds_route_config_name: str = ""
    rds_source: ConfigSource | None = None
    # http_filters before the router, in order (the router is always last).
    http_filters: tuple[HttpFilter, ...] = ()
    # access_log_options: periodic logs of streams in flight (0: none), and a log when
    # a request's headers arrive (ACCESS_LOG_TYPE DownstreamStart).
    access_log_flush_interval_s: float = 0.0
    flush_access_log_on_new_request: bool = False
    # Request and response transforms (proxyd.worker.request_transforms; all off by
    # default, as in Envoy): the path steps, what happens to the upstream's "server"
    # header ("OVERWRITE", "APPEND_IF_ABSENT" or "PASS_THROUGH"), a "via" value for
    # both directions, x-forwarded-for and x-request-id handling, the Host port strip
    # ("" none, "matching" the listener's port, "any") and what a request header
    # name with "_" does ("ALLOW", "REJECT_REQUEST" or "DROP_HEADER").
    transforms: HcmTransforms | None = None
    # common_http_protocol_options.max_headers_count: more request headers get 431.
    max_headers_count: int = 100
    # http_protocol_options (HTTP/1.0, header name case); None when it sets none of
    # them (the request path then pays nothing for them).
    http1: Http1Options | None = None
    # common_http_protocol_options.max_connection_duration and .max_stream_duration
    # (0: none, Envoy's default), and drain_timeout: the grace a connection past its
    # max_connection_duration gets before it is closed when idle (Envoy's 5 s).
    max_connection_duration_s: float = 0.0
    max_stream_duration_s: float = 0.0
    drain_timeout_s: float = 5.0
    # tracing (None: none; the request path then pays nothing for it).
    tracing: Tracing | None = None
    # upgrade_configs: (lower-case upgrade type, enabled by default), e.g. ("websocket",
    # True). A type not listed is refused (403), whatever a route says.
    upgrades: tuple[tuple[str, bool], ...] = ()
    # http2_protocol_options (None: Envoy's defaults, Http2Options()).
    http2: Http2Options | None = None


@dataclass(frozen=True, slots=True)
class Http2Options:
    """The connection manager's ``http2_protocol_options`` proxyd implements
    (core.v3.Http2ProtocolOptions; the downstream HTTP/2 codec sends them as SETTINGS)."""

    # Envoy 1.40's defaults.
    max_concurrent_streams: int = 1024
    initial_stream_window_size: int = 16 * 1024 * 1024
    initial_connection_window_size: int = 24 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Http1Options:
    """The connection manager's ``http_protocol_options`` (core.v3.Http1ProtocolOptions)
    proxyd implements (proxyd.protocol.http1_options)."""

    # HTTP/1.0 requests are proxied (else answered 426), and the Host of one that has
    # none (b"": such a request gets 400).
    accept_http_10: bool = False
    default_host_for_http_10: str = ""
    # header_key_format: "" (lower case), "proper_case_words" (response header names
    # written downstream in Proper-Case) or "preserve_case" (request header names go
    # upstream as they arrived; with ``envoy_headers_proper_case`` the names proxyd
    # adds are written in Proper-Case).
    header_key_format: str = ""
    envoy_headers_proper_case: bool = False


@dataclass(frozen=True, slots=True)
class HcmTransforms:
    """The HttpConnectionManager fields that edit requests and responses (None in
    ``HttpConnectionManager.transforms`` when the config sets none of them)."""

    normalize_path: bool = False
    merge_slashes: bool = False
    # "KEEP_UNCHANGED", "REJECT_REQUEST", "UNESCAPE_AND_REDIRECT", "UNESCAPE_AND_FORWARD".
    escaped_slashes: str = "KEEP_UNCHANGED"
    server_header_transformation: str = "OVERWRITE"
    via: str = ""
    skip_xff_append: bool = False
    preserve_external_request_id: bool = False
    always_set_request_id_in_response: bool = False
    strip_host_port: str = ""
    headers_with_underscores: str = "ALLOW"
    # add_user_agent: x-envoy-downstream-service-cluster/-node from the bootstrap's
    # node (Epoch.node_cluster, node_id), user-agent when the request has none.
    add_user_agent: bool = False
    # scheme_header_transformation.scheme_to_overwrite ("" = none): the scheme, and so
    # x-forwarded-proto, of every request.
    scheme: str = ""
    # internal_address_config: set or not, its CIDR ranges ("addr/len"; none: Envoy's
    # RFC 1918, loopback and unique-local defaults) and unix_sockets.
    internal_address_config: bool = False
    internal_cidrs: tuple[str, ...] = ()
    internal_unix_sockets: bool = False


@dataclass(frozen=True, slots=True)
class SocketOption:
    """Envoy's core.v3.SocketOption for a listening socket (the master applies it)."""

    level: int
    name: int
    int_value: int = 0
    # buf_value when ``is_buf`` (else int_value).
    buf_value: bytes = b""
    is_buf: bool = False
    # "STATE_PREBIND", "STATE_BOUND" or "STATE_LISTENING": when it is set.
    state: str = "STATE_PREBIND"


@dataclass(frozen=True, slots=True)
class NetworkRbac:
    """``envoy.filters.network.rbac`` before a chain's connection manager or TCP proxy:
    ``stat_prefix`` (Envoy's ``<stat_prefix>rbac.``) and ``config``, the HTTP RBAC
    filter's plain rules (:mod:`proxyd.filters.rbac.config`), judged once per connection
    on its first bytes (proxyd.worker.network_rbac)."""

    stat_prefix: str
    config: Any


@dataclass(frozen=True, slots=True)
class ChainMatch:
    """A filter chain's ``filter_chain_match`` (proxyd.protocol.chain_match applies it
    in Envoy's order). Empty criteria match anything; address ranges are CIDR texts
    with the host bits cleared ("10.0.0.0/8"); ``server_names`` are lower case, exact or
    ``*.``-wildcard; ``transport_protocol`` "tls", "raw_buffer" or "" (any);
    ``source_type`` "ANY", "SAME_IP_OR_LOOPBACK" or "EXTERNAL"; port 0 is any."""

    destination_port: int = 0
    prefix_ranges: tuple[str, ...] = ()
    server_names: tuple[str, ...] = ()
    transport_protocol: str = ""
    application_protocols: tuple[str, ...] = ()
    direct_source_prefix_ranges: tuple[str, ...] = ()
    source_type: str = "ANY"
    source_prefix_ranges: tuple[str, ...] = ()
    source_ports: tuple[int, ...] = ()

    @property
    def needs_client_hello(self) -> bool:
        """Matching needs the TLS inspector's view of the first bytes."""
        return bool(self.server_names or self.transport_protocol or self.application_protocols)


ANY_CHAIN = ChainMatch()


@dataclass(frozen=True, slots=True)
class FilterChain:
    """One of a listener's filter chains, with its ``filter_chain_match``: it ends in
    a connection manager (``hcm``) or a TCP proxy (``tcp_proxy``)."""

    hcm: HttpConnectionManager | None
    tcp_proxy: TcpProxy | None = None
    tls: DownstreamTls | None = None
    name: str = ""
    match: ChainMatch = ANY_CHAIN
    # Network RBAC filters before the connection manager, in order.
    network_rbac: tuple[NetworkRbac, ...] = ()


@dataclass(frozen=True, slots=True)
class TcpCluster:
    """One entry of TcpProxy.weighted_clusters."""

    name: str
    weight: int


@dataclass(frozen=True, slots=True)
class TcpTunnel:
    """TcpProxy.tunneling_config: the client's bytes go upstream inside an HTTP/1.1
    ``CONNECT hostname`` (or ``POST post_path`` with ``use_post``, the bytes then
    chunked) request. ``hostname`` and the header values may use ``%OPERATOR%``
    substitutions (checked at load)."""

    hostname: str
    use_post: bool = False
    post_path: str = "/"
    headers: tuple[HeaderAdd, ...] = ()


@dataclass(frozen=True, slots=True)
class TcpProxy:
    """Envoy's ``envoy.filters.network.tcp_proxy`` (TcpProxy) with its defaults
    resolved; the worker side is :mod:`proxyd.worker.tcp_proxy`."""

    stat_prefix: str
    # ``cluster``, or () when ``weighted`` names the clusters (with their weights).
    cluster: str = ""
    weighted: tuple[TcpCluster, ...] = ()
    # idle_timeout (Envoy's default 1 h; 0 = none) and max_downstream_connection_duration
    # (0 = none).
    idle_timeout_s: float = 3600.0
    max_connect_attempts: int = 1
    max_downstream_connection_duration_s: float = 0.0
    access_logs: tuple[AccessLog, ...] = ()
    # access_log_options.flush_access_log_on_connected: a TcpUpstreamConnected line too.
    log_on_connected: bool = False
    # hash_policy [source_ip]: a RING_HASH or MAGLEV cluster's host by the client's IP.
    hash_source_ip: bool = False
    # Network RBAC filters before the TCP proxy, in order.
    network_rbac: tuple[NetworkRbac, ...] = ()
    # tunneling_config: the bytes go inside an HTTP request to the cluster (None: raw).
    tunneling: TcpTunnel | None = None


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    address: str
    port: int
    # The listener's one network filter: an HTTP connection manager, or (hcm None) the
    # TCP proxy in ``tcp_proxy``.
    hcm: HttpConnectionManager | None
    per_connection_buffer_limit_bytes: int = 1024 * 1024
    # The listener's own access_log: one line per downstream connection, at close.
    access_logs: tuple[AccessLog, ...] = ()
    # Envoy's ignore_global_conn_limit: the global downstream connection limit
    # (Epoch.global_cx_limit) never refuses this listener's connections.
    ignore_global_conn_limit: bool = False
    # A pipe (Unix socket) listener: ``address`` is its path ("@name" in the abstract
    # namespace), ``port`` 0, and ``pipe_mode`` the file mode to set (0: leave it).
    # Port 0 without ``pipe`` is a TCP listener on a port the kernel picks.
    pipe: bool = False
    pipe_mode: int = 0
    # How the master binds the listener's sockets (proxyd.master.listeners): IP_FREEBIND,
    # the listen() backlog (0: proxyd's default) and Envoy's socket_options.
    freebind: bool = False
    tcp_backlog_size: int = 0
    socket_options: tuple[SocketOption, ...] = ()
    tcp_proxy: TcpProxy | None = None
    # The filter chain's TLS termination (None: plaintext).
    tls: DownstreamTls | None = None
    # Several filter chains, match criteria or the TLS inspector: every chain in config
    # order (``hcm`` and ``tls`` above are the first one's), and the
    # default_filter_chain. Empty when the listener has one chain that matches every
    # connection and no inspector (nothing to look at before the chain starts).
    chains: tuple[FilterChain, ...] = ()
    default_chain: FilterChain | None = None
    # How long choosing a chain may wait for the client's first bytes (Envoy's
    # listener_filters_timeout), and whether to choose without them after it.
    listener_filters_timeout_s: float = 15.0
    continue_on_listener_filters_timeout: bool = False
    # The TLS inspector runs (configured, or needed by filter_chain_match): only then
    # does a connection have a requested server name (the access log's, RBAC's), as in
    # Envoy, where the TLS inspector is what records it.
    tls_inspector: bool = False
    # The (first) filter chain's network RBAC filters before its connection manager
    # (a TCP proxy listener's are on its TcpProxy).
    network_rbac: tuple[NetworkRbac, ...] = ()

    @property
    def hcms(self) -> tuple[HttpConnectionManager, ...]:
        """Every filter chain's connection manager (``hcm`` first; none for a TCP proxy
        listener)."""
        if not self.chains:
            return () if self.hcm is None else (self.hcm,)
        return tuple(c.hcm for c in self.every_chain if c.hcm is not None)

    @property
    def tcp_proxies(self) -> tuple[TcpProxy, ...]:
        """Every filter chain's TCP proxy (``tcp_proxy`` first)."""
        if not self.chains:
            return () if self.tcp_proxy is None else (self.tcp_proxy,)
        return tuple(c.tcp_proxy for c in self.every_chain if c.tcp_proxy is not None)

    @property
    def every_chain(self) -> tuple[FilterChain, ...]:
        """``chains`` and the default chain (when the listener chooses among them)."""
        extra = (self.default_chain,) if self.default_chain is not None else ()
        return (*self.chains, *extra)

    @property
    def access_log_keys(self) -> set[str]:
        """The writer keys of every access log of the listener and its network filters
        (every filter chain's); an OpenTelemetry or gRPC log has none (it has an exporter)."""
        logs = [*self.access_logs]
        for hcm in self.hcms:
            logs += hcm.access_logs
        for tcp in self.tcp_proxies:
            logs += tcp.access_logs
        return {al.writer_key for al in logs if al.otel is None and al.grpc is None}

    @property
    def stat_name(self) -> str:
        """Envoy's listener stat scope: ``listener.<address>_<port>`` (the configured
        port, 0 included), or ``listener.<path>`` for a pipe."""
        return self.address if self.pipe else f"{self.address}_{self.port}"

    @property
    def address_text(self) -> str:
        """The configured address as Envoy writes it in messages: "ip:port" or a path."""
        return self.address if self.pipe else f"{self.address}:{self.port}"


def same_but_secrets(a: Listener, b: Listener) -> bool:
    """``a`` and ``b`` are the same listener but for what SDS filled into their TLS
    contexts (a rotated certificate): its connections are not drained, as Envoy
    updates a TLS context in place."""
    if a == b:
        return True
    if not any(
        t is not None and t.sds_certificates or t is not None and t.sds_validation
        for t in _tls_of(a)
    ):
        return False
    return _without_secrets(a) == _without_secrets(b)


def _tls_of(lst: Listener) -> list[DownstreamTls | None]:
    chains = (*lst.chains, *((lst.default_chain,) if lst.default_chain else ()))
    return [lst.tls, *(c.tls for c in chains)]


def _without_secrets(lst: Listener) -> Listener:
    def strip(tls: DownstreamTls | None) -> DownstreamTls | None:
        if tls is None or not (tls.sds_certificates or tls.sds_validation):
            return tls
        return dataclasses.replace(
            tls, certificates=(), trusted_ca=b"", san_matchers=(), sds_missing=()
        )

    return dataclasses.replace(
        lst,
        tls=strip(lst.tls),
        chains=tuple(dataclasses.replace(c, tls=strip(c.tls)) for c in lst.chains),
        default_chain=(
            dataclasses.replace(lst.default_chain, tls=strip(lst.default_chain.tls))
            if lst.default_chain is not None
            else None
        ),
    )
