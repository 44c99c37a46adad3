"""HttpConnectionManager.tracing in the worker: the spans of requests and the trace
context sent upstream (Zipkin with B3, OpenTelemetry with W3C trace context).

* :class:`Tracer` is a listener's tracing for one epoch (``ListenerPlan.tracer``;
  None on a listener without tracing, whose requests then pay nothing for it).
* :func:`start` (when the request head is routed) reads the incoming B3 context and
  takes the incoming B3 lines out of the upstream head; :func:`on_upstream` (once the
  upstream head is built, its x-request-id known) makes Envoy's sampling decision,
  writes the trace reason into x-request-id and adds the B3 lines of the request's
  span; :func:`finish` (at stream end) appends the span's small record to the
  worker's exporter when the request is sampled.
* The OpenTelemetry provider (``Tracer.otel``) propagates W3C ``traceparent`` /
  ``tracestate`` instead, with child spans of the client's (proxyd.protocol.otlp).
* The exporters (proxyd.worker.trace_export) post the records off the request path.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from proxyd.protocol.http1_headers import RequestHeaderPolicy
from proxyd.protocol.otlp import (
    Traceparent,
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
    trace_decision,
)
from proxyd.worker.trace_export import exporter_for

if TYPE_CHECKING:
    from proxyd.epoch import Tracing
    from proxyd.protocol.http1 import RequestHead
    from proxyd.worker.plan import ListenerPlan
    from proxyd.worker.stats import StatsStore
    from proxyd.worker.stream import Connection, Stream
    from proxyd.worker.upstream import ClusterState

W3C_KEYS = ("traceparent", "tracestate")


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
