"""The gRPC access log service (``envoy.access_loggers.http_grpc`` and
``envoy.access_loggers.tcp_grpc``) in a worker.

A :class:`GrpcLogPlan` is compiled per epoch for each such log of a listener: its filter,
its additional headers, and the worker's :class:`AlsExporter` for its log name and
collector. Writing a log encodes one ``HTTPAccessLogEntry`` (or ``TCPAccessLogEntry``)
(proxyd.protocol.als) into the exporter's buffer; the exporter
(:class:`~proxyd.worker.otel_access_log.LogExporter`: every ``buffer_flush_interval``
or past ``buffer_size_bytes``, off the request path) sends what it holds as one
``StreamAccessLogsMessage`` on its ``AccessLogService/StreamAccessLogs`` call to a host
of the collector cluster, opening the call when there is none (the first message of a
call carries the identifier: the node's id and cluster, the log name). A collector that
is down, slow or that ended the call costs the batch (counted in ``logs_dropped``),
never a request.

Stats are Envoy's, under ``access_logs.grpc_access_log.``: ``logs_written`` (HTTP
entries taken into the buffer: Envoy does not count TCP entries there),
``logs_dropped`` (the buffer was full), ``grpc_entries_flushed`` (entries sent on an
open call) and ``grpc_entries_flush_failed`` (entries lost with a call that could not be
opened or broke: Envoy counts those as flushed, see docs/configuration.md).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import trio

from proxyd.epoch import GrpcAccessLog
from proxyd.protocol.als import http_entry, identifier, stream_message, tcp_entry
from proxyd.worker import otel_access_log
from proxyd.worker.grpc_stream import ClientStreamCall
from proxyd.worker.grpc_unary import GrpcCallError
from proxyd.worker.otel_access_log import LogExporter

if TYPE_CHECKING:
    from proxyd.protocol.access_log import LogRecord
    from proxyd.protocol.access_log_filters import Predicate
    from proxyd.worker.stats import NamedStats

METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
DEFAULT_TIMEOUT_S = 5.0
# The exporters of this worker process, kept across epochs (their buffers and calls with
# them), by (log name, collector cluster, kind, node): a reload that changes only the
# batching settings keeps the call.
_EXPORTERS: dict[tuple[Any, ...], AlsExporter] = {}


class AlsExporter(LogExporter):
    """Entries for one log name and collector, streamed on one call at a time."""

    STATS = ("logs_written", "logs_dropped", "grpc_entries_flushed", "grpc_entries_flush_failed")

    def __init__(self, log: GrpcAccessLog, ident: bytes, stats: NamedStats) -> None:
        self.written = None if log.tcp else "logs_written"
        super().__init__(log.flush_interval_s, log.buffer_size_bytes, stats)
        self.log = log
        self.ident = ident
        self.call: ClientStreamCall | None = None

    async def send(self, batch: list[bytes]) -> None:
        log = self.log
        try:
            with trio.fail_after(log.timeout_s or DEFAULT_TIMEOUT_S):
                call = self.call
                ident = None
                if call is None or call.ended:
                    cluster = self.cluster
                    host = cluster.balancer.pick() if cluster is not None else None
                    if host is None:
                        self.stats.inc("grpc_entries_flush_failed", len(batch))
                        return
                    self.call = call = await ClientStreamCall.open(
                        host.address, host.port, log.cluster, METHOD
                    )
                    ident = self.ident
                await call.send(stream_message(ident, batch, log.tcp))
        except (OSError, trio.TooSlowError, GrpcCallError):
            self.stats.inc("grpc_entries_flush_failed", len(batch))
            call, self.call = self.call, None
            if call is not None:
                await call.aclose()
            return
        self.stats.inc("grpc_entries_flushed", len(batch))


def exporter_for(log: GrpcAccessLog, stats: Any, clusters: dict[str, Any]) -> AlsExporter:
    """This worker's exporter for ``log``, pointed at the epoch's cluster state."""
    node_id, node_cluster, _zone = otel_access_log.NODE
    key = (log.log_name, log.cluster, log.tcp, node_id, node_cluster)
    exporter = _EXPORTERS.get(key)
    if exporter is None:
        exporter = AlsExporter(
            log,
            identifier(node_id, node_cluster, log.log_name),
            stats.named("access_logs.grpc_access_log."),
        )
        _EXPORTERS[key] = exporter
    exporter.log = log
    exporter.flush_interval_s = log.flush_interval_s
    exporter.buffer_size_bytes = log.buffer_size_bytes
    exporter.cluster = clusters.get(log.cluster)
    return exporter


class GrpcLogPlan:
    """One gRPC access log of an epoch (``LogPlan``'s counterpart)."""

    __slots__ = (
        "test", "log", "exporter", "request_headers", "response_headers", "literal_tags",
        "header_tags",
    )  # fmt: skip

    def __init__(self, log: GrpcAccessLog, test: Predicate | None, exporter: AlsExporter) -> None:
        self.test = test
        self.log = log
        self.exporter = exporter
        self.literal_tags = tuple((c.tag, c.value) for c in log.custom_tags if c.kind == "literal")
        self.header_tags = tuple(
            (c.tag, c.value, c.default) for c in log.custom_tags if c.kind == "request_header"
        )
        # What the record must carry: the additional headers, the referer, the tags'.
        self.request_headers = {
            *log.request_headers, "referer", *(name for _, name, _ in self.header_tags)
        }  # fmt: skip
        self.response_headers = set(log.response_headers)

    def write(self, rec: LogRecord) -> None:
        if self.test is not None and not self.test(rec):
            return
        log = self.log
        tags = self.literal_tags
        if self.header_tags:
            headers = rec.req_headers
            tags += tuple(
                (tag, value)
                for tag, name, default in self.header_tags
                if (value := headers.get(name, default))
            )
        if log.tcp:
            entry = tcp_entry(rec, rec.request_id or str(uuid.uuid4()), tags)
        else:
            entry = http_entry(rec, log.request_headers, log.response_headers, tags)
        self.exporter.add(entry)
