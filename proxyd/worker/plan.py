"""An epoch compiled for the request path: one :class:`ListenerPlan` per listener.

Everything a request needs that follows from configuration is resolved here, once per
epoch: the route table, which headers the parser collects, the route → cluster, pool and
timeout table, the header policy, the access-log plans and the stat scopes. A request
looks up its listener's plan when it starts and uses that plan to the end, so an epoch
swap never changes a request in flight.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from proxyd.epoch import (
    Epoch,
    FilterOverride,
    HeaderMutations,
    Http2Options,
    HttpFilter,
    Listener,
    RetryPolicy,
    Route,
    RouteTracing,
)
from proxyd.epoch_types.listeners import same_but_secrets
from proxyd.filters.api import EpochFacts, FilterFactory
from proxyd.filters.runtimes import FACTORIES
from proxyd.protocol.access_log import NOT_SET, LogRecord
from proxyd.protocol.chain_match import ChainSelector
from proxyd.protocol.h2_translate import H2Plan
from proxyd.protocol.hash_policy import HashPlan
from proxyd.protocol.header_mutations import MutationPlan
from proxyd.protocol.http1_headers import RequestHeaderPolicy, RequestIdGenerator, server_line
from proxyd.protocol.http1_options import Http1Format, proper_case_head
from proxyd.protocol.redirect import LocalAction, PathRewrite
from proxyd.protocol.routing import RouteTable
from proxyd.protocol.runtime import EMPTY, Snapshot
from proxyd.protocol.xfcc import XfccPlan
from proxyd.worker import otel_access_log
from proxyd.worker.accesslog import AccessLogWriter
from proxyd.worker.accesslog_plan import LogPlan, LogPlans, stream_record
from proxyd.worker.async_client import AsyncClient
from proxyd.worker.chains import ChainChooser, chain_key
from proxyd.worker.cluster_fetch import http_get
from proxyd.worker.durations import GrpcRouteTimeout, RouteDuration
from proxyd.worker.filter_matching import MatchingFactory
from proxyd.worker.grpc_access_log import GrpcLogPlan
from proxyd.worker.h2_retrying import H2RetryingExchange
from proxyd.worker.h2_upstream import H2Exchange, by_alpn, by_downstream_protocol
from proxyd.worker.hedging import HedgingExchange
from proxyd.worker.mirror import MirrorPlan
from proxyd.worker.network_rbac import NetworkRbacPlan
from proxyd.worker.otel_access_log import OtelLogPlan
from proxyd.worker.request_transforms import compile_transforms
from proxyd.worker.retrying import RetryingExchange, RetryPlan
from proxyd.worker.router import Exchange
from proxyd.worker.stats import HttpStats, ListenerStats, StatsStore
from proxyd.worker.stream import Connection, Stream
from proxyd.worker.tcp_proxy import TcpListenerPlan, tcp_plans
from proxyd.worker.tls import TlsPlan
from proxyd.worker.tracing import Tracer, TracingHeaderPolicy
from proxyd.worker.upstream import ClusterState, ConnPool


def compile_filters(
    http_filters: tuple[HttpFilter, ...],
    overrides: tuple[FilterOverride, ...],
    stat_prefix: str,
    stats: StatsStore,
    runtime: Snapshot = EMPTY,
    header_levels: list[Any] | None = None,
    facts: EpochFacts | None = None,
) -> tuple[FilterFactory, ...]:
    """The factories of a route's filters, with its per-route config resolved; those
    disabled on the route (or in the HCM and not enabled by the route) are left out.
    A filter whose factory has ``header_levels`` (header_mutation) adds them to
    ``header_levels``, in chain order, for the route's MutationPlan."""
    if not http_filters:
        return ()
    by_name = {o.name: o for o in overrides}
    out = []
    for f in http_filters:
        o = by_name.get(f.name)
        if o is not None and o.disabled:
            continue
        if f.disabled and (o is None or not (o.enabled or o.config is not None)):
            continue
        scope = stats.named(f"http.{stat_prefix}.")
        if o is None or o.config is None:  # a route field for filters of this type (cors)
            o = by_name.get(f.type_name, o)
        per_route = o.config if o else None
        factory = _factory(f, per_route, scope, runtime, facts)
        if f.matcher is not None:  # ExtensionWithMatcher (proxyd.worker.filter_matching)
            delegates = tuple(
                _factory(a.filter, None, scope, runtime, facts) if a.filter is not None else None
                for a in f.matcher.actions
            )
            factory = MatchingFactory(factory, f.matcher, delegates)
        if factory.decodes or factory.encodes:  # a filter with nothing to do costs nothing
            out.append(factory)
        levels = getattr(factory, "header_levels", None)
        if levels is not None and header_levels is not None:
            header_levels.append(levels)
    chain = tuple(out)
    for factory in chain:
        # A factory that must know the others of its chain (the compressors choose an
        # encoding together, as Envoy's register in the stream's filter state) says so
        # with ``link_chain``.
        link = getattr(factory, "link_chain", None)
        if link is not None:
            link(chain)
    return chain


