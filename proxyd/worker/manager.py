"""The connection manager's steps for one stream, whatever codec it came from.

:func:`handle` takes a stream whose request head has arrived and runs it to its end:
route it, run the route's HTTP filter chain when it has one
(:mod:`proxyd.worker.filter_chain`; a route whose chain is only the router has none,
and pays nothing), then the router (:mod:`proxyd.worker.router`) or the local reply
Envoy's router gives (404 no route, 503 no cluster or no healthy host); then count it
and write its access log. A redirect or direct_response route (no cluster) is answered
by :func:`proxyd.worker.local_action.answer_locally`. :func:`finish_after_deadline`
ends a stream one of whose deadlines fired (the codec calls it once the stream's cancel
scope has ended).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from proxyd.filters.stateful_session import override as session_override
from proxyd.protocol.hash_policy import generated_cookie, set_cookie_value
from proxyd.protocol.histogram import record
from proxyd.protocol.http1_headers import EDGE_STRIPPED
from proxyd.protocol.http1_options import proper_case_head
from proxyd.protocol.xfcc import NAME as XFCC_NAME
from proxyd.worker import accesslog_plan, mirror, router, tracing
from proxyd.worker.deadlines import DeadlineKind
from proxyd.worker.filter_chain import FilterChain
from proxyd.worker.local_action import answer_locally
from proxyd.worker.plan import ProperCaseExchange
from proxyd.worker.retrying import header_retry_exchange
from proxyd.worker.stream import Connection, DownstreamReset, ResponseFlag, Stream

if TYPE_CHECKING:
    from proxyd.epoch import HashPolicy
    from proxyd.filters.api import FilterFactory
    from proxyd.worker.plan import ListenerPlan, RoutePlan
    from proxyd.worker.upstream import HostState

EDGE_STRIPPED_NAMES = tuple(n.decode("latin-1") for n in EDGE_STRIPPED)

# What the client gets when a deadline ends its stream, by kind (the status of a
# stream idle timeout depends on whether the request had all arrived).
_TIMEOUT_REPLIES = {
    DeadlineKind.ROUTE: (504, "upstream request timeout", ResponseFlag.UPSTREAM_REQUEST_TIMEOUT),
    DeadlineKind.REQUEST: (408, "request timeout", ResponseFlag.NONE),
    DeadlineKind.REQUEST_HEADERS: (408, "request header timeout", ResponseFlag.NONE),
}


def clock_now(plan: ListenerPlan) -> tuple[float, float]:
    return (time.time(), time.monotonic()) if plan.logs else (0.0, 0.0)


class _Overload:
    """The overload actions a request meets (set by proxyd.worker.overload)."""

    __slots__ = ("stop_requests",)

    def __init__(self) -> None:
        self.stop_requests = False  # envoy.overload_actions.stop_accepting_requests


OVERLOAD = _Overload()


async def _overloaded(stream: Stream, plan: ListenerPlan) -> bool:
    """stop_accepting_requests: Envoy's 503 before routing."""
    plan.http_stats.rq_overload_close += 1
    stream.flags = ResponseFlag.OVERLOAD_MANAGER
    stream.details = "overload"
    try:
        await stream.sink.send_local_reply(503, "envoy overloaded")
    except DownstreamReset:
        stream.flags = ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION
        return False
    return True


