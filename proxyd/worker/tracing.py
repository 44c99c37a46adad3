"""HttpConnectionManager.tracing in the worker: Zipkin spans and B3 propagation.

* :class:`Tracer` is a listener's tracing for one epoch (``ListenerPlan.tracer``;
  None on a listener without tracing, whose requests then pay nothing for it).
* :func:`start` (when the request head is routed) reads the incoming B3 context and
  takes the incoming B3 lines out of the upstream head; :func:`on_upstream` (once the
  upstream head is built, its x-request-id known) makes Envoy's sampling decision,
  writes the trace reason into x-request-id and adds the B3 lines of the request's
  span; :func:`finish` (at stream end) appends the span's small record to the
  worker's :class:`ZipkinExporter` when the request is sampled.
* :class:`ZipkinExporter` (one per collector, per worker process) holds at most
  ``MAX_QUEUED`` records (more are dropped and counted in
  ``tracing.zipkin.spans_dropped``) and posts them as Zipkin v2 JSON to a host of the
  collector cluster from a task of the worker's nursery, when ``MIN_FLUSH_SPANS``
  wait or every ``FLUSH_INTERVAL_S`` (Envoy's defaults), never on the request path.
  Its stats are Envoy's: ``tracing.zipkin.spans_sent``, ``reports_sent``,
  ``reports_dropped`` (the collector answered other than 2xx), ``reports_failed``,
  ``reports_skipped_no_cluster``, ``timer_flushed``.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import trio

from proxyd import __version__
from proxyd.protocol.http1_headers import RequestHeaderPolicy
from proxyd.protocol.otlp import (
    Traceparent,
    export_request,
    extract_traceparent,
    inject_traceparent,
)
from proxyd.protocol.runtime import RANDOM
from proxyd.protocol.zipkin import (
    B3_KEYS,
    B3_NAMES,
    Incoming,
    extract_b3,
    inject_b3,
    new_id,
    span_json,
    trace_decision,
)
from proxyd.worker.grpc_unary import GrpcCallError, unary_call

if TYPE_CHECKING:
    from proxyd.epoch import Tracing
    from proxyd.protocol.http1 import RequestHead
    from proxyd.worker.plan import ListenerPlan
    from proxyd.worker.stats import NamedStats, StatsStore
    from proxyd.worker.stream import Connection, Stream
    from proxyd.worker.upstream import ClusterState

W3C_KEYS = ("traceparent", "tracestate")
PROXYD_VERSION = __version__
MAX_QUEUED = 1000
MIN_FLUSH_SPANS = 5
FLUSH_INTERVAL_S = 5.0
POST_TIMEOUT_S = 5.0


class SpanState:
    """The trace context of one stream (``stream.trace``, and ``head.trace`` for
    :class:`TracingHeaderPolicy`, which sees the head only)."""

    __slots__ = (
        "stream", "incoming", "decided", "trace_id", "span_id", "parent_id", "sampled", "single",
        "trace_state", "off",
    )  # fmt: skip

    def __init__(self, stream: Stream, incoming: Incoming | Traceparent | None) -> None:
        self.stream = stream
        self.incoming = incoming
        self.decided = False
        self.trace_id = self.span_id = self.parent_id = self.trace_state = ""
        self.off = False  # no span, and the trace context headers left as they came
        self.sampled = False
        self.single = False


class Tracer:
    """A listener's tracing for one epoch."""

    __slots__ = ("t", "otel", "exporter", "node_id", "wanted", "header_tags", "literal_tags")

    def __init__(
        self,
        t: Tracing,
        clusters: dict[str, ClusterState],
        stats: StatsStore,
        local_address: str,
    ) -> None:
        self.t = t
        # envoy.tracers.opentelemetry: W3C propagation and OTLP/HTTP; else Zipkin and B3.
        self.otel = t.provider == "opentelemetry"
        self.exporter = exporter_for(t, stats)
        self.exporter.cluster = clusters.get(t.collector_cluster)
        self.exporter.local_ip = local_address
        self.node_id = ""
        self.header_tags = tuple(
            (c.tag, c.value, c.default) for c in t.custom_tags if c.kind == "request_header"
        )
        self.literal_tags = tuple((c.tag, c.value) for c in t.custom_tags if c.kind == "literal")
        # The request headers the parser collects for tracing.
        self.wanted = {
            *(W3C_KEYS if self.otel else B3_KEYS),
            "x-client-trace-id",
            "x-envoy-force-trace",
            "x-envoy-downstream-service-cluster",
            "user-agent",
            *(name for _, name, _ in self.header_tags),
        }

    def set_node(self, node_id: str, node_cluster: str) -> None:
        self.node_id = node_id
        if not self.otel:  # OpenTelemetry's service name is its own config's
            self.exporter.service_name = node_cluster