def _factory(
    f: HttpFilter,
    per_route: Any,
    scope: Any,
    runtime: Snapshot,
    facts: EpochFacts | None,
) -> FilterFactory:
    maker = FACTORIES[f.type_name]
    if getattr(maker, "takes_epoch_facts", False):  # health_check: clusters, node
        # (FactoryMaker leaves facts out: only such factories take it.)
        return cast(Any, maker)(f.name, f.config, per_route, scope, runtime, facts=facts)
    return maker(f.name, f.config, per_route, scope, runtime)


class RoutePlan:
    """What a matched route leads to (``cluster`` and ``pool`` are None when it names no
    cluster). ``pool`` is the cluster's connection pool for the route's priority, with
    that priority's circuit breakers (RouteAction.priority)."""

    __slots__ = (
        "name", "cluster", "pool", "cluster_name", "timeout_s", "timeout_header", "filters",
        "local", "mutations", "retry", "exchange", "header_retry", "pick", "not_found_status",
        "duration", "hash", "mirror", "stream_idle", "decorator", "upgrades", "connect_terminate",
        "decorator_line", "tracing", "read_limit",
    )  # fmt: skip

    def __init__(
        self,
        name: str,
        cluster: ClusterState | None,
        cluster_name: str,
        timeout_s: float,
        priority: str = "DEFAULT",
        stream_idle: float = math.inf,
    ):
        self.name = name
        # Route.decorator.operation: a traced request's span name ("" = not set).
        self.decorator = ""
        # Its x-envoy-decorator-operation line when the decorator propagates (b"": none).
        self.decorator_line = b""
        # Route.tracing (None: not set).
        self.tracing: RouteTracing | None = None
        self.cluster = cluster
        self.pool: ConnPool | None = cluster.pool(priority) if cluster is not None else None
        self.cluster_name = cluster_name
        self.timeout_s = timeout_s
        ms = int(round(timeout_s * 1000))
        # x-envoy-expected-rq-timeout-ms, ready to splice (b"" when there is none).
        self.timeout_header = b"x-envoy-expected-rq-timeout-ms: %d\r\n" % ms if ms else b""
        # The route's HTTP filters before the router (empty: the router alone).
        self.filters: tuple[FilterFactory, ...] = ()
        # A redirect or direct_response route's answer (it has no cluster).
        self.local: LocalAction | None = None
        # The route's header mutations (None: it has none, and pays nothing).
        self.mutations: MutationPlan | None = None
        # The route's retry policy (proxyd.worker.retrying), and the router class that
        # forwards its requests: Exchange, or RetryingExchange with a policy.
        self.retry: RetryPlan | None = None
        self.exchange: Callable[..., Exchange] = Exchange
        # With internal_address_config, and no retry policy: the retry plan an internal
        # request's x-envoy-retry-on asks for (None: no such requests).
        self.header_retry: RetryPlan | None = None
        # weighted_clusters or cluster_header: what picks the plan of the cluster a
        # request goes to, from its headers (None: this plan is the route's own).
        self.pick: WeightedPick | HeaderPick | None = None
        # The answer when the cluster does not exist (cluster_not_found_response_code).
        self.not_found_status = 503
        # RouteAction.max_stream_duration, or the deprecated max_grpc_timeout (None: the
        # route has neither; worker/durations.py): what a request on the route is timed by.
        self.duration: RouteDuration | GrpcRouteTimeout | None = None
        # RouteAction.hash_policy when the cluster balances by hash (RING_HASH, MAGLEV):
        # the request's hash picks the host (None: a plain pick; manager.pick_host).
        self.hash: HashPlan | None = None
        # RouteAction.request_mirror_policies (None: none; worker/mirror.py).
        self.mirror: MirrorPlan | None = None
        # The stream idle timeout of the route's requests: its idle_timeout, else the
        # connection manager's stream_idle_timeout (inf: none).
        self.stream_idle = stream_idle
        # The upgrade types (lower case) the route takes: the connection manager's
        # upgrade_configs with the route's own enabled flags (proxyd.worker.router).
        self.upgrades: frozenset[str] = frozenset()
        # upgrade_configs CONNECT with connect_config: a CONNECT is answered here (200)
        # and tunneled to a host of the cluster (router.Exchange._connect_terminated).
        self.connect_terminate = False
        # One read of a streamed response at most: the listener's and the cluster's
        # per_connection_buffer_limit_bytes, whichever is less (set with a cluster).
        self.read_limit = 0

    def with_timeout(self, timeout_s: float) -> RoutePlan:
        """This plan with another router timeout (a gRPC request's, from its
        grpc-timeout header: GrpcRouteTimeout), x-envoy-expected-rq-timeout-ms with it."""
        rp = copy.copy(self)
        rp.timeout_s = timeout_s
        if self.retry is not None:
            rp.retry = retry = copy.copy(self.retry)
            retry.timeout_s = timeout_s
            if timeout_s and retry.per_try_s >= timeout_s:
                retry.per_try_s = 0.0
            ms = retry.expected_timeout_ms()
        else:
            ms = int(round(timeout_s * 1000))
        rp.timeout_header = b"x-envoy-expected-rq-timeout-ms: %d\r\n" % ms if ms else b""
        return rp

    def set_retry(self, policy: RetryPolicy) -> None:
        self.retry = plan = RetryPlan(policy, self.timeout_s)
        # hedge_policy hedge_on_per_try_timeout: attempts run side by side.
        self.exchange = HedgingExchange if policy.hedge_on_per_try_timeout else RetryingExchange
        ms = plan.expected_timeout_ms()
        self.timeout_header = b"x-envoy-expected-rq-timeout-ms: %d\r\n" % ms if ms else b""


