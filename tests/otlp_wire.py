"""A protobuf wire-format reader for the tests: OTLP export requests decoded by field
number (the numbers of opentelemetry-proto's trace.proto, collector/trace/v1,
common.proto and resource.proto), so that what Envoy and proxyd post can be compared
without the OTLP message classes (the opentelemetry protos that xds-protos installs are
an old copy, without ``scope_spans``)."""

from __future__ import annotations

import struct
import threading
from typing import Any


def fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, value) in order: varints as int, fixed64/32 as int,
    length-delimited as bytes."""
    out = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 1:
            value = struct.unpack_from("<Q", data, i)[0]
            i += 8
        elif wire == 2:
            size, i = _varint(data, i)
            value = data[i : i + size]
            i += size
        elif wire == 5:
            value = struct.unpack_from("<I", data, i)[0]
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
        out.append((number, wire, value))
    return out


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _attributes(kvs: list[bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        f = {n: v for n, _, v in fields(kv)}
        key = f[1].decode()
        any_value = fields(f.get(2, b""))
        value: Any = ""
        for n, _, v in any_value:
            if n == 1:
                value = v.decode()  # string_value
            elif n in (2, 3):
                value = v  # bool_value, int_value
        out[key] = value
    return out


def export_request(data: bytes) -> list[dict[str, Any]]:
    """ExportTraceServiceRequest → one dict per span, with its resource and scope."""
    spans = []
    for n, _, rs in fields(data):
        if n != 1:  # resource_spans
            continue
        rs_fields = fields(rs)
        resource: dict[str, Any] = {}
        for m, _, v in rs_fields:
            if m == 1:
                resource = _attributes([a for k, _, a in fields(v) if k == 1])
        for m, _, ss in rs_fields:
            if m != 2:  # scope_spans (field 2 in OTLP 1.x)
                continue
            scope: dict[str, str] = {}
            for k, _, v in fields(ss):
                if k == 1:
                    sf = {a: b for a, _, b in fields(v)}
                    scope = {"name": sf.get(1, b"").decode(), "version": sf.get(2, b"").decode()}
            for k, _, v in fields(ss):
                if k == 2:
                    spans.append(_span(v, resource, scope))
    return spans


def _span(data: bytes, resource: dict[str, Any], scope: dict[str, str]) -> dict[str, Any]:
    span: dict[str, Any] = {"resource": resource, "scope": scope, "attributes": {}}
    attrs = []
    for n, _, v in fields(data):
        if n == 1:
            span["trace_id"] = v.hex()
        elif n == 2:
            span["span_id"] = v.hex()
        elif n == 3:
            span["trace_state"] = v.decode()
        elif n == 4:
            span["parent_span_id"] = v.hex()
        elif n == 5:
            span["name"] = v.decode()
        elif n == 6:
            span["kind"] = v
        elif n == 7:
            span["start"] = v
        elif n == 8:
            span["end"] = v
        elif n == 9:
            attrs.append(v)
        elif n == 15:
            span["status"] = {a: b for a, _, b in fields(v)}
        elif n == 16:
            span["flags"] = v
        else:
            span[f"field{n}"] = v
    span["attributes"] = _attributes(attrs)
    return span


class GrpcCollector:
    """An OTLP gRPC receiver (grpcio, messages kept as bytes and read by field number)."""

    METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

    def __init__(self) -> None:
        from concurrent import futures

        import grpc  # grpcio comes with xds-protos

        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()

        def export(request: bytes, context: Any) -> bytes:
            with self.lock:
                self.spans.extend(export_request(request))
            return b""  # an empty ExportTraceServiceResponse

        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(export)},
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def clear(self) -> None:
        with self.lock:
            self.spans.clear()

    def close(self) -> None:
        self.server.stop(None)


def export_logs_request(data: bytes) -> list[dict[str, Any]]:
    """The log records of an ``ExportLogsServiceRequest`` (collector/logs/v1), each with
    its resource's attributes: body (a string), attributes, whether it has a time and a
    trace id."""
    out = []
    for n, _, resource_logs in fields(data):
        if n != 1:
            continue
        rl = fields(resource_logs)
        resource: dict[str, Any] = {}
        for m, _, v in rl:
            if m == 1:
                resource = _attributes([a for k, _, a in fields(v) if k == 1])
        for m, _, scope_logs in rl:
            if m != 2:
                continue
            for k, _, record in fields(scope_logs):
                if k != 2:
                    continue
                f = fields(record)
                body = None
                for j, _, v in f:
                    if j == 5:
                        body = next((x.decode() for i, _, x in fields(v) if i == 1), "")
                out.append(
                    {
                        "resource": resource,
                        "body": body,
                        "attributes": _attributes([v for j, _, v in f if j == 6]),
                        "has_time": any(j == 1 and v > 0 for j, _, v in f),
                        "has_trace_id": any(j == 9 for j, _, _ in f),
                    }
                )
    return out


class GrpcLogsCollector:
    """An OTLP logs gRPC receiver (grpcio; messages read by field number)."""

    def __init__(self) -> None:
        from concurrent import futures

        import grpc

        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()

        def export(request: bytes, context: Any) -> bytes:
            with self.lock:
                self.records.extend(export_logs_request(request))
            return b""  # an empty ExportLogsServiceResponse

        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.logs.v1.LogsService",
            {"Export": grpc.unary_unary_rpc_method_handler(export)},
        )
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def take(self) -> list[dict[str, Any]]:
        with self.lock:
            out, self.records = self.records, []
        return out

    def close(self) -> None:
        self.server.stop(None)
