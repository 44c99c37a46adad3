"""What the worker logs, and when: the per-epoch log plans and the records they format.

* :class:`LogPlans` is compiled once per epoch for a listener (``ListenerPlan.access``):
  the HCM's logs, the listener's connection logs, each a (format, filter, writer), and
  the request / response headers they read.
* :func:`log_stream` is the HCM's access log for one stream (``manager.write_log``),
  with ACCESS_LOG_TYPE DownstreamEnd; :func:`stream_started` logs DownstreamStart
  (``flush_access_log_on_new_request``) and enrols the stream for periodic logs
  (``access_log_flush_interval``), which :class:`PeriodicLogs` writes while it lasts.
* :func:`connection_opened` / :func:`connection_closed` bracket a downstream
  connection of a listener with its own ``access_log``: one line per connection at
  close, with the connection's operators (start, duration, bytes on the wire from the
  kernel's TCP_INFO, addresses, listener name; the request operators print ``-``).

The module state (:data:`PERIODIC`, the open connections) is per worker process: a
worker is one process, and these are its own.
"""

from __future__ import annotations

import math
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

import trio

from proxyd.epoch import AccessLog
from proxyd.protocol.access_log import (
    DOWNSTREAM_END,
    DOWNSTREAM_PERIODIC,
    DOWNSTREAM_START,
    NOT_SET,
    JsonLogFormat,
    LogFormat,
    LogRecord,
    make_format,
)
from proxyd.protocol.access_log_filters import (
    NO_RUNTIME,
    Predicate,
    Runtime,
    compile_filter,
    filter_header_names,
    filter_reads_grpc_status,
)
from proxyd.worker import grpc_access_log, otel_access_log
from proxyd.worker.accesslog import AccessLogWriter
from proxyd.worker.grpc_access_log import GrpcLogPlan
from proxyd.worker.otel_access_log import OtelLogPlan
from proxyd.worker.stream import ResponseFlag

if TYPE_CHECKING:
    from proxyd.worker.plan import ListenerPlan
    from proxyd.worker.stream import Connection, Stream
    from proxyd.worker.tcp_proxy import TcpListenerPlan


class LogPlan:
    """One access log of an epoch: its format, its filter (None: log everything), and
    the writer it goes to."""

    __slots__ = ("fmt", "test", "writer")

    def __init__(
        self, fmt: LogFormat | JsonLogFormat, test: Predicate | None, writer: AccessLogWriter
    ) -> None:
        self.fmt = fmt
        self.test = test
        self.writer = writer

    def write(self, rec: LogRecord) -> None:
        if self.test is None or self.test(rec):
            self.writer.write(self.fmt.format(rec))


def _compile(
    logs: tuple[AccessLog, ...],
    writers: dict[str, AccessLogWriter],
    runtime: Runtime,
    req: set[str],
    resp: set[str],
    otel: tuple[Any, Any] | None = None,
) -> tuple[LogPlan | OtelLogPlan | GrpcLogPlan, ...]:
    """``otel``: (the worker's stats store, the epoch's cluster states), for the
    OpenTelemetry and gRPC access logs' exporters."""
    out: list[LogPlan | OtelLogPlan | GrpcLogPlan] = []
    for al in logs:
        if al.grpc is not None:
            assert otel is not None  # ListenerPlan and TcpListenerPlan give it
            test = compile_filter(al.filter, runtime) if al.filter is not None else None
            if al.filter is not None:
                req |= filter_header_names(al.filter)
            stats, clusters = otel
            grpc_plan = GrpcLogPlan(
                al.grpc, test, grpc_access_log.exporter_for(al.grpc, stats, clusters)
            )
            req |= grpc_plan.request_headers
            resp |= grpc_plan.response_headers
            out.append(grpc_plan)
            continue
        if al.otel is not None:
            assert otel is not None  # ListenerPlan and TcpListenerPlan give it
            test = compile_filter(al.filter, runtime) if al.filter is not None else None
            if al.filter is not None:
                req |= filter_header_names(al.filter)
            stats, clusters = otel
            plan = OtelLogPlan(
                al.otel, test, otel_access_log.exporter_for(al.otel, stats, clusters)
            )
            req |= plan.request_headers
            resp |= plan.response_headers
            out.append(plan)
            continue
        fmt = make_format(al.format, al.json_format, al.omit_empty_values)
        req |= fmt.request_headers
        resp |= fmt.response_headers
        test = None
        if al.filter is not None:
            test = compile_filter(al.filter, runtime)
            req |= filter_header_names(al.filter)
            if filter_reads_grpc_status(al.filter):
                resp.add("grpc-status")
        out.append(LogPlan(fmt, test, writers[al.writer_key]))
    return tuple(out)