class ProperCaseExchange:
    """``RoutePlan.exchange`` for a cluster whose codec writes request header names in
    Proper-Case (``header_key_format.proper_case_words``): the head is rewritten once,
    then the route's own exchange class runs (only such routes pay for it)."""

    __slots__ = ("exchange",)

    def __init__(self, exchange: Callable[..., Exchange]) -> None:
        self.exchange = exchange

    def __call__(self, stream: Any, plan: Any, rp: Any, host: Any, head: bytes, timers: Any) -> Exchange:  # fmt: skip
        return self.exchange(stream, plan, rp, host, proper_case_head(head), timers)


def route_timeout(r: Route) -> float:
    """The router's timeout for ``r``: none when the route has a max_stream_duration
    message, which Envoy 1.40 then uses in place of ``timeout`` (worker/durations.py)."""
    return 0.0 if r.stream_duration_set else r.timeout_s


class WeightedPick:
    """RouteAction.weighted_clusters: a cluster's plan by weight, as Envoy picks it (a
    random number, or the header_name header's uint64 value, modulo the weights' sum,
    against the running sum of the weights in order)."""

    __slots__ = ("plans", "bounds", "total", "header", "_random")

    def __init__(self, plans: tuple[RoutePlan, ...], weights: tuple[int, ...], header: str):
        self.plans = plans
        bounds = []
        end = 0
        for w in weights:
            end += w
            bounds.append(end)
        self.bounds = tuple(bounds)
        self.total = end
        self.header = header
        self._random = random.Random()

    def __call__(self, headers: dict[str, str]) -> RoutePlan:
        value = -1
        if self.header:
            raw = headers.get(self.header)
            # One value only (repeats arrive joined with ","), all digits, in uint64.
            if raw is not None and raw.isdigit() and raw.isascii() and len(raw) <= 20:
                n = int(raw)
                if n < 1 << 64:
                    value = n
        if value < 0:
            value = self._random.getrandbits(64)
        selected = value % self.total
        for plan, end in zip(self.plans, self.bounds, strict=True):
            if selected < end:
                return plan
        raise AssertionError("the bounds end at the total")  # pragma: no cover


class HeaderPick:
    """RouteAction.cluster_header: the plan of the cluster the header names, made the
    first time a cluster is named (at most one per cluster of the epoch); a request
    without the header, or naming no cluster, gets a plan with no cluster (503)."""

    __slots__ = ("header", "make", "clusters", "plans", "none")

    def __init__(
        self,
        header: str,
        make: Callable[[str], RoutePlan],
        clusters: dict[str, ClusterState],
    ):
        self.header = header
        self.make = make
        self.clusters = clusters
        self.plans: dict[str, RoutePlan] = {}
        self.none = make("")

    def __call__(self, headers: dict[str, str]) -> RoutePlan:
        name = headers.get(self.header)
        if name is None:
            return self.none
        plan = self.plans.get(name)
        if plan is None:
            if name not in self.clusters:
                return self.none
            plan = self.plans[name] = self.make(name)
        return plan