def handle(stream: Stream, plan: ListenerPlan, conn: Connection) -> Awaitable[bool]:
    """Start serving one stream: what to await for it (True when its connection can
    carry another request); the caller then calls :func:`finish`.

    Routing is done here, synchronously. A route with no filters whose host is picked
    hands back the router's own coroutine, so no frame of this module sits between the
    connection and the router at the waits of every request; everything else (filters,
    local replies) is :func:`_serve`."""
    stream.t0 = time.monotonic()  # downstream_rq_time, and the access log's times
    if plan.stamps:  # access logs, or header values with operators
        stream.t_wall = time.time()
        if plan.log_hooks:
            accesslog_plan.stream_started(stream, plan, conn)
        if plan.tracer is not None:
            tracing.start(stream, plan)
    plan.http_stats.rq_total += 1
    plan.http_stats.rq_active += 1
    if OVERLOAD.stop_requests:
        return _overloaded(stream, plan)
    h = stream.head
    assert h is not None
    if plan.transforms is not None:  # the HCM's path/host/header transforms
        early = plan.transforms.on_request(stream, plan, conn)
        if early is not None:
            return early
    if h.xfcc or plan.xfcc is not None:  # forward_client_cert_details (protocol/xfcc)
        _client_cert_details(stream, plan, conn)
    if plan.internal_only and not plan.policy.is_internal(h, conn.remote_ip):
        # RouteConfiguration.internal_only_headers: gone before routing and filters.
        for name, raw_name in plan.internal_only:
            h.headers.pop(name, None)
            h.remove.append(raw_name)
    if h.method != "CONNECT":
        route = plan.routes.match(h.host, h.path, h.headers)
    else:
        route = plan.routes.match_connect(h.host, h.headers)
    if route is None:
        if h.upgrade and h.upgrade not in plan.upgrades and h.upgrade != "connect":
            return _upgrade_refused(stream)  # (a CONNECT without a route gets the 404)
        return _serve(stream, plan, conn, None, plan.no_route_filters)
    rp = plan.route_plans[id(route)]
    if rp.pick is not None:  # weighted_clusters, cluster_header: the cluster's plan
        rp = rp.pick(h.headers)
    if h.upgrade and h.upgrade not in rp.upgrades:
        return _upgrade_refused(stream)
    stream.route_plan = rp
    stream.route_name = rp.name
    if rp.duration is not None:  # max_stream_duration, max_grpc_timeout (durations.py)
        rp = stream.route_plan = rp.duration.matched(conn, stream, rp)
        if stream.timed_out is not None:  # a grpc-timeout that left no time
            return duration_over(stream)
    stream.upstream_cluster = rp.cluster_name
    if rp.filters or rp.cluster is None or rp.hash is not None:
        return _serve(stream, plan, conn, rp, rp.filters)
    host = rp.cluster.balancer.pick()
    if host is None:
        return _no_healthy_upstream(stream, rp)
    return _exchange(stream, plan, conn, rp, host).run()


def _client_cert_details(stream: Stream, plan: ListenerPlan, conn: Connection) -> None:
    """x-forwarded-client-cert as the connection manager's mode says, before routing and
    filters see the request (Envoy edits it with the other request headers)."""
    h = stream.head
    assert h is not None
    xfcc = plan.xfcc
    if xfcc is None:  # SANITIZE
        remove, line = True, b""
    else:
        remove, line = xfcc.edit(h.xfcc, conn.tls)
    if remove:
        h.remove.append(XFCC_NAME)
        h.headers.pop("x-forwarded-client-cert", None)
    if line:
        if stream.request_added is None:
            stream.request_added = []
        stream.request_added.append(line)
        h.headers["x-forwarded-client-cert"] = line[len(XFCC_NAME) + 2 : -2].decode("latin-1")


def _exchange(
    stream: Stream, plan: ListenerPlan, conn: Connection, rp: RoutePlan, host: HostState
) -> router.Exchange:
    h = stream.head
    assert h is not None
    head, stream.request_id, stream.trusted_address, stream.xff = plan.policy.apply(
        h, conn.remote_ip, rp.timeout_header, stream.request_added
    )
    if rp.mutations is not None:
        head = rp.mutations.on_request(head, stream, conn, rp.timeout_header, host)
    if plan.http1 is not None:  # preserve_case: the names as the client wrote them
        head = plan.http1.upstream_head(head, h.names)
    if h.upgrade:
        # A websocket (or other upgrade): one attempt, then a tunnel (router.Exchange).
        stream.connection = conn
        return router.Exchange(stream, plan, rp, host, head, (conn.timers, conn.deadline))
    if rp.mirror is not None:  # request_mirror_policies: shadows, fire and forget
        mirror.start(stream, plan, conn, rp, head)
    if h.envoy_headers and rp.header_retry is not None:
        # An internal request's x-envoy-retry-on on a route without a retry policy.
        if isinstance(rp.exchange, ProperCaseExchange):  # the cluster's header names
            head = proper_case_head(head)
        return header_retry_exchange(stream, plan, rp, host, head, (conn.timers, conn.deadline))
    return rp.exchange(stream, plan, rp, host, head, (conn.timers, conn.deadline))


