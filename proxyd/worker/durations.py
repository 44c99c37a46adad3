"""How long a downstream connection and its streams may last: Envoy's
``max_connection_duration`` (with ``drain_timeout``) and ``max_stream_duration``.

What Envoy 1.40 does on HTTP/1, and so proxyd (compared with real Envoy by
``tests/compat/test_durations_compat.py``):

* **max_connection_duration** (``common_http_protocol_options``), from the accept. When
  it passes (``http.<prefix>.downstream_cx_max_duration_reached``), a connection that
  has not received a byte yet is closed at once; any other drains: every response from
  then on says ``connection: close`` (and the connection closes after it), and once
  ``drain_timeout`` (5 s by default) has passed too, the connection is closed if it is
  idle (one with a request in flight, or a head arriving, closes after its response).
* **max_stream_duration**, from the first byte of a request: the connection manager's
  (``common_http_protocol_options``), or the route's ``RouteAction.max_stream_duration``
  when that message sets one (its ``0s``: none for the route). When it passes
  (``downstream_rq_max_duration_reached``) the client gets 408 while the request is
  still arriving (and the connection closes), else 504, both with the body
  ``downstream duration timeout``, details ``max_duration_timeout`` and no response
  flag; once the response head went out, the connection is reset. On a route that has
  the message, a gRPC request (``content-type: application/grpc`` or
  ``application/grpc+...``) goes upstream with ``grpc-timeout`` set to the limit in
  milliseconds (removed when the route's ``0s`` switches the connection manager's off),
  and the route has no route ``timeout`` (Envoy 1.40 uses the message in its place:
  :func:`proxyd.worker.plan.route_timeout`).

A connection whose listener sets none of these has no :class:`ConnectionDurations`
(its ``durations`` is None) and a route without the message has no
:class:`RouteDuration`: they pay an attribute check per request. When set, the limits
are two :class:`~proxyd.worker.deadlines.Deadline` objects of the connection beside its
moving one; nothing wakes up for a connection before one is due.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxyd.worker.deadlines import INF, Deadline, DeadlineKind

if TYPE_CHECKING:
    from proxyd.worker.downstream import DownstreamConnection
    from proxyd.worker.plan import ListenerPlan
    from proxyd.worker.stream import Connection, Stream

_CONNECTION = DeadlineKind.CONNECTION_DURATION
_DRAIN = DeadlineKind.DRAIN
_STREAM = DeadlineKind.STREAM_DURATION

# The largest number a grpc-timeout value may have (8 digits).
_GRPC_MAX = 99_999_999


def grpc_timeout_value(ms: int) -> str:
    """A timeout in milliseconds as a ``grpc-timeout`` value, as Envoy writes it: in
    milliseconds while it fits 8 digits, else in the smallest unit it fits."""
    value, units = ms, "mSMH"
    unit = 0
    if value > _GRPC_MAX:
        value //= 1000
        unit = 1
    while value > _GRPC_MAX:
        if unit == 3:
            value = _GRPC_MAX
        else:
            value //= 60
            unit += 1
    return f"{value}{units[unit]}"


def is_grpc(content_type: str) -> bool:
    """Envoy's gRPC request test: ``application/grpc``, exactly or followed by ``+``."""
    return content_type.startswith("application/grpc") and (
        len(content_type) == 16 or content_type[16] == "+"
    )


def route_matched(conn: Connection, stream: Stream, rd: RouteDuration) -> None:
    """The stream's route has a max_stream_duration message: its limit replaces the
    connection manager's, counted from the stream's start, and a gRPC request's
    grpc-timeout says so. (A connection accepted under an epoch whose routes had no
    limit has no deadline for one: it keeps that epoch's limits, as it keeps its
    connection manager's; its responses close it, its listener having changed.)"""
    d = conn.durations
    if d is not None and d.limit is not None:
        conn.timers.set_at(d.limit, _STREAM, d.started + rd.limit)
    h = stream.head
    if h is not None and is_grpc(h.headers.get("content-type", "")):
        if rd.grpc_value:
            stream.set_request_header("grpc-timeout", rd.grpc_value)
        elif rd.remove_grpc:
            stream.remove_request_header("grpc-timeout")


