"""Epoch values of route configurations: matches, actions, retries, mirrors, header
mutations, virtual hosts and the generic matcher tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    # upgrade_configs CONNECT with connect_config: proxyd answers a CONNECT itself (200)
    # and tunnels to a host of the cluster (else the CONNECT goes upstream as it came).
    connect_terminate: bool = False
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