class ListenerPlan:
    # Beside TcpListenerPlan's True: which kind a listener's chain choice found.
    is_tcp = False

    def __init__(
        self,
        listener: Listener,
        clusters: dict[str, ClusterState],
        stats: StatsStore,
        writers: dict[str, AccessLogWriter],
        local_address: str,
        ids: RequestIdGenerator,
        runtime: Snapshot = EMPTY,
        facts: EpochFacts | None = None,
    ) -> None:
        hcm = listener.hcm
        assert hcm is not None  # a TCP proxy listener has a TcpListenerPlan
        self.name = listener.name
        self.listener = listener
        # The key of this plan in the worker's plans: the listener's name, or for one of
        # its filter chains proxyd.worker.chains.chain_key (set by CompiledEpoch).
        self.key = listener.name
        # Several chains: picks one per connection before anything else (set by
        # CompiledEpoch); None for a listener whose one chain takes every connection.
        self.chooser: ChainChooser | None = None
        # Connections accepted under one generation of a listener's config get
        # "connection: close" once an epoch changes that listener (Envoy drains the
        # connections of an updated listener); an unchanged listener keeps its
        # generation across epochs (CompiledEpoch).
        self.generation = object()
        self.listener_stats: ListenerStats = stats.listener(listener.stat_name)
        self.http_stats: HttpStats = stats.http(hcm.stat_prefix)
        # Network RBAC filters before the connection manager (None: none).
        self.network_rbac = (
            NetworkRbacPlan(listener.network_rbac, stats) if listener.network_rbac else None
        )
        # The epoch's runtime resolves the routes' runtime_fraction.
        self.routes = RouteTable(hcm.route_config, runtime)
        self.route_plans: dict[int, RoutePlan] = {}
        # Bytes read from one side before they are written to the other (Envoy's soft
        # per-connection limit; the receive buffers themselves are smaller still).
        self.buffer_limit = max(listener.per_connection_buffer_limit_bytes, 1024)
        hcm_stream_s = hcm.max_stream_duration_s or math.inf
        # The listener's preserve_case formatter travels with the request and wins over
        # a cluster's header_key_format.
        preserve_case = hcm.http1 is not None and hcm.http1.header_key_format == "preserve_case"
        hcm_idle = hcm.stream_idle_timeout_s or math.inf

        def idle_of(r: Route) -> float:
            if r.idle_timeout_s is None:
                return hcm_idle
            return r.idle_timeout_s or math.inf

        filter_headers: set[str] = set()
        # Response header names the filters' on_response_headers read (optional on a
        # factory: FilterFactory's ``response_headers``).
        filter_response: set[str] = set()
        pick_headers: set[str] = set()
        # Header names read by %REQ(..)% / %RESP(..)% in the routes' header values.
        value_req: set[str] = set()
        value_resp: set[str] = set()
        self.stamps = False  # a header value has operators: requests get their times
        retry_headers = False

        def route_plan(
            r: Route,
            cluster_name: str,
            mutations: tuple[HeaderMutations, ...],
            host_rewrite: str,
            filter_configs: tuple[FilterOverride, ...],
        ) -> RoutePlan:
            nonlocal filter_headers, retry_headers
            rp = RoutePlan(
                r.name,
                clusters.get(cluster_name),
                cluster_name,
                route_timeout(r),
                r.priority,
                idle_of(r),
            )
            if rp.cluster is not None:
                rp.read_limit = min(self.buffer_limit, rp.cluster.cluster.buffer_limit)
            rp.not_found_status = r.cluster_not_found_status
            rp.connect_terminate = r.connect_terminate
            if hcm.upgrades or r.upgrades:
                # The route's flag for a type wins; a type only the connection manager
                # lists takes its default; one only the route lists is on when the
                # route enables it (Envoy's createUpgradeFilterChain).
                overrides = dict(r.upgrades)
                defaults = dict(hcm.upgrades)
                rp.upgrades = frozenset(
                    kind
                    for kind in {*defaults, *overrides}
                    if overrides.get(kind, defaults.get(kind, False))
                )
            rp.decorator = r.decorator_operation
            rp.tracing = r.tracing
            if r.decorator_operation and r.decorator_propagate:
                rp.decorator_line = b"x-envoy-decorator-operation: %s\r\n" % (
                    r.decorator_operation.encode("latin-1")
                )
            if r.hash_policy and rp.cluster is not None and rp.cluster.hashing is not None:
                rp.hash = HashPlan(r.hash_policy)
            if r.stream_duration_set:  # its limit, and a gRPC request's grpc-timeout
                rp.duration = RouteDuration(
                    r.max_stream_duration_s,
                    hcm_stream_s,
                    r.grpc_timeout_header_max_s,
                    r.grpc_timeout_header_offset_s,
                )
                filter_headers.add("content-type")
                if r.grpc_timeout_header_max_s is not None:
                    filter_headers.add("grpc-timeout")
            elif r.max_grpc_timeout_s is not None:  # deprecated: the router's timeout
                rp.duration = GrpcRouteTimeout(r.max_grpc_timeout_s, r.grpc_timeout_offset_s)
                filter_headers.update(("content-type", "grpc-timeout"))
            if r.retry is not None and rp.cluster_name:
                rp.set_retry(r.retry)
                retry_headers = True
                assert rp.retry is not None
                filter_headers.update(rp.retry.request_names())
                filter_response.update(rp.retry.response_names())
            elif rp.cluster_name and hcm.transforms and hcm.transforms.internal_address_config:
                rp.header_retry = RetryPlan(RetryPolicy(), rp.timeout_s)
            if rp.cluster is not None and rp.cluster.h2pools:
                # HTTP/2 to the hosts (worker/h2_upstream.py, with a retry policy
                # worker/h2_retrying.py); an internal request's retry headers unused.
                if rp.cluster.cluster.alpn_auto:
                    rp.exchange = by_alpn
                elif not rp.cluster.cluster.http2:
                    rp.exchange = by_downstream_protocol
                elif rp.retry is not None:
                    rp.exchange = H2RetryingExchange
                else:
                    rp.exchange = H2Exchange
                rp.header_retry = None
            elif (
                rp.cluster is not None
                and rp.cluster.cluster.header_key_format == "proper_case_words"
                and not preserve_case
            ):  # the cluster's codec: request names in Proper-Case
                rp.exchange = ProperCaseExchange(rp.exchange)
            if r.redirect is not None or r.direct_response is not None:
                rp.local = LocalAction(r.match, r.redirect, r.direct_response)
            filter_levels: list[Any] = []
            rp.filters = compile_filters(
                hcm.http_filters,
                filter_configs,
                hcm.stat_prefix,
                stats,
                runtime,
                filter_levels,
                facts,
            )
            for f in rp.filters:
                filter_headers |= f.wanted_headers
                filter_response.update(getattr(f, "response_headers", ()))
            if filter_levels:
                # header_mutation: its request steps before the route's mutations (Envoy's
                # router applies those after the filters), its response steps after them
                # (the encoder filters run after the router's), in chain order each way.
                mutations = (
                    *(m for request, _ in filter_levels for m in request),
                    *mutations,
                    *(m for _, response in reversed(filter_levels) for m in response),
                )
            if (
                mutations
                or r.prefix_rewrite is not None
                or r.regex_rewrite
                or host_rewrite
                or r.host_rewrite_header
                or r.auto_host_rewrite
                or r.host_rewrite_regex
            ):
                rewrite = PathRewrite(
                    r.match, r.prefix_rewrite, r.regex_rewrite, r.regex_substitution
                )
                host_regex = (
                    PathRewrite(r.match, None, r.host_rewrite_regex, r.host_rewrite_substitution)
                    if r.host_rewrite_regex
                    else None
                )
                m = rp.mutations = MutationPlan(
                    mutations,
                    rewrite,
                    host_rewrite,
                    r.host_rewrite_header,
                    r.auto_host_rewrite,
                    host_regex,
                )
                if m.request_dynamic or m.response_dynamic:
                    m.record = self.header_record
                    value_req.update(m.request_names)
                    value_resp.update(m.response_names)
                    self.stamps = True
            if r.mirrors and rp.cluster_name:
                rp.mirror = MirrorPlan(r.mirrors, clusters, runtime)
                pick_headers.update(rp.mirror.headers)
            return rp

        def plan_for(r: Route, cluster_name: str) -> RoutePlan:
            return route_plan(r, cluster_name, r.header_mutations, r.host_rewrite, r.filter_configs)

        for vh in hcm.route_config.virtual_hosts:
            for r in vh.routes:
                if r.hash_policy:  # the headers its hash reads, whichever cluster it gets
                    pick_headers |= HashPlan(r.hash_policy).headers
                if r.weighted:
                    # One plan per weighted cluster: its header mutations go first (Envoy
                    # evaluates them before the route's), its filter configs win.
                    variants = tuple(
                        route_plan(
                            r,
                            t.name,
                            (t.header_mutations, *r.header_mutations)
                            if t.header_mutations is not None
                            else r.header_mutations,
                            t.host_rewrite or r.host_rewrite,
                            t.filter_configs,
                        )
                        for t in r.weighted
                    )
                    rp = RoutePlan(r.name, None, "", route_timeout(r), r.priority, idle_of(r))
                    rp.pick = WeightedPick(
                        variants, tuple(t.weight for t in r.weighted), r.weight_header
                    )
                    if r.weight_header:
                        pick_headers.add(r.weight_header)
                elif r.cluster_header:
                    rp = RoutePlan(r.name, None, "", route_timeout(r), r.priority, idle_of(r))
                    rp.pick = HeaderPick(r.cluster_header, partial(plan_for, r), clusters)
                    pick_headers.add(r.cluster_header)
                else:
                    rp = plan_for(r, r.cluster)
                self.route_plans[id(r)] = rp
        # A request no route matches still passes the filters (with their HCM config).
        self.no_route_filters = compile_filters(
            hcm.http_filters, (), hcm.stat_prefix, stats, runtime, facts=facts
        )
        for f in self.no_route_filters:
            filter_headers |= f.wanted_headers
            filter_response.update(getattr(f, "response_headers", ()))
        if (
            filter_headers
            or self.no_route_filters
            or any(rp.filters for rp in self.route_plans.values())
        ):
            # A filter's local reply to a gRPC request is a gRPC reply.
            filter_headers.add("content-type")
        # The access logs (proxyd.worker.accesslog_plan); ``logs`` is empty when the
        # HCM has none, and then a request pays nothing for them.
        # Runtime-keyed access-log filters (runtime_filter) read the epoch's runtime.
        self.access = LogPlans(listener, writers, runtime=runtime, otel=(stats, clusters))
        self.logs: tuple[LogPlan | OtelLogPlan | GrpcLogPlan, ...] = self.access.stream_logs
        # The request hook (DownstreamStart lines, periodic lines) is wanted.
        self.log_hooks = self.access.log_on_new_request or bool(self.access.flush_interval)
        log_req = set(self.access.request_headers) | value_req
        log_resp = set(self.access.response_headers) | value_resp
        # HttpConnectionManager.tracing (proxyd.worker.tracing; None: a request pays
        # nothing for it). A traced request needs its times.
        self.tracer = (
            Tracer(hcm.tracing, clusters, stats, local_address) if hcm.tracing is not None else None
        )
        if self.tracer is not None:
            log_req |= self.tracer.wanted
            log_req |= {  # Route.tracing's request-header tags
                c.value
                for vh in hcm.route_config.virtual_hosts
                for r in vh.routes
                if r.tracing is not None
                for c in r.tracing.custom_tags
                if c.kind == "request_header"
            }
        self.stamps = self.stamps or bool(self.logs) or self.tracer is not None
        if retry_headers:
            log_resp.add("x-envoy-overloaded")  # a response never retried
        # Header names (bytes, lower case) the request parser collects, by the key under
        # which routing and logging look them up.
        wanted = set(self.routes.needed_headers) | log_req | filter_headers | pick_headers
        self.request_wanted = {n.encode("latin-1"): n for n in wanted}
        # RouteConfiguration.internal_only_headers (empty: none, and nothing to do).
        # (name, its bytes for the upstream head's removal list)
        # forward_client_cert_details (None: SANITIZE, the header only goes).
        self.xfcc = (
            XfccPlan(hcm.forward_client_cert, hcm.client_cert_details)
            if hcm.forward_client_cert != "SANITIZE"
            else None
        )
        self.internal_only = tuple(
            (n, n.encode("latin-1")) for n in hcm.route_config.internal_only_headers
        )
        self.response_wanted = {n.encode("latin-1"): n for n in log_resp | filter_response}
        policy_class = TracingHeaderPolicy if self.tracer is not None else RequestHeaderPolicy
        self.policy = policy_class(
            hcm.use_remote_address,
            hcm.xff_num_trusted_hops,
            hcm.generate_request_id,
            local_address,
            ids,
        )
        # Downstream HTTP/2 (proxyd.worker.h2_downstream): None when the listener speaks
        # only HTTP/1.1 (codec_type HTTP1, or AUTO on a connection manager with its own
        # stream or connection durations, which proxyd runs for HTTP/1.1 only; a route's
        # max_stream_duration is timed per HTTP/2 stream).
        self.h2: H2Plan | None = None
        timed = hcm.max_connection_duration_s or hcm_stream_s != math.inf
        if hcm.codec_type == "HTTP2" or (hcm.codec_type == "AUTO" and not timed):
            self.h2 = H2Plan(hcm.codec_type == "HTTP2", hcm.http2 or Http2Options())
        tls = listener.tls
        if tls is not None and self.h2 is None and "h2" in tls.alpn:
            # This connection manager speaks HTTP/1.1 only: ALPN never chooses h2.
            tls = dataclasses.replace(tls, alpn=tuple(p for p in tls.alpn if p != "h2"))
        # TLS termination (proxyd.worker.tls): None on a plaintext filter chain.
        self.tls = (
            TlsPlan(
                tls,
                stats,
                listener.stat_name,
                hcm.stat_prefix,
                hcm.idle_timeout_s or math.inf,
                listener.tls_inspector,
            )
            if tls is not None
            else None
        )
        self.scheme = "http" if self.tls is None else "https"
        if self.tls is not None:
            self.policy.scheme_xfp = b"x-forwarded-proto: https\r\n"
        if isinstance(self.policy, TracingHeaderPolicy):
            assert self.tracer is not None
            self.policy.tracer = self.tracer
        self.server = server_line(hcm.server_name)
        # The router sees x-forwarded-proto as the connection's scheme when the edge
        # overwrote the client's (the scheme of a redirect's location comes from it).
        self.overwrite_xfp = hcm.use_remote_address and hcm.xff_num_trusted_hops == 0
        # The header lines of a reply to a request that could not be parsed (the
        # transforms add via, and choose the server line).
        self.reject_headers = self.server
        self.max_head = hcm.max_request_headers_kb * 1024
        self.max_headers = hcm.max_headers_count
        # http_protocol_options (HTTP/1.0, header name case); None when it sets none.
        self.http1 = Http1Format(hcm.http1) if hcm.http1 is not None else None
        self.request_timeout = hcm.request_timeout_s or math.inf
        self.headers_timeout = hcm.request_headers_timeout_s or math.inf
        self.stream_idle = hcm.stream_idle_timeout_s or math.inf
        # Upgrade types a request may ask for when no route matches it (it then gets the
        # router's 404; any other type gets 403, as in Envoy).
        self.upgrades = frozenset(kind for kind, enabled in hcm.upgrades if enabled)
        self.idle_timeout = hcm.idle_timeout_s or math.inf
        # max_connection_duration with drain_timeout, max_stream_duration (the connection
        # manager's, or any route's): a connection then has ConnectionDurations.
        self.max_connection_duration = hcm.max_connection_duration_s or math.inf
        self.drain_timeout = hcm.drain_timeout_s
        self.max_stream_duration = hcm_stream_s
        self.stream_limits = hcm_stream_s != math.inf or any(
            r.stream_duration_set for vh in hcm.route_config.virtual_hosts for r in vh.routes
        )
        self.durations = self.max_connection_duration != math.inf or self.stream_limits
        # The connection manager's request/response transforms; None when it sets none.
        self.transforms = compile_transforms(self, stats.named(f"http.{hcm.stat_prefix}."))

    def header_record(self, stream: Stream, conn: Connection) -> LogRecord:
        """The record a header value's operators read (proxyd.protocol.header_values)."""
        return stream_record(stream, self, conn, NOT_SET)