async def _upgrade_refused(stream: Stream) -> bool:
    """An upgrade the connection manager (or the route) does not take: Envoy's 403 with
    no body, and the connection closes."""
    stream.details = "upgrade_failed"
    stream.close_connection = True
    try:
        await stream.sink.send_local_reply(403, "")
    except DownstreamReset:
        stream.flags = ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION
    return False


async def _no_healthy_upstream(stream: Stream, rp: RoutePlan) -> bool:
    assert rp.cluster is not None
    stream.flags = ResponseFlag.NO_HEALTHY_UPSTREAM
    rp.cluster.stats.count_response(503)
    try:
        await stream.sink.send_local_reply(503, "no healthy upstream")
    except DownstreamReset:
        stream.flags = ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION
        return False
    return True


async def _serve(
    stream: Stream,
    plan: ListenerPlan,
    conn: Connection,
    rp: RoutePlan | None,
    filters: tuple[FilterFactory, ...],
) -> bool:
    """A stream with filters, or one the router answers itself (404, 503)."""
    h = stream.head
    assert h is not None
    try:
        reply = None
        if filters:
            if plan.policy.use_remote_address:
                # At the edge Envoy drops a client's internal x-envoy-* headers before
                # its filters run (the upstream head loses them in policy.apply).
                for name in EDGE_STRIPPED_NAMES:
                    h.headers.pop(name, None)
                if plan.overwrite_xfp and "x-forwarded-proto" in h.headers:
                    # ... and has set x-forwarded-proto to the connection's scheme.
                    h.headers["x-forwarded-proto"] = plan.scheme
            # What the filters read of the connection (RBAC's addresses): the client
            # address Envoy's connection manager has set by the time its filters run.
            stream.connection = conn
            stream.trusted_address = plan.policy.trusted_address(h, conn.remote_ip)
            chain = FilterChain(stream, stream.sink, filters, plan.buffer_limit, plan.http_stats)
            stream.sink = chain
            reply = await chain.decode_headers()
        if reply is not None:
            await chain.send_filter_reply(reply)
        elif rp is None:
            stream.flags = ResponseFlag.NO_ROUTE
            await stream.sink.send_local_reply(404, "")
        elif rp.local is not None:
            await answer_locally(stream, plan, rp.local)
        elif rp.cluster is None:
            stream.flags = ResponseFlag.NO_CLUSTER
            await stream.sink.send_local_reply(rp.not_found_status, "")
        else:
            host = pick_host(stream, plan, conn, rp)
            if host is None:
                return await _no_healthy_upstream(stream, rp)
            return await _exchange(stream, plan, conn, rp, host).run()
    except DownstreamReset:
        stream.flags = ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION
        return False
    return True


