"""The OpenTelemetry access logger (``envoy.access_loggers.open_telemetry``) in a worker.

An :class:`OtelLogPlan` is compiled per epoch for each such log of a listener: its
filter, its body and attribute formats (Envoy's text formats, every value a string), and
the worker's :class:`OtelLogExporter` for its collector. Writing a log encodes one OTLP
``LogRecord`` (the request's start time, the body, the attributes, the trace id of a
traced request) into the exporter's buffer; the exporter sends what it holds as one
unary ``LogsService/Export`` gRPC call to a host of the collector cluster when the buffer
passes ``buffer_size_bytes`` or every ``buffer_flush_interval``, off the request path. A
collector that is down costs the batch, never a request. The resource carries Envoy's
built-in labels (``log_name``, ``zone_name``, ``cluster_name``, ``node_name``) unless
``disable_builtin_labels``, then ``resource_attributes``.

Stats (``access_logs.open_telemetry.``, proxyd's own): ``logs_written``,
``logs_dropped`` (the buffer was full: more than ten flushes' worth waited),
``exports_failed``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from proxyd.epoch import OtelLog
from proxyd.protocol.access_log import LogFormat, LogRecord
from proxyd.protocol.otlp import encode_log_record, export_logs_request
from proxyd.worker.grpc_unary import GrpcCallError, unary_call

if TYPE_CHECKING:
    from proxyd.protocol.access_log_filters import Predicate
    from proxyd.worker.stats import NamedStats
    from proxyd.worker.upstream import ClusterState

METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
DEFAULT_TIMEOUT_S = 5.0
# The exporters of this worker process, kept across epochs (their buffers with them).
_EXPORTERS: dict[tuple[Any, ...], OtelLogExporter] = {}


class LogExporter:
    """Encoded log entries waiting for one collector, and the task that sends them
    (started on the first entry): a batch goes out when the buffer passes
    ``buffer_size_bytes`` or every ``flush_interval_s``, off the request path. More
    than ten flushes' worth waiting is dropped (``logs_dropped``). Subclasses say how a
    batch is sent (:meth:`send`) and which stats they keep (``STATS``, shown at 0)."""

    STATS: tuple[str, ...] = ("logs_written", "logs_dropped")
    # The counter of entries taken (None: not counted).
    written: str | None = "logs_written"

    def __init__(self, flush_interval_s: float, buffer_size_bytes: int, stats: NamedStats) -> None:
        self.flush_interval_s = flush_interval_s
        self.buffer_size_bytes = buffer_size_bytes
        self.stats = stats
        for name in self.STATS:
            stats.inc(name, 0)
        self.cluster: ClusterState | None = None
        self.queue: list[bytes] = []
        self.size = 0
        self.wake = trio.Event()
        self.running = False

    def add(self, record: bytes) -> None:
        if self.size > 10 * self.buffer_size_bytes:
            self.stats.inc("logs_dropped")
            return
        self.queue.append(record)
        self.size += len(record)
        if self.written is not None:
            self.stats.inc(self.written)
        if not self.running:
            self.running = True
            trio.lowlevel.spawn_system_task(self.run)
        if self.size >= self.buffer_size_bytes:
            self.wake.set()

    async def run(self) -> None:
        try:
            while True:
                with trio.move_on_after(self.flush_interval_s):
                    await self.wake.wait()
                self.wake = trio.Event()
                if self.queue:
                    batch, self.queue, self.size = self.queue, [], 0
                    await self.send(batch)
        finally:
            self.running = False

    async def send(self, batch: list[bytes]) -> None:
        raise NotImplementedError


class OtelLogExporter(LogExporter):
    """OTLP log records for one collector: one unary ``LogsService/Export`` per batch."""

    STATS = ("logs_written", "logs_dropped", "exports_failed")

    def __init__(
        self, otel: OtelLog, resource: tuple[tuple[str, str], ...], stats: NamedStats
    ) -> None:
        super().__init__(otel.flush_interval_s, otel.buffer_size_bytes, stats)
        self.otel = otel
        self.resource = resource

    async def send(self, batch: list[bytes]) -> None:
        cluster = self.cluster
        host = cluster.balancer.pick() if cluster is not None else None
        if host is None:
            self.stats.inc("exports_failed")
            return
        message = export_logs_request(batch, self.resource)
        try:
            with trio.fail_after(self.otel.timeout_s or DEFAULT_TIMEOUT_S):
                status = await unary_call(
                    host.address, host.port, self.otel.cluster, METHOD, message
                )
        except (OSError, trio.TooSlowError, GrpcCallError):
            self.stats.inc("exports_failed")
            return
        if status != 0:
            self.stats.inc("exports_failed")


# The bootstrap's node (id, cluster, zone) for the built-in labels, set by the worker
# before it compiles an epoch's plans (proxyd.worker.plan.CompiledEpoch).
NODE: tuple[str, str, str] = ("", "", "")


def exporter_for(otel: OtelLog, stats: Any, clusters: dict[str, Any]) -> OtelLogExporter:
    """This worker's exporter for ``otel`` (one per collector, log name and resource),
    pointed at the epoch's cluster state."""
    resource: tuple[tuple[str, str], ...] = ()
    if otel.builtin_labels:
        node_id, node_cluster, zone = NODE
        resource = (
            ("log_name", otel.log_name),
            ("zone_name", zone),
            ("cluster_name", node_cluster),
            ("node_name", node_id),
        )
    resource += otel.resource_attributes
    key = (otel, resource)
    exporter = _EXPORTERS.get(key)
    if exporter is None:
        exporter = OtelLogExporter(otel, resource, stats.named("access_logs.open_telemetry."))
        _EXPORTERS[key] = exporter
    exporter.cluster = clusters.get(otel.cluster)
    return exporter


class OtelLogPlan:
    """One OpenTelemetry access log of an epoch (``LogPlan``'s counterpart)."""

    __slots__ = ("test", "body", "attributes", "exporter")

    def __init__(self, otel: OtelLog, test: Predicate | None, exporter: OtelLogExporter) -> None:
        self.test = test
        self.body = LogFormat(otel.body) if otel.body else None
        self.attributes = tuple((k, LogFormat(f) if f else None) for k, f in otel.attributes)
        self.exporter = exporter

    @property
    def request_headers(self) -> set[str]:
        out: set[str] = set()
        for fmt in (self.body, *(f for _, f in self.attributes)):
            if fmt is not None:
                out |= fmt.request_headers
        return out

    @property
    def response_headers(self) -> set[str]:
        out: set[str] = set()
        for fmt in (self.body, *(f for _, f in self.attributes)):
            if fmt is not None:
                out |= fmt.response_headers
        return out

    def write(self, rec: LogRecord) -> None:
        if self.test is not None and not self.test(rec):
            return
        body = self.body.format(rec) if self.body is not None else None
        attributes = tuple((k, f.format(rec) if f is not None else "") for k, f in self.attributes)
        time_ns = int(rec.start_time * 1e9)
        self.exporter.add(encode_log_record(time_ns, body, attributes, rec.trace_id))
