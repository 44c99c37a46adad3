"""The epoch: an immutable, plain-data snapshot of everything a worker needs.

The master compiles Envoy configuration into an :class:`Epoch` (see
``proxyd.config``) and sends it to every worker as one msgpack frame. Workers never
see protobuf; they compile what they need (matchers, balancers, log plans) from these
values once per epoch.

Every class here is a frozen dataclass of plain values (str, int, float, bool,
tuples of the same, or other classes from this module), so :func:`to_wire` and
:func:`from_wire` can turn any of them into msgpack-encodable lists and back without a
per-class encoder. Field order is the wire order: append new fields at the end with a
default, and bump ``proxyd.ipc.WIRE_VERSION`` when a change is not backward compatible.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

# -- clusters -------------------------------------------------------------------------


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
class ConfigSource:
    """Envoy's core.v3.ConfigSource: where the master fetches an xDS resource type.

    Only the master reads it (``proxyd.master.xds``); it rides in the epoch with the
    listener or cluster that names it."""

    # "path" (a watched file), "rest" (REST-JSON polling), "grpc" (a per-type gRPC
    # stream) or "ads" (the bootstrap's aggregated stream).
    kind: str
    path: str = ""
    # rest/grpc: the static cluster of the management server.
    cluster: str = ""
    refresh_delay_s: float = 0.0
    request_timeout_s: float = 1.0
    initial_fetch_timeout_s: float = 15.0
    node_on_first_message_only: bool = False


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
    # explicit_http_config.http2_protocol_options: only xDS gRPC streams use such a
    # cluster (routes may not name it), so workers never see HTTP/2 upstreams.
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


# -- routes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StringMatch:
    """Envoy's ``type.matcher.v3.StringMatcher``."""

    # "exact", "prefix", "suffix", "contains" or "safe_regex".
    kind: str
    value: str
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """Envoy's ``config.route.v3.HeaderMatcher``; ``name`` is lower case."""

    name: str
    # "present" (match is None), or a string match. "present_match: false" is
    # expressed as kind "present" with invert_match True.
    match: StringMatch | None
    invert_match: bool = False
    # Envoy's treat_missing_header_as_empty.
    treat_missing_as_empty: bool = False


@dataclass(frozen=True, slots=True)
class RuntimeFraction:
    """Envoy's ``core.v3.RuntimeFractionalPercent``: its default_value (``numerator``
    out of ``denominator``: 100, 10000 or 1000000), unless the runtime has a value for
    ``runtime_key`` (``proxyd.protocol.runtime.Snapshot.fraction``)."""

    runtime_key: str
    numerator: int
    denominator: int = 100


@dataclass(frozen=True, slots=True)
class RouteMatch:
    # "prefix", "path", "safe_regex" (a full match of the path, without the query) or
    # "path_separated_prefix" (the prefix, then the end of the path or a "/").
    kind: str
    value: str
    case_sensitive: bool = True
    headers: tuple[HeaderMatch, ...] = ()
    # RouteMatch.runtime_fraction (None: the route always passes this test).
    runtime_fraction: RuntimeFraction | None = None
    # RouteMatch.query_parameters: every one must match.
    query: tuple[QueryMatch, ...] = ()
    # RouteMatch.grpc: only gRPC requests (content-type application/grpc[+...]).
    grpc: bool = False


@dataclass(frozen=True, slots=True)
class QueryMatch:
    """Envoy's ``config.route.v3.QueryParameterMatcher``: the first value of parameter
    ``name`` in the query string, as it is (not percent-decoded; a parameter without
    "=" has the value ""), must match ``match``; with no ``match``, the parameter must
    be there (``present``) or not (present_match false)."""

    name: str
    match: StringMatch | None = None
    present: bool = True


