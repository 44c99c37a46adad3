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
* **grpc_timeout_header_max** (with ``grpc_timeout_header_offset``) in the route's
  message: a request with a valid ``grpc-timeout`` header (any content type) gets that
  timeout in place of the stream limit, capped by the max (0: no cap), less the offset
  (0 when the offset is not below it: the limit passes at once); a gRPC request's
  ``grpc-timeout`` then says that timeout in milliseconds. Without a valid header the
  route's limit applies as above; the offset alone changes nothing.
* The deprecated **RouteAction.max_grpc_timeout** (with ``grpc_timeout_offset``), on a
  route without the message: for a gRPC request the router's timeout (not the stream
  limit: its expiry is the route timeout's 504 ``upstream request timeout``) is the
  header's timeout (none without a valid header), less the offset when the offset is
  below it, capped by the max (0: no cap; a request without a timeout gets the max);
  upstream, ``grpc-timeout`` and ``x-envoy-expected-rq-timeout-ms`` say it. With no
  timeout at all the route's ``timeout`` does not apply either (:class:`GrpcRouteTimeout`).

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
    from proxyd.worker.plan import ListenerPlan, RoutePlan
    from proxyd.worker.stream import Connection, Stream

_CONNECTION = DeadlineKind.CONNECTION_DURATION
_DRAIN = DeadlineKind.DRAIN
_STREAM = DeadlineKind.STREAM_DURATION

# The largest number a grpc-timeout value may have (8 digits).
_GRPC_MAX = 99_999_999
# A grpc-timeout unit's length in milliseconds (u and n: rounded up).
_GRPC_UNITS_MS = {"H": 3_600_000, "M": 60_000, "S": 1000, "m": 1}
_GRPC_SUB_MS = {"u": 1000, "n": 1_000_000}
_ABSL_SPACE = " \t\n\v\f\r"


def grpc_timeout_ms(value: str) -> int | None:
    """A ``grpc-timeout`` header's value in milliseconds, as Envoy's
    ``Grpc::Common::getGrpcTimeout`` reads it (None: not a valid value). The number is
    read by ``absl::SimpleAtoi`` (spaces around it and a sign allowed) and must be 0 to
    99999999; the unit is the last character: H, M, S, m, u or n."""
    if not value:
        return None
    unit = value[-1]
    number = value[:-1].strip(_ABSL_SPACE)
    if number[:1] in ("+", "-"):
        sign, number = number[0], number[1:]
    else:
        sign = "+"
    if not number or not number.isascii() or not number.isdigit():
        return None
    n = int(number)
    if (sign == "-" and n) or n > _GRPC_MAX:
        return None
    per = _GRPC_UNITS_MS.get(unit)
    if per is not None:
        return n * per
    sub = _GRPC_SUB_MS.get(unit)
    if sub is None:
        return None
    return -(-n // sub)  # rounded up


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


class RouteDuration:
    """A route's ``max_stream_duration`` message, with its connection manager's value
    (``hcm_s``, INF when none) already folded in: the stream's limit on this route, and
    what a ``grpc-timeout`` header makes of it (``header_max_ms`` None: nothing)."""

    __slots__ = ("limit", "grpc_value", "remove_grpc", "header_max_ms", "offset_ms")

    def __init__(
        self,
        route_s: float | None,
        hcm_s: float,
        header_max_s: float | None = None,
        offset_s: float = 0.0,
    ) -> None:
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
        self.header_max_ms = None if header_max_s is None else int(round(header_max_s * 1000))
        self.offset_ms = int(round(offset_s * 1000))

    def matched(self, conn: Connection, stream: Stream, rp: RoutePlan) -> RoutePlan:
        """The stream's route has the message: its limit (or the grpc-timeout header's,
        with grpc_timeout_header_max) replaces the connection manager's, counted from
        the stream's start, and a gRPC request's grpc-timeout says so. (A connection
        accepted under an epoch whose routes had no limit has no deadline for one: it
        keeps that epoch's limits, as it keeps its connection manager's; its responses
        close it, its listener having changed.)"""
        h = stream.head
        assert h is not None
        limit = self.limit
        grpc_value = self.grpc_value
        if self.header_max_ms is not None:
            ms = grpc_timeout_ms(h.headers.get("grpc-timeout", ""))
            if ms is not None:  # Envoy's refreshDurationTimeout
                cap = self.header_max_ms
                if cap and ms > cap:
                    ms = cap
                if ms and self.offset_ms:
                    ms = ms - self.offset_ms if self.offset_ms < ms else 0
                limit = ms / 1000
                grpc_value = grpc_timeout_value(ms)
        d = conn.durations
        if d is not None and d.limit is not None:
            if limit > 0:
                conn.timers.set_at(d.limit, _STREAM, d.started + limit)
            else:  # no time left (Envoy's timer of 0 fires before the request moves on)
                d.limit_passed_now(stream)
        if is_grpc(h.headers.get("content-type", "")):
            if grpc_value:
                stream.set_request_header("grpc-timeout", grpc_value)
            elif self.remove_grpc:
                stream.remove_request_header("grpc-timeout")
        return rp


class GrpcRouteTimeout:
    """The deprecated ``RouteAction.max_grpc_timeout`` / ``grpc_timeout_offset`` on a
    route without ``max_stream_duration`` (Envoy's ``FilterUtility::finalTimeout``): a
    gRPC request's router timeout comes from its grpc-timeout header."""

    __slots__ = ("max_ms", "offset_ms", "_no_timeout")

    def __init__(self, max_s: float, offset_s: float) -> None:
        self.max_ms = int(round(max_s * 1000))
        self.offset_ms = int(round(offset_s * 1000))
        self._no_timeout: RoutePlan | None = None

    def matched(self, conn: Connection, stream: Stream, rp: RoutePlan) -> RoutePlan:
        """The plan the request runs with: the route's own unless it is gRPC."""
        h = stream.head
        assert h is not None
        if not is_grpc(h.headers.get("content-type", "")):
            return rp
        ms = grpc_timeout_ms(h.headers.get("grpc-timeout", "")) or 0
        if self.offset_ms and self.offset_ms < ms:
            ms -= self.offset_ms
        if self.max_ms and (ms == 0 or ms > self.max_ms):
            ms = self.max_ms
        if not ms:  # no timeout at all (not the route's either), no headers said
            if self._no_timeout is None:
                self._no_timeout = rp.with_timeout(0.0)
            return self._no_timeout
        stream.set_request_header("grpc-timeout", grpc_timeout_value(ms))
        return rp.with_timeout(ms / 1000)


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

    def limit_passed_now(self, stream: Stream) -> None:
        """The current stream's limit is over already (a grpc-timeout with no time
        left): counted, and the stream marked; the caller answers it
        (``manager.duration_over``), as the deadline's firing would."""
        assert self.limit is not None
        self.conn.timers.clear(self.limit)
        self.plan.http_stats.rq_max_duration_reached += 1
        stream.timed_out = _STREAM

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
