"""Epoch values of clusters: endpoints, health checks, outlier detection, circuit
breakers, DNS, and the cluster itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from proxyd.epoch_types.sources import ConfigSource
from proxyd.epoch_types.tls import UpstreamTls


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One upstream host, resolved to an IP address by the master, or a pipe (Unix
    socket): then ``address`` is its path ("@name" in the abstract namespace) and
    ``port`` is 0, which no TCP endpoint has (see :mod:`proxyd.pipes`)."""

    address: str
    port: int
    weight: int = 1
    # The name it came from (STRICT_DNS) or "" for a literal address.
    hostname: str = ""
    healthy: bool = True
    # Envoy's LocalityLbEndpoints.priority (0 is the highest) and the locality the host
    # belongs to ("region/zone/sub_zone", "" for none) with that locality's
    # load_balancing_weight (0 = not set).
    priority: int = 0
    locality: str = ""
    locality_weight: int = 0
    # Ejected by outlier detection (the master decides; see proxyd.master.outlier).
    ejected: bool = False
    # Envoy's Endpoint.hostname (shown by /clusters in place of the DNS name) and
    # health_check_config: the port and Host (gRPC :authority) active checks use
    # (0 / "": the endpoint's port, the health check's own host or the cluster name).
    endpoint_hostname: str = ""
    hc_port: int = 0
    hc_hostname: str = ""
    # The lb_endpoint's metadata filter_metadata["envoy.lb"]["hash_key"] (a string): what
    # RING_HASH and MAGLEV hash the host by in place of its address ("" = not set).
    hash_key: str = ""
    # Slow start (a cluster with slow_start_config): when the host joined the cluster
    # or, with active health checks, last turned healthy (CLOCK_MONOTONIC seconds,
    # stamped by the master: proxyd.master.slow_start; 0 = not stamped).
    active_since: float = 0.0
    # filter_metadata["envoy.transport_socket_match"] of the lb_endpoint and of its
    # locality, as (key, canonical JSON value) pairs: what the cluster's
    # transport_socket_matches choose its transport socket by (transport_for).
    tls_labels: tuple[tuple[str, str], ...] = ()
    locality_tls_labels: tuple[tuple[str, str], ...] = ()

    @property
    def usable(self) -> bool:
        """Healthy by active health checking and not ejected by outlier detection."""
        return self.healthy and not self.ejected


@dataclass(frozen=True, slots=True)
class HeaderToAdd:
    """A header an HTTP health check adds (Envoy's HeaderValueOption)."""

    name: str
    value: str
    # Envoy's append_action: "APPEND_IF_EXISTS_OR_ADD", "ADD_IF_ABSENT",
    # "OVERWRITE_IF_EXISTS_OR_ADD" or "OVERWRITE_IF_EXISTS".
    action: str = "APPEND_IF_EXISTS_OR_ADD"