class CompiledEpoch:
    """Plans by listener name and cluster states by name for one epoch."""

    def __init__(
        self,
        epoch: Epoch,
        old_clusters: dict[str, ClusterState],
        stats: StatsStore,
        writers: dict[str, AccessLogWriter],
        local_address: str,
        ids: RequestIdGenerator,
        old_plans: dict[str, ListenerPlan] | None = None,
        old_tcp_plans: dict[str, TcpListenerPlan] | None = None,
    ) -> None:
        self.epoch = epoch
        self.clusters: dict[str, ClusterState] = {}
        self.runtime = Snapshot(epoch.runtime)
        for c in epoch.clusters:
            old = old_clusters.get(c.name)
            # slow_start_config aggression: its runtime key's value, else its default.
            aggression = c.slow_start_aggression
            if c.slow_start_aggression_key:
                aggression = self.runtime.double(c.slow_start_aggression_key, aggression)
            if (
                old is not None
                and old.cluster == c
                and old.worker_count == epoch.worker_count
                and old.aggression == aggression
                and not old.retired
            ):
                self.clusters[c.name] = old
            else:
                self.clusters[c.name] = ClusterState(c, stats, epoch.worker_count, aggression)
        # The OpenTelemetry access logs' built-in labels (the node has no zone here).
        otel_access_log.NODE = (epoch.node_id, epoch.node_cluster, "")
        facts = EpochFacts(
            epoch.node_cluster,
            {
                name: (len(c.hosts), sum(1 for h in c.hosts if h.usable))
                for name, c in self.clusters.items()
            },
            partial(http_get, self.clusters),
            AsyncClient(self.clusters),  # filters' calls to clusters (ext_authz)
        )
        # HTTP listeners' plans, and (separately, so the HTTP path never meets one) the
        # TCP proxy listeners' (proxyd.worker.tcp_proxy).
        self.plans: dict[str, ListenerPlan] = {}
        for lst in epoch.listeners:
            if lst.hcm is None:
                continue
            self.plans[lst.name] = ListenerPlan(
                lst, self.clusters, stats, writers, local_address, ids, self.runtime, facts
            )
        self.tcp_plans = tcp_plans(
            epoch, self.clusters, stats, writers, self.runtime, old_tcp_plans
        )
        for lst in epoch.listeners:
            if lst.chains:
                self._chain_plans(lst, stats, writers, local_address, ids, facts, old_tcp_plans)
        for name, plan in self.plans.items():
            if plan.transforms is not None:
                plan.transforms.set_node(epoch.node_id, epoch.node_cluster)
            if plan.tracer is not None:
                plan.tracer.set_node(epoch.node_id, epoch.node_cluster)
            old_plan = (old_plans or {}).get(name)
            if old_plan is not None and same_but_secrets(old_plan.listener, plan.listener):
                plan.generation = old_plan.generation

    def _chain_plans(
        self,
        lst: Listener,
        stats: StatsStore,
        writers: dict[str, AccessLogWriter],
        local_address: str,
        ids: RequestIdGenerator,
        facts: EpochFacts,
        old_tcp_plans: dict[str, TcpListenerPlan] | None,
    ) -> None:
        """One plan per filter chain of ``lst`` (keyed beside the listener's own, so a
        connection finds its chain's plan again on each request): a ListenerPlan for a
        connection manager's, a TcpListenerPlan for a TCP proxy's; and the chooser,
        on the listener's own plan."""
        chains = (*lst.chains, *((lst.default_chain,) if lst.default_chain else ()))
        chain_plans: list[ListenerPlan | TcpListenerPlan] = []
        for i, chain in enumerate(chains):
            key = chain_key(lst.name, i)
            if chain.hcm is None:
                one = dataclasses.replace(
                    lst, hcm=None, tcp_proxy=chain.tcp_proxy, tls=chain.tls, chains=(),
                    default_chain=None, network_rbac=(),
                )  # fmt: skip
                tcp = TcpListenerPlan(one, self.clusters, stats, writers, self.runtime)
                tcp.key = key
                before = (old_tcp_plans or {}).get(key)
                if before is not None and before.listener == tcp.listener:
                    tcp.generation = before.generation
                self.tcp_plans[key] = tcp
                chain_plans.append(tcp)
                continue
            one = dataclasses.replace(
                lst, hcm=chain.hcm, tcp_proxy=None, tls=chain.tls,
                network_rbac=chain.network_rbac, chains=(), default_chain=None,
            )  # fmt: skip
            sub = ListenerPlan(
                one, self.clusters, stats, writers, local_address, ids, self.runtime, facts
            )
            sub.key = key
            self.plans[key] = sub
            chain_plans.append(sub)
        chooser = ChainChooser(
            ChainSelector(
                [c.match for c in lst.chains],
                len(lst.chains) if lst.default_chain is not None else None,
            ),
            chain_plans,
            lst.listener_filters_timeout_s or math.inf,
            lst.continue_on_listener_filters_timeout,
            stats.named(f"listener.{lst.stat_name}."),
            stats.named("tls_inspector."),
            lst.tls_inspector,
        )
        main = self.plans.get(lst.name) or self.tcp_plans[lst.name]
        main.chooser = chooser

    def retire_replaced(self, old_clusters: dict[str, ClusterState]) -> None:
        """Retire the old clusters this epoch did not keep (after it is in place)."""
        for name, old in old_clusters.items():
            if self.clusters.get(name) is not old:
                old.retire()