def start(stream: Stream, plan: ListenerPlan) -> None:
    """The request head has arrived: its incoming context; the incoming B3 lines leave
    the upstream head (:func:`on_upstream` writes the span's own)."""
    h = stream.head
    assert h is not None
    headers = h.headers
    if plan.tracer is not None and plan.tracer.otel:
        incoming = extract_traceparent(headers)
        state = stream.trace = h.trace = SpanState(stream, incoming)
        if incoming is None and "traceparent" in headers:
            # Envoy 1.40: a traceparent it cannot read leaves the request untraced, its
            # trace context headers going upstream as they came.
            state.off = True
            return
        for key in W3C_KEYS:
            if key in headers:
                h.remove.append(key.encode())
        return
    for key, name in zip(B3_KEYS, B3_NAMES, strict=True):
        if key in headers:
            h.remove.append(name)
    stream.trace = h.trace = SpanState(stream, extract_b3(headers))


def _decide(stream: Stream, tracer: Tracer, internal: bool = False) -> SpanState:
    """Envoy's decision for the stream, once; ``internal``: the request is internal
    (x-envoy-force-trace counts only then, as in Envoy)."""
    state: SpanState = stream.trace
    if state.decided:
        return state
    state.decided = True
    t = tracer.t
    h = stream.head
    assert h is not None
    headers = h.headers
    random_s, client_s, overall_s = t.random_sampling, t.client_sampling, t.overall_sampling
    rp = stream.route_plan
    rt = rp.tracing if rp is not None else None
    if rt is not None:  # Route.tracing replaces the samplings it sets
        random_s = rt.random_sampling or random_s
        client_s = rt.client_sampling or client_s
        overall_s = rt.overall_sampling or overall_s
    rid, traced = trace_decision(
        stream.request_id,
        "x-client-trace-id" in headers,
        internal and "x-envoy-force-trace" in headers,
        random_s,
        client_s,
        overall_s,
        RANDOM.getrandbits(32),
    )
    stream.request_id = rid
    inc = state.incoming
    if state.off:
        return state
    if isinstance(inc, Traceparent):  # OpenTelemetry: always a child of the client's
        state.trace_id, state.parent_id, state.span_id = inc.trace_id, inc.span_id, new_id()
        state.sampled = inc.sampled
        state.trace_state = inc.tracestate
        return state
    if tracer.otel:
        state.span_id = new_id()
        state.trace_id = new_id() + new_id()
        state.sampled = traced
        return state
    if inc is not None and inc.trace_id:
        state.trace_id = inc.trace_id
        if t.shared_span_context and t.kind == "SERVER":
            state.span_id, state.parent_id = inc.span_id, inc.parent_id
        else:
            state.span_id, state.parent_id = new_id(), inc.span_id
    else:
        state.span_id = new_id()
        state.trace_id = new_id() + state.span_id if t.trace_id_128bit else state.span_id
    state.sampled = inc.sampled if inc is not None and inc.sampled is not None else traced
    state.single = inc.single if inc is not None else False
    return state