class LogPlans:
    """A listener's access logs for one epoch."""

    __slots__ = (
        "stream_logs", "connection_logs", "tcp_logs", "flush_interval", "log_on_new_request",
        "request_headers", "response_headers", "listener_name", "server_name",
        "wants_hostname", "server_mode",
    )  # fmt: skip

    def __init__(
        self,
        listener: Any,
        writers: dict[str, AccessLogWriter],
        runtime: Runtime = NO_RUNTIME,
        otel: tuple[Any, Any] | None = None,
    ) -> None:
        hcm = listener.hcm
        tcp = getattr(listener, "tcp_proxy", None)
        req: set[str] = set()
        resp: set[str] = set()
        self.stream_logs = (
            _compile(hcm.access_logs, writers, runtime, req, resp, otel) if hcm is not None else ()
        )
        self.connection_logs = _compile(listener.access_logs, writers, runtime, set(), set(), otel)
        # A TCP proxy's access_log: one line per connection (proxyd.worker.tcp_proxy).
        self.tcp_logs = (
            _compile(tcp.access_logs, writers, runtime, set(), set(), otel)
            if tcp is not None
            else ()
        )
        if hcm is None:
            self.flush_interval = 0.0
            self.log_on_new_request = False
            self.server_mode = "OVERWRITE"
            self.request_headers: frozenset[str] = frozenset()
            self.response_headers: frozenset[str] = frozenset()
            self.listener_name = listener.name
            self.wants_hostname = False
            self.server_name = ""
            return
        self.flush_interval = hcm.access_log_flush_interval_s if self.stream_logs else 0.0
        self.log_on_new_request = bool(hcm.flush_access_log_on_new_request and self.stream_logs)
        if self.stream_logs:
            req.add("user-agent")
            req.add("content-type")  # GRPC_STATUS: is the request gRPC?
        # server_header_transformation: the server header the client got is the
        # upstream's unless it is OVERWRITE (the default).
        transforms = getattr(hcm, "transforms", None)
        self.server_mode = (
            transforms.server_header_transformation if transforms is not None else "OVERWRITE"
        )
        if self.server_mode != "OVERWRITE" and self.stream_logs:
            resp.add("server")
        self.request_headers = frozenset(req)
        self.response_headers = frozenset(resp)
        self.listener_name = listener.name
        # UPSTREAM_HOST_NAME needs the endpoint's DNS name: looked up only when used.
        self.wants_hostname = any(
            "UPSTREAM_HOST_NAME" in (al.json_format or al.format)
            for al in (*hcm.access_logs, *listener.access_logs)
        )
        self.server_name = hcm.server_name


# -- streams ------------------------------------------------------------------------------

# RESPONSE_CODE_DETAILS for proxyd's own outcomes, by response flag (Envoy's strings).
_DETAILS = {
    ResponseFlag.NO_ROUTE: "route_not_found",
    ResponseFlag.NO_CLUSTER: "cluster_not_found",
    ResponseFlag.NO_HEALTHY_UPSTREAM: "no_healthy_upstream",
    ResponseFlag.UPSTREAM_OVERFLOW: "upstream_reset_before_response_started{overflow}",
    ResponseFlag.UPSTREAM_CONNECTION_FAILURE: (
        "upstream_reset_before_response_started{remote_connection_failure}"
    ),
    ResponseFlag.UPSTREAM_PROTOCOL_ERROR: "upstream_reset_before_response_started{protocol_error}",
    ResponseFlag.UPSTREAM_REQUEST_TIMEOUT: "upstream_response_timeout",
    ResponseFlag.STREAM_IDLE_TIMEOUT: "stream_idle_timeout",
}
# A deadline's kind (stream.details) -> Envoy's details.
_DEADLINE_DETAILS = {
    "request_timeout": "request_overall_timeout",
    "request_headers_timeout": "request_header_timeout",
    "max_stream_duration": "max_duration_timeout",
}
_NOT_CONNECTED = (
    ResponseFlag.UPSTREAM_CONNECTION_FAILURE,
    ResponseFlag.UPSTREAM_OVERFLOW,
    ResponseFlag.NO_HEALTHY_UPSTREAM,
)