def pick_host(
    stream: Stream, plan: ListenerPlan, conn: Connection, rp: RoutePlan
) -> HostState | None:
    """The host of a request to ``rp``'s cluster: by the request's hash when the route
    has a hash policy and the cluster balances by hash (proxyd.protocol.hash_policy),
    else the balancer's plain pick. A cookie the hash policy makes goes out as a
    Set-Cookie line of the response. A host a stateful session named comes first
    (:mod:`proxyd.filters.stateful_session.override`)."""
    cluster = rp.cluster
    assert cluster is not None
    if stream.override_host is not None:
        host, decided = session_override.pick(cluster, stream.override_host)
        if decided:
            return host
    hp = rp.hash
    if hp is None or cluster.hashing is None:
        return cluster.balancer.pick()
    h = stream.head
    assert h is not None
    source_ip = plan.policy.trusted_address(h, conn.remote_ip)

    def make_cookie(policy: HashPolicy) -> str:
        # Envoy hashes the downstream remote and local addresses (address:port).
        remote = conn.remote if source_ip == conn.remote_ip else _with_port(source_ip, 0)
        value = generated_cookie(remote, conn.local_address())
        line = set_cookie_value(policy.name, value, policy.path, policy.ttl_s, policy.attributes)
        stream.set_response_header("set-cookie", line)
        return value

    value = hp.hash(h.headers, h.path, source_ip, make_cookie)
    stream.lb_hash = value
    if value is None:
        return cluster.hashing.pick()
    return cluster.hashing.pick_hash(value)


def _with_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


async def finish_after_deadline(stream: Stream, plan: ListenerPlan, conn: Connection) -> bool:
    """A deadline ended ``stream``: answer as Envoy does if no response went out yet."""
    kind = stream.timed_out or conn.deadline.kind
    if kind is DeadlineKind.STREAM_IDLE:
        status = 504 if stream.request_complete else 408
        body, flag = "stream timeout", ResponseFlag.STREAM_IDLE_TIMEOUT
    elif kind is DeadlineKind.STREAM_DURATION:  # max_stream_duration: no response flag
        status = 504 if stream.request_complete else 408
        body, flag = "downstream duration timeout", ResponseFlag.NONE
    else:
        status, body, flag = _TIMEOUT_REPLIES.get(kind, (408, "request timeout", ResponseFlag.NONE))
    if kind is DeadlineKind.REQUEST:
        plan.http_stats.rq_timeout += 1
    elif kind is DeadlineKind.STREAM_IDLE:
        plan.http_stats.rq_idle_timeout += 1
    stream.flags = flag
    stream.details = kind.value
    keep = False
    if not stream.response_started:
        try:
            await stream.sink.send_local_reply(status, body)
            keep = True
        except DownstreamReset:
            pass
    finish(stream, plan, conn)
    return keep


async def duration_over(stream: Stream) -> bool:
    """The stream's max_stream_duration was over when it was routed: answered as
    :func:`finish_after_deadline` answers its deadline (the caller finishes it)."""
    stream.details = DeadlineKind.STREAM_DURATION.value
    status = 504 if stream.request_complete else 408
    try:
        await stream.sink.send_local_reply(status, "downstream duration timeout")
    except DownstreamReset:
        stream.flags = ResponseFlag.DOWNSTREAM_CONNECTION_TERMINATION
        return False
    return True


def finish(stream: Stream, plan: ListenerPlan, conn: Connection) -> None:
    """The stream is over: its counters, its filters' clean-up, its access log."""
    stats = plan.http_stats
    stats.rq_active -= 1
    ms = int((time.monotonic() - stream.t0) * 1000)  # downstream_rq_time
    bins = stats.h_rq_time
    if ms < 100:  # histogram.record, inline for the common case
        bins[ms] = bins.get(ms, 0) + 1
    else:
        record(bins, ms)
    status = stream.status
    if status:
        stats.by_class[status // 100 if status < 600 else 5] += 1
    sink = stream.sink
    if sink is not conn:
        sink.complete()  # type: ignore[attr-defined]  # the filter chain
    if plan.stamps:  # access logs, tracing (and header values with operators)
        if plan.tracer is not None:  # before the log, which reads the trace decision
            tracing.finish(stream, plan, conn)
        if plan.logs:
            write_log(stream, plan, conn)


# -- access log ---------------------------------------------------------------------------


def write_log(stream: Stream, plan: ListenerPlan, conn: Connection) -> None:
    accesslog_plan.log_stream(stream, plan, conn)