@dataclass(frozen=True, slots=True)
class HashPolicy:
    """One RouteAction.HashPolicy (proxyd.protocol.hash_policy): ``kind`` is "header"
    (``name`` the lower-case header, with an optional regex rewrite of its values),
    "cookie" (``name``; ``ttl_s`` -1 when the policy has no ttl, else a cookie is made
    when the request has none, with ``path`` and ``attributes``), "source_ip" or
    "query_parameter" (``name``)."""

    kind: str
    name: str = ""
    terminal: bool = False
    regex: str = ""
    substitution: str = ""
    ttl_s: int = -1
    path: str = ""
    # Cookie attributes as (name, value) pairs ("" value: the name alone).
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    match: RouteMatch
    cluster: str
    # Route timeout (RouteAction.timeout); Envoy's default is 15 s; 0 = disabled.
    timeout_s: float = 15.0
    # RouteAction.priority, "DEFAULT" or "HIGH": which circuit breaker thresholds and
    # connection pool of the cluster the route's requests use.
    priority: str = "DEFAULT"
    # typed_per_filter_config resolved for this route: the most specific of the
    # route's, its virtual host's and its route configuration's, by filter name.
    filter_configs: tuple[FilterOverride, ...] = ()
    # A route with one of these answers itself and names no cluster ("").
    redirect: Redirect | None = None
    direct_response: DirectResponse | None = None
    # RouteAction's rewrites of what goes upstream: prefix_rewrite (None: not set; ""
    # rewrites to nothing), regex_rewrite (pattern and RE2 substitution, "" = not set),
    # host_rewrite_literal ("" = not set).
    prefix_rewrite: str | None = None
    regex_rewrite: str = ""
    regex_substitution: str = ""
    host_rewrite: str = ""
    # host_rewrite_header (lower case; "" = not set) and auto_host_rewrite.
    host_rewrite_header: str = ""
    auto_host_rewrite: bool = False
    # The header mutations of the route, its virtual host and its route configuration
    # that have any, in the order Envoy evaluates them (the last one wins).
    header_mutations: tuple[HeaderMutations, ...] = ()
    # RouteAction.retry_policy, else the virtual host's (None: neither, and the virtual
    # host does not include_request_attempt_count).
    retry: RetryPolicy | None = None
    # RouteAction.cluster_header: the request header (lower case) that names the
    # cluster ("" = not set; then ``cluster`` is "").
    cluster_header: str = ""
    # RouteAction.weighted_clusters (empty: not set; then ``cluster`` is ""), and its
    # header_name (lower case): the header whose uint64 value picks the cluster in place
    # of a random number.
    weighted: tuple[WeightedTarget, ...] = ()
    weight_header: str = ""
    # RouteAction.cluster_not_found_response_code as the status (503, 404 or 500): the
    # answer when the route's cluster does not exist (RDS, cluster_header).
    cluster_not_found_status: int = 503
    # RouteAction.max_stream_duration: whether the message is set (Envoy then rewrites a
    # gRPC request's grpc-timeout), and its max_stream_duration (None: not set, the
    # connection manager's applies; 0: none for this route).
    stream_duration_set: bool = False
    max_stream_duration_s: float | None = None
    # max_stream_duration.grpc_timeout_header_max (None: not set; 0: no cap) and
    # grpc_timeout_header_offset (0: none): a grpc-timeout header's timeout replaces
    # the stream limit (proxyd.worker.durations).
    grpc_timeout_header_max_s: float | None = None
    grpc_timeout_header_offset_s: float = 0.0
    # The deprecated RouteAction.max_grpc_timeout (None: not set) and
    # grpc_timeout_offset, used only without max_stream_duration: a gRPC request's
    # router timeout from its grpc-timeout header.
    max_grpc_timeout_s: float | None = None
    grpc_timeout_offset_s: float = 0.0
    # RouteAction.hash_policy, in order (empty: none; used by RING_HASH and MAGLEV
    # clusters only).
    hash_policy: tuple[HashPolicy, ...] = ()
    # RouteAction.upgrade_configs: (lower-case upgrade type, enabled) overriding the
    # connection manager's default for the type on this route.
    upgrades: tuple[tuple[str, bool], ...] = ()
    # RouteAction.request_mirror_policies (proxyd.worker.mirror).
    mirrors: tuple[MirrorPolicy, ...] = ()
    # RouteAction.host_rewrite_path_regex: the pattern ("" = not set) and RE2
    # substitution that make the Host from the path (without its query).
    host_rewrite_regex: str = ""
    host_rewrite_substitution: str = ""
    # RouteAction.idle_timeout: the stream idle timeout on this route in place of the
    # connection manager's (None: not set; 0: none).
    idle_timeout_s: float | None = None
    # Route.decorator.operation: the name of a traced request's span ("" = not set).
    decorator_operation: str = ""
    # Route.decorator.propagate: the operation goes to the other party in
    # x-envoy-decorator-operation (the response of an ingress span, the upstream
    # request of an egress one).
    decorator_propagate: bool = True
    # Route.tracing (None: not set).
    tracing: RouteTracing | None = None


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    """One RouteAction.RequestMirrorPolicy: the shadow cluster (``cluster``, or the one
    the ``cluster_header`` request header names, lower case), the share of requests
    shadowed (None: all) and whether the shadow's Host gets "-shadow"
    (disable_shadow_host_suffix_append). trace_sampled changes nothing without tracing."""

    cluster: str = ""
    cluster_header: str = ""
    fraction: RuntimeFraction | None = None
    host_suffix: bool = True