def _details(stream: Stream) -> str | None:
    flag = stream.flags
    if flag is _NONE:
        if stream.details:
            # A filter's local reply carries Envoy's details already.
            return _DEADLINE_DETAILS.get(stream.details, stream.details)
        if stream.service_ms is not None and stream.status:
            return "via_upstream"
        return None
    if stream.head is None:
        return None  # refused by the codec: Envoy's codec details are not known here
    if flag is ResponseFlag.UPSTREAM_CONNECTION_TERMINATION:
        if stream.details:  # an HTTP/2 upstream's reset reason (worker/h2_upstream.py)
            return stream.details
        started = stream.service_ms is not None
        return (
            "upstream_reset_after_response_started{connection_termination}"
            if started
            else "upstream_reset_before_response_started{connection_termination}"
        )
    details = _DETAILS.get(flag)
    if details is not None:
        return details
    return _DEADLINE_DETAILS.get(stream.details, stream.details) if stream.details else None


_NONE = ResponseFlag.NONE
_new_record = object.__new__


def stream_record(stream: Stream, plan: ListenerPlan, conn: Connection, log_type: str) -> LogRecord:
    """The record of ``stream``; every field of LogRecord is set here exactly once
    (LogRecord's own defaults would set each a second time, on every request)."""
    rec: LogRecord = _new_record(LogRecord)
    access = plan.access
    status = stream.status
    flags = stream.flags
    rec.log_type = log_type
    rec.listener_name = plan.name
    rec.start_time = stream.t_wall
    rec.response_code = status
    if not status:
        rec.server = None
    elif access.server_mode == "OVERWRITE":
        rec.server = access.server_name
    else:  # PASS_THROUGH / APPEND_IF_ABSENT: the upstream's, if it sent one
        upstream = stream.resp_headers.get("server") if stream.resp_headers is not None else None
        if upstream is None and access.server_mode == "APPEND_IF_ABSENT":
            upstream = access.server_name
        rec.server = upstream
    rec.response_flags = stream.flag_text()
    rec.bytes_received = stream.bytes_received
    rec.bytes_sent = stream.bytes_sent
    rec.duration_ms = int((time.monotonic() - stream.t0) * 1000)
    rec.upstream_service_time_ms = stream.service_ms
    rec.transport_failure = None
    host = stream.upstream_host
    rec.upstream_host = host
    # A retried request's attempts and hosts (else: the one attempt a picked host means;
    # an overflow counts one, as in Envoy).
    if stream.attempts:
        rec.attempt_count = stream.attempts
        rec.hosts_attempted = stream.hosts_tried or []
    elif host is not None:
        rec.attempt_count = 1
        # None: the host (access_log_operators); none when its connection was refused.
        rec.hosts_attempted = [] if flags is ResponseFlag.UPSTREAM_CONNECTION_FAILURE else None
    else:
        rec.attempt_count = 1 if flags is ResponseFlag.UPSTREAM_OVERFLOW else 0
        rec.hosts_attempted = []
    if host is not None and (flags is _NONE or flags not in _NOT_CONNECTED):
        rec.upstream_remote_address = host
        rec.upstream_protocol = "HTTP/1.1"
    else:
        rec.upstream_remote_address = rec.upstream_protocol = None
    state = stream.filter_state
    rec.dynamic_metadata = state.get("dynamic_metadata") if state is not None else None  # type: ignore[assignment]
    rec.details = _details(stream)
    trusted = stream.trusted_address
    remote = conn.remote
    rec.downstream_direct_remote_address = remote
    rec.downstream_remote_address = (
        remote if not trusted or trusted == conn.remote_ip else f"{trusted}:0"
    )
    rec.downstream_local_address = conn.local_address()
    rec.tls = conn.tls
    rec.upstream_tls = stream.upstream_tls
    rec.route_name = stream.route_name or None
    rp = stream.route_plan
    rec.upstream_cluster = rec.upstream_hostname = None
    rec.host_names_attempted = None
    if rp is not None and rp.cluster is not None:
        rec.upstream_cluster = rp.cluster_name
        if host is not None and access.wants_hostname:
            endpoints = rp.cluster.cluster.endpoints
            rec.upstream_hostname = _hostname(endpoints, host)
            if rec.hosts_attempted is not None:
                # %UPSTREAM_HOST_NAMES_ATTEMPTED%: each attempt's, as UPSTREAM_HOST_NAME.
                rec.host_names_attempted = [
                    _hostname(endpoints, label) or label for label in rec.hosts_attempted
                ]
    elif rec.hosts_attempted is not None:
        rec.host_names_attempted = rec.hosts_attempted
    h = stream.head
    if h is not None:
        rec.protocol = conn.protocol
        rec.scheme = plan.scheme
        rec.method = h.method
        rec.path = h.path
        rec.authority = h.host
        # The id the request policy set or kept; a request the router never saw keeps
        # the one it came with.
        rec.request_id = stream.request_id or h.request_id.decode("latin-1") or None
        rec.x_forwarded_for = stream.xff.decode("latin-1") if stream.xff else None
        headers = h.headers
        rec.user_agent = headers.get("user-agent")
        rec.req_headers = headers
    else:
        rec.protocol = rec.scheme = rec.method = rec.path = rec.authority = None
        if conn.protocol == "HTTP/2":  # a stream reset before its head was taken
            rec.protocol = "HTTP/2"
        rec.request_id = rec.x_forwarded_for = rec.user_agent = None
        rec.req_headers = {}
    resp = stream.resp_headers
    if resp is not None:
        rec.resp_headers = resp
    elif status and access.response_headers:
        rec.resp_headers = _local_reply_headers(stream, access.response_headers)
    else:
        rec.resp_headers = {}
    # %TRACE_ID% and traceable_filter: the request's trace on a listener with tracing
    # (its decision is made before the log is written: manager.finish).
    trace = getattr(stream, "trace", None) if plan.tracer is not None else None
    rec.trace_id = (trace.trace_id or None) if trace is not None and not trace.off else None
    return rec