class TracingHeaderPolicy(RequestHeaderPolicy):
    """The request header policy of a listener with tracing: the upstream head it
    makes carries the trace reason in x-request-id and the span's B3 lines (a listener
    without tracing has the plain policy, and its requests pay nothing for tracing)."""

    __slots__ = ("tracer",)

    tracer: Tracer

    def apply(
        self,
        h: RequestHead,
        remote_ip: str,
        timeout_header: bytes,
        added: list[bytes] | None = None,
    ) -> tuple[bytes, str, str, bytes]:
        head, request_id, trusted, xff = super().apply(h, remote_ip, timeout_header, added)
        stream = h.trace.stream
        stream.request_id = request_id
        head = on_upstream(stream, self.tracer, head)
        return head, stream.request_id, trusted, xff


def on_upstream(stream: Stream, tracer: Tracer, head: bytes) -> bytes:
    """The upstream head with the trace reason in x-request-id and the B3 lines."""
    before = stream.request_id
    state = _decide(stream, tracer, b"\r\nx-envoy-internal: true\r\n" in head)
    if stream.request_id != before and before:
        head = _replace_request_id(head, stream.request_id.encode("latin-1"))
    if state.off:
        return head
    if tracer.otel:
        lines = inject_traceparent(state.trace_id, state.span_id, state.sampled, state.trace_state)
    else:
        lines = inject_b3(
            state.trace_id, state.span_id, state.parent_id, state.sampled, state.single
        )
    rp = stream.route_plan
    if rp is not None and rp.decorator_line:
        # Route.decorator.propagate: the egress span's upstream gets the operation, the
        # ingress span's client (Envoy 1.40).
        if tracer.t.kind == "CLIENT":
            lines += rp.decorator_line
        elif stream.response_added is None:
            stream.response_added = [rp.decorator_line]
        else:
            stream.response_added.append(rp.decorator_line)
    return head[:-2] + lines + b"\r\n"


def _replace_request_id(head: bytes, value: bytes) -> bytes:
    i = head.lower().find(b"\r\nx-request-id:")
    if i < 0:
        return head
    start = head.index(b":", i) + 1
    end = head.index(b"\r\n", start)
    return head[:start] + b" " + value + head[end:]