class RouteDuration:
    """A route's ``max_stream_duration`` message, with its connection manager's value
    (``hcm_s``, INF when none) already folded in: the stream's limit on this route."""

    __slots__ = ("limit", "grpc_value", "remove_grpc")

    def __init__(self, route_s: float | None, hcm_s: float) -> None:
        if route_s is None:
            limit = hcm_s
        else:
            limit = route_s or INF
        self.limit = limit
        ms = int(round(limit * 1000)) if limit != INF else 0
        # What a gRPC request's grpc-timeout becomes ("" when the route has no limit).
        self.grpc_value = grpc_timeout_value(ms) if limit != INF else ""
        # Envoy drops a gRPC request's grpc-timeout when the route switches off a limit
        # the connection manager set (its timer exists then), and only then.
        self.remove_grpc = limit == INF and hcm_s != INF


class ConnectionDurations:
    """The duration limits of one downstream connection and of its current stream."""

    __slots__ = ("conn", "plan", "lifetime", "limit", "started", "spoke")

    def __init__(self, conn: DownstreamConnection, plan: ListenerPlan) -> None:
        self.conn = conn
        self.plan = plan
        # max_connection_duration, then drain_timeout (None: the listener has none).
        self.lifetime: Deadline | None = None
        # The current stream's max_stream_duration (None: no limit on this listener).
        self.limit: Deadline | None = None
        # When the current stream's first byte arrived (INF: no stream yet).
        self.started = INF
        # Whether any request byte arrived on the connection (Envoy's codec exists).
        self.spoke = False
        if plan.max_connection_duration != INF:
            self.lifetime = Deadline(self._lifetime_passed)
            conn.timers.set(self.lifetime, _CONNECTION, plan.max_connection_duration)
        if plan.stream_limits:
            self.limit = Deadline(self._limit_passed)

    # -- the connection -------------------------------------------------------------------

    def _lifetime_passed(self, d: Deadline) -> None:
        conn = self.conn
        if d.kind is _CONNECTION:
            self.plan.http_stats.cx_max_duration_reached += 1
            if not self.spoke:
                conn.deadline_passed(d)  # nothing arrived yet: closed at once
                return
            # Drain: the next response says "connection: close" and the connection
            # closes after it; an idle one is closed when drain_timeout is over.
            conn.listener_updated = True
            conn.timers.set(d, _DRAIN, self.plan.drain_timeout)
        elif conn.idle and conn.stream is None:
            conn.deadline_passed(d)  # drain_timeout is over: closed quietly

    # -- the streams ----------------------------------------------------------------------

    def head_started(self) -> None:
        """The first bytes of a request head arrived (the head is not complete yet)."""
        self.spoke = True
        limit = self.limit
        if limit is not None and self.started == INF:
            timers = self.conn.timers
            self.started = timers.now()
            timers.set_at(limit, _STREAM, self.started + self.plan.max_stream_duration)

    def stream_started(self) -> None:
        """A request head is complete and its stream made (the limit runs from the
        head's first byte: armed here only if :meth:`head_started` did not)."""
        self.head_started()

    def stream_ended(self) -> None:
        limit = self.limit
        if limit is not None:
            self.conn.timers.clear(limit)
            self.started = INF

    def _limit_passed(self, d: Deadline) -> None:
        conn = self.conn
        if conn.stream is None and (self.started == INF or conn.idle):
            return  # (a stream that just ended; its limit is cleared with it)
        self.plan.http_stats.rq_max_duration_reached += 1
        conn.deadline_passed(d)

    def close(self) -> None:
        """The connection is closing: nothing of it may fire any more."""
        timers = self.conn.timers
        if self.lifetime is not None:
            timers.clear(self.lifetime)
        if self.limit is not None:
            timers.clear(self.limit)