def _local_reply_headers(stream: Stream, wanted: frozenset[str]) -> dict[str, str]:
    """The headers of a reply the proxy made itself, as Envoy's local replies have them
    (a body is text/plain and has its length; an empty one has neither in the header
    map Envoy logs), for the names the formats read."""
    out = {}
    if "content-type" in wanted and stream.bytes_sent:
        out["content-type"] = "text/plain"
    if "content-length" in wanted and stream.bytes_sent:
        out["content-length"] = str(stream.bytes_sent)
    return out


def _hostname(endpoints: Any, label: str) -> str | None:
    """The DNS name of the endpoint ``label`` ("ip:port") came from, None for an IP."""
    for ep in endpoints:
        if not ep.hostname:
            continue
        a = ep.address
        if label == (f"[{a}]:{ep.port}" if ":" in a else f"{a}:{ep.port}"):
            return str(ep.hostname)
    return None


def log_stream(stream: Stream, plan: ListenerPlan, conn: Connection) -> None:
    """The stream ended: its DownstreamEnd lines."""
    access = plan.access
    if access.flush_interval:
        PERIODIC.remove(stream)
    rec = stream_record(stream, plan, conn, DOWNSTREAM_END)
    for lp in access.stream_logs:
        lp.write(rec)


def stream_started(stream: Stream, plan: ListenerPlan, conn: Connection) -> None:
    """A request's headers arrived (only called when a plan wants it)."""
    access = plan.access
    if access.log_on_new_request:
        rec = stream_record(stream, plan, conn, DOWNSTREAM_START)
        rec.duration_ms = 0
        for lp in access.stream_logs:
            lp.write(rec)
    if access.flush_interval:
        PERIODIC.add(stream, plan, conn, access.flush_interval)