def finish(stream: Stream, plan: ListenerPlan, conn: Connection) -> None:
    """The stream ended: its span's record goes to the exporter when sampled."""
    tracer = plan.tracer
    assert tracer is not None
    if getattr(stream, "trace", None) is None:
        return  # refused by the codec before it was routed
    if not stream.request_id:
        # Answered without an upstream (no upstream head, so no x-request-id made yet):
        # the id Envoy's connection manager would have given the request.
        h = stream.head
        assert h is not None
        policy = plan.policy
        if h.request_id and not policy.use_remote_address:
            stream.request_id = h.request_id.decode("latin-1")
        elif policy.generate_request_id:
            stream.request_id = policy.ids.next()[0]
        elif h.request_id:
            stream.request_id = h.request_id.decode("latin-1")
    state = _decide(stream, tracer)
    if not state.sampled:
        return
    t = tracer.t
    h = stream.head
    assert h is not None
    headers = h.headers
    rp = stream.route_plan
    # Envoy 1.40's defaults: the Host for Zipkin; "ingress", or "egress <host>", for
    # OpenTelemetry.
    default_name = h.host
    if tracer.otel:
        default_name = f"egress {h.host}" if t.kind == "CLIENT" else "ingress"
    name = (rp.decorator if rp is not None else "") or t.operation or default_name
    status = stream.status
    path = h.path
    if len(path) > t.max_path_tag_length:
        path = path[: t.max_path_tag_length]
    tags = [
        ("component", "proxy"),
        ("node_id", tracer.node_id),
        *((("zone", ""),) if tracer.otel else ()),
        ("guid:x-request-id", stream.request_id),
        ("http.url", f"http://{h.host}{path}"),
        ("http.method", h.method),
        ("downstream_cluster", headers.get("x-envoy-downstream-service-cluster", "-")),
        ("user_agent", headers.get("user-agent", "-")),
        ("http.protocol", "HTTP/1.0" if h.http10 else "HTTP/1.1"),
        ("peer.address", conn.remote_ip),
        ("request_size", str(stream.bytes_received)),
        ("response_size", str(stream.bytes_sent)),
        ("response_flags", stream.flag_text()),
        ("http.status_code", str(status)),
    ]
    cluster = stream.upstream_cluster
    if cluster:
        tags.append(("upstream_cluster", cluster))
        tags.append(("upstream_cluster.name", cluster))
    if not status or status >= 500:
        tags.append(("error", "true"))
    client_id = headers.get("x-client-trace-id")
    if client_id is not None:
        tags.append(("guid:x-client-trace-id", client_id))
    tags.extend(tracer.literal_tags)
    for tag, header, default in tracer.header_tags:
        value = headers.get(header, default)
        if value:
            tags.append((tag, value))
    rt = rp.tracing if rp is not None else None
    if rt is not None:
        for c in rt.custom_tags:
            value = headers.get(c.value, c.default) if c.kind == "request_header" else c.value
            if value:
                tags.append((c.tag, value))
    start_us = int(stream.t_wall * 1_000_000)
    duration_us = int((time.monotonic() - stream.t0) * 1_000_000)
    shared = t.shared_span_context and t.kind == "SERVER"
    record = (
        state.trace_id, state.span_id, state.parent_id, name, t.kind, shared,
        start_us, duration_us, tags, state.trace_state,
    )  # fmt: skip
    tracer.exporter.add(record, getattr(conn, "worker", None))


# -- export -------------------------------------------------------------------------------

# This worker process's exporters, by collector (cluster, endpoint, hostname).
_EXPORTERS: dict[tuple[str, str, str, str], ZipkinExporter] = {}


def exporter_for(t: Tracing, stats: StatsStore) -> ZipkinExporter:
    key = (t.provider, t.collector_cluster, t.collector_endpoint, t.collector_hostname)
    exporter = _EXPORTERS.get(key)
    if exporter is None:
        if t.collector_grpc:
            exporter = OtlpGrpcExporter(
                t.collector_endpoint, t.collector_hostname, stats.named("tracing.opentelemetry.")
            )
        elif t.provider == "opentelemetry":
            exporter = OtlpHttpExporter(
                t.collector_endpoint, t.collector_hostname, stats.named("tracing.opentelemetry.")
            )
        else:
            exporter = ZipkinExporter(
                t.collector_endpoint, t.collector_hostname, stats.named("tracing.zipkin.")
            )
        _EXPORTERS[key] = exporter
    if isinstance(exporter, OtlpHttpExporter):
        exporter.service_name = t.service_name
        exporter.extra_headers = "".join(f"{k}: {v}\r\n" for k, v in t.collector_headers)
        exporter.timeout_s = t.collector_timeout_s
    return exporter


