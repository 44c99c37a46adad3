"""Exporting spans from a worker, off the request path (proxyd.worker.tracing records
them).

* :class:`ZipkinExporter` (one per collector, per worker process) holds at most
  ``MAX_QUEUED`` records (more are dropped and counted in ``spans_dropped``) and posts
  them from a task of the worker's nursery when ``MIN_FLUSH_SPANS`` wait or every
  ``FLUSH_INTERVAL_S`` (Envoy's defaults), as Zipkin v2 JSON to a host of the collector
  cluster. :class:`OtlpHttpExporter` posts OTLP/HTTP binary protobuf instead, and
  :class:`OtlpGrpcExporter` makes one unary ``TraceService/Export`` gRPC call per batch
  (proxyd.worker.grpc_unary).
* Stats are Envoy's, under ``tracing.zipkin.`` or ``tracing.opentelemetry.``:
  ``spans_sent``, ``reports_sent``, ``reports_dropped`` (the collector answered other
  than 2xx, or a gRPC status other than OK), ``reports_failed`` (no answer: down, slow,
  reset), ``reports_skipped_no_cluster``, ``timer_flushed``. A collector that is down
  costs the batch, never a request.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import trio

from proxyd import __version__
from proxyd.protocol.otlp import export_request
from proxyd.protocol.zipkin import span_json
from proxyd.worker.grpc_unary import GrpcCallError, unary_call

if TYPE_CHECKING:
    from proxyd.epoch import Tracing
    from proxyd.worker.stats import NamedStats, StatsStore
    from proxyd.worker.upstream import ClusterState

PROXYD_VERSION = __version__
MAX_QUEUED = 1000
MIN_FLUSH_SPANS = 5
FLUSH_INTERVAL_S = 5.0
POST_TIMEOUT_S = 5.0
STAT_NAMES = (
    "spans_sent", "timer_flushed", "reports_skipped_no_cluster", "reports_sent",
    "reports_dropped", "reports_failed",
)  # fmt: skip

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
        for name in STAT_NAMES:  # shown at 0 from the start, as Envoy shows them
            stats.inc(name, 0)
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