class PeriodicLogs:
    """access_log_flush_interval: every stream in flight gets a DownstreamPeriodic line
    each interval after it started, until it ends. :meth:`run` is one task per worker;
    it sleeps until the next line is due, and is woken when a stream is enrolled."""

    def __init__(self) -> None:
        self._streams: dict[int, tuple[Stream, ListenerPlan, Connection, float, float]] = {}
        self._wake = trio.Event()

    def add(self, stream: Stream, plan: ListenerPlan, conn: Connection, interval: float) -> None:
        due = trio.current_time() + interval
        self._streams[id(stream)] = (stream, plan, conn, interval, due)
        self._wake.set()

    def remove(self, stream: Stream) -> None:
        self._streams.pop(id(stream), None)

    def write_due(self, now: float) -> float:
        """Write the lines due at ``now``; the time the next one is due (inf: none)."""
        next_due = math.inf
        for key, (stream, plan, conn, interval, due) in list(self._streams.items()):
            sock = getattr(conn, "sock", None)
            if sock is not None and sock.fileno() < 0:
                del self._streams[key]  # its connection ended without finishing it
                continue
            if due <= now:
                rec = stream_record(stream, plan, conn, DOWNSTREAM_PERIODIC)
                for lp in plan.access.stream_logs:
                    lp.write(rec)
                due = max(due + interval, now)
                self._streams[key] = (stream, plan, conn, interval, due)
            next_due = min(next_due, due)
        return next_due

    async def run(self) -> None:
        while True:
            next_due = self.write_due(trio.current_time())
            self._wake = trio.Event()
            with trio.move_on_at(next_due):
                await self._wake.wait()


PERIODIC = PeriodicLogs()


# -- connections ----------------------------------------------------------------------------

# Open connections of listeners with connection logs: id(conn) -> (wall start,
# monotonic start, the plan they were accepted under).
OPEN: dict[int, tuple[float, float, ListenerPlan | TcpListenerPlan]] = {}

# TCP states after the peer's FIN arrived and before ours went out: CLOSE_WAIT,
# LAST_ACK, CLOSING.
_FIN_RECEIVED = (8, 9, 11)
_TCP_INFO = struct.Struct("=120xQQ")  # tcpi_bytes_acked, tcpi_bytes_received
_TCP_INFO_SENT = struct.Struct("=144xI52xQQ")  # tcpi_notsent_bytes ... bytes_sent, retrans


def wire_bytes(sock: socket.socket) -> tuple[int, int]:
    """(received, sent) bytes on a TCP connection, from the kernel (0, 0 if unknown).

    Sent is what the application wrote: bytes sent minus retransmissions plus what
    waits unsent (Linux 4.19+), else the bytes acknowledged."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    except OSError:
        return 0, 0
    if len(info) < _TCP_INFO.size:
        return 0, 0
    acked, received = _TCP_INFO.unpack_from(info)
    if info[0] in _FIN_RECEIVED and received:
        received -= 1  # the peer's FIN takes a sequence number, and is not a byte
    if len(info) >= _TCP_INFO_SENT.size:
        notsent, sent, retrans = _TCP_INFO_SENT.unpack_from(info)
        return received, sent - retrans + notsent
    return received, acked


def connection_opened(conn: Any, plan: ListenerPlan | TcpListenerPlan) -> None:
    OPEN[id(conn)] = (time.time(), time.monotonic(), plan)


def connection_closed(conn: Any, counted: tuple[int, int] | None = None) -> None:
    """The connection is about to be closed: its listener's connection lines. Its
    bytes (received, sent) are ``counted`` when the caller knows them (the TCP proxy),
    else read from the kernel."""
    opened = OPEN.pop(id(conn), None)
    if opened is None:
        return
    t_wall, t0, plan = opened
    rec = LogRecord()
    rec.log_type = NOT_SET
    rec.listener_name = plan.name
    rec.start_time = t_wall
    rec.duration_ms = int((time.monotonic() - t0) * 1000)
    received, sent = counted if counted is not None else wire_bytes(conn.sock)
    rec.bytes_received = received
    rec.bytes_sent = sent
    # The HTTP codec starts on the first bytes; a TCP proxy has no protocol to name.
    rec.protocol = "HTTP/1.1" if received and plan.listener.hcm is not None else None
    rec.scheme = None
    rec.downstream_remote_address = conn.remote
    rec.downstream_direct_remote_address = conn.remote
    rec.downstream_local_address = conn.local_address()
    rec.tls = getattr(conn, "tls", None)  # (a TCP proxy connection has no TLS yet)
    for lp in plan.access.connection_logs:
        lp.write(rec)