@dataclass(frozen=True, slots=True)
class StatusRange:
    """Envoy's type.v3.Int64Range of HTTP statuses: ``start`` <= status < ``end``."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Envoy's core.v3.HealthCheck, with every default resolved. Used by the master
    (``proxyd.master.health``); workers only see its outcome in ``Endpoint.healthy``."""

    # "http", "tcp" or "grpc".
    kind: str
    timeout_s: float
    interval_s: float
    unhealthy_threshold: int
    healthy_threshold: int
    initial_jitter_s: float = 0.0
    interval_jitter_s: float = 0.0
    interval_jitter_percent: int = 0
    reuse_connection: bool = True
    no_traffic_interval_s: float = 60.0
    no_traffic_healthy_interval_s: float = 60.0
    unhealthy_interval_s: float = 0.0
    unhealthy_edge_interval_s: float = 0.0
    healthy_edge_interval_s: float = 0.0
    # HTTP: Host ("" = the cluster name), path, extra headers, expected and retriable
    # statuses (expected defaults to 200 only).
    http_host: str = ""
    http_path: str = ""
    http_headers: tuple[HeaderToAdd, ...] = ()
    expected_statuses: tuple[StatusRange, ...] = (StatusRange(200, 201),)
    retriable_statuses: tuple[StatusRange, ...] = ()
    # TCP: bytes to send, and byte strings to find in order in the reply; both empty
    # means connect-only.
    tcp_send: bytes = b""
    tcp_receive: tuple[bytes, ...] = ()
    # gRPC ("grpc", proxyd.master.health.grpc_check): grpc.health.v1.Health/Check with
    # this service name ("" = the server as a whole), :authority ("" = the cluster
    # name) and initial_metadata.
    grpc_service_name: str = ""
    grpc_authority: str = ""
    grpc_metadata: tuple[HeaderToAdd, ...] = ()
    # The port checks connect to (an endpoint's health_check_config.port_value; 0: the
    # endpoint's own). Set per host by the master's health checker.
    port: int = 0


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Envoy's cluster.v3.OutlierDetection with every default resolved (Envoy's own).

    The master runs it (``proxyd.master.outlier``); workers only report outcomes for a
    cluster that has one and see the decisions in ``Endpoint.ejected``. Percentages
    are 0-100; ``success_rate_stdev_factor`` is in thousandths, as in Envoy."""

    consecutive_5xx: int = 5
    interval_s: float = 10.0
    base_ejection_time_s: float = 30.0
    max_ejection_percent: int = 10
    enforcing_consecutive_5xx: int = 100
    enforcing_success_rate: int = 100
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900
    consecutive_gateway_failure: int = 5
    enforcing_consecutive_gateway_failure: int = 0
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failure: int = 5
    enforcing_consecutive_local_origin_failure: int = 100
    enforcing_local_origin_success_rate: int = 100
    failure_percentage_threshold: int = 85
    enforcing_failure_percentage: int = 0
    enforcing_failure_percentage_local_origin: int = 0
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    # Envoy's default is max(300 s, base_ejection_time); the compiler resolves it.
    max_ejection_time_s: float = 300.0
    max_ejection_time_jitter_s: float = 0.0
    always_eject_one_host: bool = False
    # A passing active health check (the host healthy after it) ends an ejection.
    successful_active_health_check_uneject_host: bool = True


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    # "STATIC" or "STRICT_DNS" (the master resolves names; workers see addresses).
    type: str
    connect_timeout_s: float
    # "ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH" or "MAGLEV".
    lb_policy: str
    endpoints: tuple[Endpoint, ...]
    # LEAST_REQUEST: how many hosts are sampled (Envoy's choice_count, default 2).
    choice_count: int = 2
    # ROUND_ROBIN and LEAST_REQUEST slow_start_config (proxyd.protocol.slow_start):
    # slow_start_window (0 = no slow start), aggression (its default_value, and its
    # runtime_key: the master writes the runtime's value into slow_start_aggression)
    # and min_weight_percent as a fraction.
    slow_start_window_s: float = 0.0
    slow_start_aggression: float = 1.0
    slow_start_aggression_key: str = ""
    slow_start_min_weight: float = 0.1
    # Envoy's per-cluster limit on requests per upstream connection; 0 = unlimited.
    max_requests_per_connection: int = 0
    # per_connection_buffer_limit_bytes: the most of a response body read from one of
    # the cluster's connections before it is passed on (Envoy's default 1 MiB).
    buffer_limit: int = 1024 * 1024
    # close_connections_on_host_health_failure: a host that fails active health checking
    # has its TCP proxy connections closed (HTTP pools are replaced on any health change).
    close_on_health_failure: bool = False
    # Upstream idle connection timeout (common_http_protocol_options.idle_timeout);
    # Envoy's default is 1 hour. 0 = disabled.
    idle_timeout_s: float = 3600.0
    # STRICT_DNS: how the master resolves hostnames (Envoy's dns_lookup_family: "AUTO",
    # "V4_ONLY", "V6_ONLY", "V4_PREFERRED" or "ALL") and how often (dns_refresh_rate,
    # default 5 s).
    dns_lookup_family: str = "AUTO"
    dns_refresh_rate_s: float = 5.0
    # Active health checking (at most one, as in Envoy); the master runs it.
    health_checks: tuple[HealthCheck, ...] = ()
    # Circuit breakers (Envoy's DEFAULT-priority thresholds, defaults as Envoy's), for
    # the whole proxy: each worker enforces ceil(limit / Epoch.worker_count) (see
    # docs/configuration.md, circuit breakers; more cb_* fields at the end).
    cb_max_connections: int = 1024
    cb_max_requests: int = 1024
    # EDS: the ClusterLoadAssignment name (eds_cluster_config.service_name, else the
    # cluster's name); the master fills ``endpoints`` from it.
    eds_service_name: str = ""
    # explicit_http_config.http2_protocol_options: HTTP/2 to the hosts (routes forward
    # with proxyd.worker.h2_upstream; xDS gRPC streams and gRPC health checks need it).
    http2: bool = False
    # explicit_http_config.http_protocol_options.header_key_format: "" (request header
    # names go upstream lower case), "proper_case_words" (in Proper-Case) or
    # "preserve_case" (no change for requests; a listener's preserve_case wins over both).
    header_key_format: str = ""
    eds_source: ConfigSource | None = None
    # STRICT_DNS and LOGICAL_DNS: TTLs, failure backoff and the resolver (master only;
    # None = Envoy's defaults, see proxyd.master.dns).
    dns: DnsSettings | None = None
    # Envoy's outlier_detection (None = off): workers report per-host outcomes, the
    # master decides (proxyd.master.outlier) and sets Endpoint.ejected.
    outlier_detection: OutlierDetection | None = None
    # Priorities and localities (proxyd.protocol.priority): the load assignment's
    # policy.overprovisioning_factor (percent), common_lb_config.healthy_panic_threshold
    # (whole percent, truncated as Envoy does; 0 = never panic) and whether
    # common_lb_config.locality_weighted_lb_config is set.
    overprovisioning_factor: int = 140
    healthy_panic_threshold: int = 50
    locality_weighted_lb: bool = False
    # common_lb_config.override_host_status: the health statuses of a host a stateful
    # session may name (proxyd.filters.stateful_session.override).
    override_host_status: tuple[str, ...] = ("UNKNOWN", "HEALTHY", "DEGRADED")
    # Circuit breakers, continued: max_pending_requests, max_retries and retry_budget
    # (budget_percent, min_retry_concurrency); a budget percent below 0 = no
    # retry_budget (max_retries applies), else it replaces max_retries.
    cb_max_pending_requests: int = 1024
    cb_max_retries: int = 3
    cb_retry_budget_percent: float = -1.0
    cb_min_retry_concurrency: int = 3
    # The HIGH routing priority's thresholds (for routes with RouteAction.priority
    # HIGH; the cb_* fields above are the DEFAULT priority's), Envoy's defaults when
    # the config has no HIGH entry.
    cb_high: CircuitBreakerThresholds = dataclasses.field(
        default_factory=lambda: CircuitBreakerThresholds()
    )
    # upstream_connection_options.tcp_keepalive: SO_KEEPALIVE on upstream connections
    # with TCP_KEEPCNT, TCP_KEEPIDLE, TCP_KEEPINTVL (0 = the system's).
    tcp_keepalive: bool = False
    keepalive_probes: int = 0
    keepalive_time_s: int = 0
    keepalive_interval_s: int = 0
    # RING_HASH (ring_hash_lb_config: minimum/maximum_ring_size, hash_function "XX_HASH"
    # or "MURMUR_HASH_2") and MAGLEV (maglev_lb_config.table_size), Envoy's defaults.
    ring_min_size: int = 1024
    ring_max_size: int = 8388608
    ring_hash_function: str = "XX_HASH"
    maglev_table_size: int = 65537
    # track_cluster_stats: the timeout budget and request/response size histograms
    # (proxyd.worker.router.track_cluster_stats).
    track_timeout_budgets: bool = False
    track_request_response_sizes: bool = False
    # transport_socket envoy.transport_sockets.tls (UpstreamTlsContext): TLS to the
    # hosts (proxyd.worker.upstream_tls); None = plaintext.
    tls: UpstreamTls | None = None
    # transport_socket_matches: a host whose metadata a match selects gets its
    # transport socket instead of ``tls`` (transport_for).
    tls_matches: tuple[TlsMatch, ...] = ()
    # use_downstream_protocol_config with http2_protocol_options: HTTP/2 to the hosts
    # for requests that came over HTTP/2, HTTP/1.1 for the others.
    http2_downstream: bool = False
    # Its Http2ProtocolOptions: max_concurrent_streams (streams proxyd opens on one
    # connection, besides the peer's limit), the windows its connections advertise
    # (0: proxyd's own, proxyd.worker.h2_pool).
    h2_max_streams: int = 0
    h2_stream_window: int = 0
    h2_connection_window: int = 0
    # auto_config (with TLS): each host speaks what ALPN chose on its first connection
    # (proxyd.worker.h2_upstream.by_alpn); http2_downstream is set too (both pools).
    alpn_auto: bool = False


@dataclass(frozen=True, slots=True)
class TlsMatch:
    """One of a cluster's ``transport_socket_matches``: the labels a host's
    ``envoy.transport_socket_match`` metadata must all have (key, canonical JSON value),
    and the transport socket it then uses (None: plaintext, ``raw_buffer``)."""

    name: str
    labels: tuple[tuple[str, str], ...]
    tls: UpstreamTls | None


def transport_for(cluster: Cluster, endpoint: Endpoint) -> UpstreamTls | None:
    """The transport socket of ``endpoint`` in ``cluster``, as Envoy chooses: the first
    match whose labels the endpoint's metadata has, else the first its locality's
    metadata has, else the cluster's ``transport_socket``."""
    if not cluster.tls_matches:
        return cluster.tls
    for labels in (endpoint.tls_labels, endpoint.locality_tls_labels):
        have = set(labels)
        for m in cluster.tls_matches:
            if all(label in have for label in m.labels):
                return m.tls
    return cluster.tls


@dataclass(frozen=True, slots=True)
class CircuitBreakerThresholds:
    """One routing priority's circuit breaker thresholds (Envoy's
    CircuitBreakers.Thresholds with Envoy's defaults), for the whole proxy; a
    ``retry_budget_percent`` below 0 = no retry_budget (max_retries applies)."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    retry_budget_percent: float = -1.0
    min_retry_concurrency: int = 3


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """How the master refreshes a DNS cluster's names; workers never read it."""

    # respect_dns_ttl: refresh each name after its record TTL (dns_refresh_rate if 0).
    respect_dns_ttl: bool = False
    # dns_failure_refresh_rate (base, max); 0 = retry at dns_refresh_rate.
    failure_base_s: float = 0.0
    failure_max_s: float = 0.0
    # dns_jitter: up to this much later than due, at random.
    jitter_s: float = 0.0
    # typed_dns_resolver_config (c-ares): name servers as (ip, port); () = resolv.conf.
    resolvers: tuple[tuple[str, int], ...] = ()
    resolvers_as_fallback: bool = False
    use_tcp: bool = False
    no_default_search_domain: bool = False