@dataclass(frozen=True, slots=True)
class WeightedTarget:
    """One WeightedCluster.ClusterWeight: the cluster, its weight, and what it changes
    of the route: its own header mutations (evaluated before the route's, as Envoy
    does), host_rewrite_literal ("" = the route's), and the typed_per_filter_config the
    requests it gets see: the most specific of its own, the route's, the virtual
    host's and the route configuration's."""

    name: str
    weight: int
    header_mutations: HeaderMutations | None = None
    host_rewrite: str = ""
    filter_configs: tuple[FilterOverride, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderAdd:
    """One HeaderValueOption of a ``*_headers_to_add``: the name (lower case), the
    value as configured (``%OPERATOR%`` substitutions checked at load), its
    append_action by name and keep_empty_value."""

    name: str
    value: str
    action: str = "APPEND_IF_EXISTS_OR_ADD"
    keep_empty: bool = False


@dataclass(frozen=True, slots=True)
class HeaderMutations:
    """The header changes of one level (route configuration, virtual host or route);
    names lower case."""

    request_add: tuple[HeaderAdd, ...] = ()
    request_remove: tuple[str, ...] = ()
    response_add: tuple[HeaderAdd, ...] = ()
    response_remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """config.route.v3.RetryPolicy as the router applies it (proxyd.protocol.retry)."""

    # retry_on as configured (comma-separated condition names; "" = none).
    retry_on: str = ""
    num_retries: int = 1
    # per_try_timeout (0 = none; also 0 when not below a non-zero route timeout).
    per_try_timeout_s: float = 0.0
    # retry_back_off: base_interval and max_interval (default 10 x base).
    base_interval_ms: int = 25
    max_interval_ms: int = 250
    retriable_status_codes: tuple[int, ...] = ()
    # VirtualHost.include_request_attempt_count: x-envoy-attempt-count upstream.
    include_attempt_count: bool = False
    # retry_host_predicate previous_hosts: a retry's host is picked again (up to
    # host_selection_retry_max_attempts more times) while it is one already tried.
    avoid_previous_hosts: bool = False
    host_selection_retry_max_attempts: int = 1
    # per_try_idle_timeout (0 = none): each attempt ends when nothing came from the
    # upstream for this long, from when it has a connection.
    per_try_idle_timeout_s: float = 0.0
    # retry_priority previous_priorities: its update_frequency (0 = no retry priority):
    # every that many attempts, the priority levels attempted so far get no load.
    priority_update_frequency: int = 0
    # retriable_headers (retry_on retriable-headers: a response matching any is retried)
    # and retriable_request_headers (a request matching none is never retried).
    retriable_headers: tuple[HeaderMatch, ...] = ()
    retriable_request_headers: tuple[HeaderMatch, ...] = ()
    # rate_limited_retry_back_off: the response headers that say when to retry (lower-case
    # name, "SECONDS" or "UNIX_TIMESTAMP") and the longest such wait (ms).
    reset_headers: tuple[tuple[str, str], ...] = ()
    reset_max_interval_ms: int = 300_000
    # hedge_policy hedge_on_per_try_timeout (the route's, else its virtual host's): a
    # per-try timeout does not end the attempt; a retry runs beside it and the first
    # usable response wins (proxyd.worker.hedging).
    hedge_on_per_try_timeout: bool = False


@dataclass(frozen=True, slots=True)
class Redirect:
    """Route.redirect (``config.route.v3.RedirectAction``); "" = not set."""

    # scheme_redirect, or "https" for https_redirect.
    scheme: str = ""
    host: str = ""
    # ":<port_redirect>" (Envoy keeps it with its colon), "" when not set.
    port: str = ""
    path: str = ""
    # prefix_rewrite (None when not set: "" is a rewrite to "/").
    prefix_rewrite: str | None = None
    # regex_rewrite: the pattern and its substitution (RE2 syntax, \\1 for a group).
    regex: str = ""
    substitution: str = ""
    strip_query: bool = False
    # response_code as the HTTP status: 301, 302, 303, 307 or 308.
    status: int = 301


@dataclass(frozen=True, slots=True)
class DirectResponse:
    """Route.direct_response: the status and the body (read when the config loaded)."""

    status: int
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class FilterOverride:
    """A route's config for one HTTP filter (typed_per_filter_config[name]).

    ``config`` is the filter's per-route plain data (None when the entry only enables
    or disables it: ``envoy.config.route.v3.FilterConfig``); ``disabled`` turns the
    filter off on the route, and ``enabled`` turns on a filter the HCM disabled."""

    name: str
    config: Any = None
    disabled: bool = False
    enabled: bool = False


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    # Lower-cased as configured: exact, "*.suffix", "prefix*" or "*". A domain may
    # carry a port ("example.com:8080"); Envoy matches that against the full Host.
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    # VirtualHost.matcher (the generic matching API in place of the route list): the
    # tree, whose actions name routes by their index in ``routes`` (None: the routes
    # are tried in order). proxyd.protocol.route_tree.
    matcher: RouteMatcher | None = None


@dataclass(frozen=True, slots=True)
class RoutePredicate:
    """A matcher_list predicate: ``kind`` "single" (the ``input`` header's value against
    ``match``; ":path" and ":authority" are the request's), or "and", "or", "not" over
    ``children``."""

    kind: str
    input: str = ""
    match: StringMatch | None = None
    children: tuple[RoutePredicate, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteOnMatch:
    """What a matcher gives on a match: a nested ``matcher``, or the indexes (in the
    virtual host's ``routes``) of a Route action (one) or a RouteList's routes (tried in
    order, each with its own match); in a filter's matcher (:class:`FilterMatcher`), the
    index of its action."""

    matcher: RouteMatcher | None = None
    routes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteMatchEntry:
    """A map key (``exact``/``prefix`` trees) or a predicate (``list``) and its OnMatch."""

    key: str
    predicate: RoutePredicate | None
    on_match: RouteOnMatch


@dataclass(frozen=True, slots=True)
class RouteMatcher:
    """xds.type.matcher.v3.Matcher over a request: ``kind`` "exact" or "prefix" (a
    matcher_tree's exact_match_map / prefix_match_map on the ``input`` header) or
    "list" (a matcher_list, first matching predicate wins); ``on_no_match`` when
    nothing matched."""

    kind: str
    input: str
    entries: tuple[RouteMatchEntry, ...]
    on_no_match: RouteOnMatch | None = None


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    # internal_only_headers (lower case): removed from a request that is not internal
    # before it is routed.
    internal_only_headers: tuple[str, ...] = ()


# -- listeners ------------------------------------------------------------------------


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

    @property
    def writer_key(self) -> str:
        """The key of the worker's writer: the file path, or "stdout:" / "stderr:"
        ("" for an OpenTelemetry log, which has an exporter instead)."""
        if self.sink == "otel":
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
class CustomTag:
    """HttpConnectionManager.tracing.custom_tags: a tag every span of the listener gets;
    ``kind`` is "literal" (``value``), "request_header" (``value`` is the lower-case
    header name) or "environment" (resolved by the master: a literal then)."""

    tag: str
    kind: str
    value: str
    default: str = ""


@dataclass(frozen=True, slots=True)
class RouteTracing:
    """Route.tracing: the samplings (numerator, denominator) that replace the
    connection manager's for the route's requests (None: not set), and custom tags
    added to the connection manager's."""

    client_sampling: tuple[int, int] | None = None
    random_sampling: tuple[int, int] | None = None
    overall_sampling: tuple[int, int] | None = None
    custom_tags: tuple[CustomTag, ...] = ()


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
class TlsCertificate:
    """One certificate of a DownstreamTlsContext: PEM bytes read by the master (from the
    file or inline value), so workers never open config files."""

    certificate_chain: bytes
    private_key: bytes
    # The certificate's DNS SANs (lower case; its CN when it has none): which SNI
    # chooses it when a chain has several certificates.
    dns_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SanMatch:
    """Envoy's SubjectAltNameMatcher: a SAN of ``san_type`` ("DNS", "URI", "EMAIL",
    "IP_ADDRESS") that ``matcher`` accepts."""

    san_type: str
    matcher: StringMatch


@dataclass(frozen=True, slots=True)
class DownstreamTls:
    """A filter chain's ``envoy.transport_sockets.tls`` (DownstreamTlsContext)."""

    certificates: tuple[TlsCertificate, ...]
    # "TLSv1_0" .. "TLSv1_3"; Envoy's downstream defaults are TLSv1_2 and TLSv1_3.
    min_version: str = "TLSv1_2"
    max_version: str = "TLSv1_3"
    # OpenSSL cipher names for TLS 1.2 and below ("" entries never; () = default).
    cipher_suites: tuple[str, ...] = ()
    # One OpenSSL curve name (CPython's ssl sets one), "" = OpenSSL's default list.
    ecdh_curve: str = ""
    # ALPN protocols offered, in preference order (() = no ALPN).
    alpn: tuple[str, ...] = ()
    # validation_context.trusted_ca as PEM (b"": client certificates are not asked for).
    trusted_ca: bytes = b""
    require_client_certificate: bool = False
    san_matchers: tuple[SanMatch, ...] = ()
    # session_timeout (0: OpenSSL's default) and disable_stateless_session_resumption.
    session_timeout_s: float = 0.0
    session_tickets: bool = True
    # FilterChain.transport_socket_connect_timeout (0: the HCM's idle timeout bounds it).
    handshake_timeout_s: float = 0.0


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """A cluster's ``envoy.transport_sockets.tls`` (UpstreamTlsContext): how proxyd
    originates TLS to the cluster's hosts. PEM bytes read by the master."""

    # The SNI sent ("" = none).
    sni: str = ""
    # A client certificate (mTLS to the upstream), or None.
    certificate: TlsCertificate | None = None
    # Envoy's upstream defaults: TLSv1_2 .. TLSv1_2.
    min_version: str = "TLSv1_2"
    max_version: str = "TLSv1_2"
    cipher_suites: tuple[str, ...] = ()
    alpn: tuple[str, ...] = ()
    # validation_context.trusted_ca (b"": the chain is not verified, as in Envoy).
    trusted_ca: bytes = b""
    # match_typed_subject_alt_names (and the deprecated match_subject_alt_names as
    # DNS matchers): the upstream certificate must have a SAN one of them accepts.
    san_matchers: tuple[SanMatch, ...] = ()
    allow_renegotiation: bool = False
    # max_session_keys: 0 = no session resumption, else one session kept per host.
    max_session_keys: int = 1
    # The cluster's HttpProtocolOptions.upstream_http_protocol_options: the SNI is the
    # request's Host (auto_sni), the upstream's certificate must have it as a DNS SAN
    # (auto_san_validation); override_auto_sni_header names another request header.
    auto_sni: bool = False
    auto_san_validation: bool = False
    sni_header: str = ""


@dataclass(frozen=True, slots=True)
class NetworkRbac:
    """``envoy.filters.network.rbac`` before a chain's connection manager or TCP proxy:
    ``stat_prefix`` (Envoy's ``<stat_prefix>rbac.``) and ``config``, the HTTP RBAC
    filter's plain rules (:mod:`proxyd.filters.rbac.config`), judged once per connection
    on its first bytes (proxyd.worker.network_rbac)."""

    stat_prefix: str
    config: Any


@dataclass(frozen=True, slots=True)
class FilterChain:
    """One of a listener's filter chains, with its ``filter_chain_match`` (the fields
    proxyd supports: ``server_names``, exact or ``*.``-wildcard, and
    ``transport_protocol``, "tls" / "raw_buffer" / "" for any)."""

    hcm: HttpConnectionManager
    tls: DownstreamTls | None = None
    name: str = ""
    server_names: tuple[str, ...] = ()
    transport_protocol: str = ""
    # Network RBAC filters before the connection manager, in order.
    network_rbac: tuple[NetworkRbac, ...] = ()


@dataclass(frozen=True, slots=True)
class TcpCluster:
    """One entry of TcpProxy.weighted_clusters."""

    name: str
    weight: int


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
        if self.hcm is None:
            return ()
        if not self.chains:
            return (self.hcm,)
        extra = (self.default_chain,) if self.default_chain is not None else ()
        return (self.hcm, *(c.hcm for c in (*self.chains[1:], *extra)))

    @property
    def access_log_keys(self) -> set[str]:
        """The writer keys of every access log of the listener and its network filters
        (every filter chain's); an OpenTelemetry log has none (it has an exporter)."""
        logs = [*self.access_logs]
        for hcm in self.hcms:
            logs += hcm.access_logs
        if self.tcp_proxy is not None:
            logs += self.tcp_proxy.access_logs
        return {al.writer_key for al in logs if al.otel is None}

    @property
    def stat_name(self) -> str:
        """Envoy's listener stat scope: ``listener.<address>_<port>`` (the configured
        port, 0 included), or ``listener.<path>`` for a pipe."""
        return self.address if self.pipe else f"{self.address}_{self.port}"

    @property
    def address_text(self) -> str:
        """The configured address as Envoy writes it in messages: "ip:port" or a path."""
        return self.address if self.pipe else f"{self.address}:{self.port}"


# -- runtime --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuntimeValue:
    """One key of the runtime, its layers merged (Envoy's ``Runtime::Snapshot`` entry).

    The master parses each value once (``proxyd.config.runtime``): ``uint`` is Envoy's
    ``uint_value_`` (a number >= 0, floored; None otherwise) and ``numerator`` /
    ``denominator`` its ``fractional_percent_value_`` (denominator 0: none)."""

    key: str
    raw: str
    uint: int | None = None
    numerator: int = 0
    denominator: int = 0


# -- the epoch ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Epoch:
    number: int
    listeners: tuple[Listener, ...]
    clusters: tuple[Cluster, ...]
    # How many workers share the proxy-wide limits (set by the master when publishing).
    worker_count: int = 1
    # --drain-time-s: how long an updated or removed listener's old connections may
    # stay open (idle ones are closed after it; set by the master when publishing).
    drain_time_s: float = 600.0
    # The global downstream connection limit across every worker (proxyd.cx_limit;
    # -1: none) and whether every accepted connection counts toward it (the runtime
    # key) or only those the limit allowed (the overload manager's monitor). Set by
    # the master when publishing.
    global_cx_limit: int = -1
    global_cx_count_all: bool = False
    # How often a worker sends a Heartbeat (half the worker watchdog's interval; 0:
    # none, the StatsReport once a second is the heartbeat). Set by the master.
    heartbeat_interval_s: float = 0.0
    # The bootstrap's node.id and node.cluster (add_user_agent sends them upstream).
    node_id: str = ""
    node_cluster: str = ""
    # The runtime (layered_runtime, every layer merged), by key order; set by the
    # master when publishing (proxyd.master.runtime).
    runtime: tuple[RuntimeValue, ...] = ()

    def cluster(self, name: str) -> Cluster | None:
        for c in self.clusters:
            if c.name == name:
                return c
        return None


# -- wire form ------------------------------------------------------------------------

T = TypeVar("T")


def to_wire(value: Any) -> Any:
    """A dataclass from this module → nested lists of plain values (msgpack-ready)."""
    # Typed as plain ``type``: mypy does not see ``type[Any]`` as Hashable for @cache.
    cls: type = type(value)
    names = _field_names(cls)
    if names is not None:
        return [to_wire(getattr(value, name)) for name in names]
    if isinstance(value, tuple):
        return [to_wire(v) for v in value]
    return value


@cache
def _field_names(cls: type) -> tuple[str, ...] | None:
    if dataclasses.is_dataclass(cls):
        return tuple(f.name for f in dataclasses.fields(cls))
    return None


class EpochWire:
    """:func:`to_wire` for successive epochs of one master.

    Listeners and clusters are immutable and an epoch keeps the objects of the previous
    one that did not change (see ``proxyd.master.xds.state``), so their wire form is
    kept with them: an EDS update to one of 1,000 clusters encodes one cluster."""

    def __init__(self) -> None:
        self._parts: dict[int, tuple[Any, Any]] = {}

    def encode(self, epoch: Epoch) -> list[Any]:
        parts: dict[int, tuple[Any, Any]] = {}

        def part(obj: Any) -> Any:
            kept = self._parts.get(id(obj))
            wire = kept[1] if kept is not None and kept[0] is obj else to_wire(obj)
            parts[id(obj)] = (obj, wire)
            return wire

        out = [to_wire(getattr(epoch, name)) for name in _field_names(Epoch) or ()]
        index = {f.name: i for i, f in enumerate(dataclasses.fields(Epoch))}
        out[index["listeners"]] = [part(x) for x in epoch.listeners]
        out[index["clusters"]] = [part(c) for c in epoch.clusters]
        self._parts = parts
        return out


@cache
def _decoders(cls: type) -> tuple[Any, ...]:
    hints = typing.get_type_hints(cls)
    return tuple(_decoder_for(hints[f.name]) for f in dataclasses.fields(cls))


def _decoder_for(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return lambda v, cls=tp: _decode(cls, v)
    if origin is tuple:
        inner = _decoder_for(typing.get_args(tp)[0])
        if inner is None:
            return tuple
        return lambda v: tuple(inner(x) for x in v)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        inner = _decoder_for(args[0])
        if inner is None:
            return None
        return lambda v: None if v is None else inner(v)
    return None  # a plain value: used as is


def _decode(cls: type[T], data: list[Any]) -> T:
    plain: type = cls  # mypy does not see ``type[T]`` as Hashable for @cache
    decs = _decoders(plain)
    args = [v if d is None else d(v) for d, v in zip(decs, data, strict=False)]
    return cls(*args)


def from_wire(cls: type[T], data: list[Any]) -> T:
    """The inverse of :func:`to_wire` for a dataclass ``cls`` from this module."""
    return _decode(cls, data)