class ZipkinExporter:
    """Spans waiting for one collector, and the task that posts them."""

    def __init__(self, endpoint: str, hostname: str, stats: NamedStats) -> None:
        self.endpoint = endpoint
        self.hostname = hostname
        self.stats = stats
        self.cluster: ClusterState | None = None
        self.service_name = ""
        self.local_ip = ""
        self.queue: list[tuple[Any, ...]] = []
        self.wake = trio.Event()
        self.running = False

    def add(self, record: tuple[Any, ...], worker: Any) -> None:
        if len(self.queue) >= MAX_QUEUED:
            self.stats.inc("spans_dropped")
            return
        self.queue.append(record)
        if not self.running and worker is not None:
            self.running = True
            worker.spawn(self.run)
        if len(self.queue) >= MIN_FLUSH_SPANS:
            self.wake.set()

    async def run(self) -> None:
        try:
            while True:
                with trio.move_on_after(FLUSH_INTERVAL_S) as scope:
                    await self.wake.wait()
                if scope.cancelled_caught:
                    self.stats.inc("timer_flushed")
                self.wake = trio.Event()
                if self.queue:
                    batch, self.queue = self.queue, []
                    await self.post(batch)
        finally:
            self.running = False

    content_type = "application/json"
    extra_headers = ""
    timeout_s = POST_TIMEOUT_S

    def body(self, batch: list[tuple[Any, ...]]) -> bytes:
        spans = [span_json(r, self.service_name, self.local_ip) for r in batch]
        return json.dumps(spans, separators=(",", ":")).encode()

    async def post(self, batch: list[tuple[Any, ...]]) -> None:
        cluster = self.cluster
        host = cluster.balancer.pick() if cluster is not None else None
        if host is None:
            self.stats.inc("reports_skipped_no_cluster")
            return
        body = self.body(batch)
        head = (
            f"POST {self.endpoint} HTTP/1.1\r\nhost: {self.hostname}\r\n"
            f"content-type: {self.content_type}\r\ncontent-length: {len(body)}\r\n"
            f"{self.extra_headers}connection: close\r\n\r\n"
        ).encode("latin-1")
        self.stats.inc("spans_sent", len(batch))
        try:
            with trio.fail_after(self.timeout_s):
                conn = await trio.open_tcp_stream(host.address, host.port)
                async with conn:
                    await conn.send_all(head + body)
                    status = await _read_status(conn)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError, ValueError):
            # The collector is down or slow: the spans are lost, never a request.
            self.stats.inc("reports_failed")
            return
        if 200 <= status < 300:
            self.stats.inc("reports_sent")
        else:
            self.stats.inc("reports_dropped")


class OtlpHttpExporter(ZipkinExporter):
    """The OpenTelemetry tracer's OTLP/HTTP export (binary protobuf, as Envoy's
    http_service posts it); its stats are under ``tracing.opentelemetry.``."""

    content_type = "application/x-protobuf"

    def body(self, batch: list[tuple[Any, ...]]) -> bytes:
        resource = (
            ("service.name", self.service_name),
            ("telemetry.sdk.name", "proxyd"),
            ("telemetry.sdk.language", "python"),
            ("telemetry.sdk.version", PROXYD_VERSION),
        )
        return export_request(batch, resource, ("proxyd", PROXYD_VERSION))


class OtlpGrpcExporter(OtlpHttpExporter):
    """The OpenTelemetry tracer's OTLP export over gRPC (``grpc_service.envoy_grpc``):
    one unary ``TraceService/Export`` call per batch."""

    async def post(self, batch: list[tuple[Any, ...]]) -> None:
        cluster = self.cluster
        host = cluster.balancer.pick() if cluster is not None else None
        if host is None:
            self.stats.inc("reports_skipped_no_cluster")
            return
        message = self.body(batch)
        metadata = tuple(
            tuple(line.split(": ", 1)) for line in self.extra_headers.split("\r\n") if line
        )
        self.stats.inc("spans_sent", len(batch))
        try:
            with trio.fail_after(self.timeout_s):
                status = await unary_call(
                    host.address,
                    host.port,
                    self.hostname,
                    self.endpoint,
                    message,
                    metadata,  # type: ignore[arg-type]
                )
        except (OSError, trio.TooSlowError, GrpcCallError):
            self.stats.inc("reports_failed")
            return
        self.stats.inc("reports_sent" if status == 0 else "reports_dropped")


async def _read_status(conn: trio.SocketStream) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = await conn.receive_some(4096)
        if not chunk:
            raise ValueError("collector closed before answering")
        data += chunk
    parts = data.split(b"\r\n", 1)[0].split(b" ", 2)
    return int(parts[1])
