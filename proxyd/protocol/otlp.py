"""OpenTelemetry tracing as Envoy 1.40's ``envoy.tracers.opentelemetry`` does it,
without I/O: W3C trace context propagation and OTLP export requests.

* :func:`extract_traceparent` reads ``traceparent`` (version ``00``, 32 hex digits of
  trace id, 16 of span id, 2 of flags; all-zero ids are invalid) and ``tracestate``;
  :func:`inject_traceparent` writes the lines that go upstream (Envoy always sends a
  ``tracestate`` line, empty when none came).
* :func:`export_request` encodes ``ExportTraceServiceRequest`` (OTLP 1.x:
  ``resource_spans`` → ``resource`` + ``scope_spans`` → ``scope`` + ``spans``) by hand,
  the few messages and fields it needs, so that the worker never imports protobuf.
  Field numbers are opentelemetry-proto's (trace/v1/trace.proto, common/v1/common.proto,
  resource/v1/resource.proto, collector/trace/v1/trace_service.proto).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from proxyd.protocol.zipkin import _is_hex

SPAN_KIND = {"SERVER": 2, "CLIENT": 3}
# Span.flags: the sampled bit of the W3C flags, and "is the parent remote" known/true.
FLAG_SAMPLED = 0x01
FLAG_HAS_IS_REMOTE = 0x100
FLAG_IS_REMOTE = 0x200


@dataclass(frozen=True, slots=True)
class Traceparent:
    trace_id: str
    span_id: str
    sampled: bool
    tracestate: str


def extract_traceparent(headers: dict[str, str]) -> Traceparent | None:
    value = headers.get("traceparent")
    if value is None:
        return None
    parts = value.strip().split("-")
    if len(parts) != 4 or parts[0] != "00":
        return None
    _, trace_id, span_id, flags = parts
    if not (_is_hex(trace_id, (32,)) and _is_hex(span_id, (16,)) and _is_hex(flags, (2,))):
        return None
    if int(trace_id, 16) == 0 or int(span_id, 16) == 0:
        return None
    return Traceparent(
        trace_id.lower(), span_id.lower(), bool(int(flags, 16) & 1), headers.get("tracestate", "")
    )


def inject_traceparent(trace_id: str, span_id: str, sampled: bool, tracestate: str) -> bytes:
    flags = "01" if sampled else "00"
    return f"traceparent: 00-{trace_id}-{span_id}-{flags}\r\ntracestate: {tracestate}\r\n".encode(
        "latin-1"
    )


# -- protobuf wire format ---------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _str(field: int, text: str) -> bytes:
    return _len(field, text.encode("utf-8"))


def _key_value(key: str, value: str) -> bytes:
    """common.v1.KeyValue with a string AnyValue."""
    return _str(1, key) + _len(2, _str(1, value))


def _attributes(field: int, pairs: Iterable[tuple[str, str]]) -> bytes:
    return b"".join(_len(field, _key_value(k, v)) for k, v in pairs)


def encode_span(record: Sequence[Any]) -> bytes:
    """trace.v1.Span of one span record (see proxyd.worker.tracing.finish)."""
    trace_id, span_id, parent_id, name, kind, _shared, start_us, duration_us, tags, state = record
    flags = FLAG_HAS_IS_REMOTE | FLAG_SAMPLED | (FLAG_IS_REMOTE if parent_id else 0)
    out = [_len(1, bytes.fromhex(trace_id)), _len(2, bytes.fromhex(span_id))]
    if state:
        out.append(_str(3, state))
    if parent_id:
        out.append(_len(4, bytes.fromhex(parent_id)))
    out.append(_str(5, name))
    out.append(_varint(6 << 3) + _varint(SPAN_KIND.get(kind, 0)))
    start_ns = start_us * 1000
    out.append(_varint(7 << 3 | 1) + struct.pack("<Q", start_ns))
    out.append(_varint(8 << 3 | 1) + struct.pack("<Q", start_ns + duration_us * 1000))
    out.append(_attributes(9, tags))
    out.append(_varint(16 << 3 | 5) + struct.pack("<I", flags))
    return b"".join(out)


def export_request(
    records: Sequence[Sequence[Any]],
    resource: Sequence[tuple[str, str]],
    scope: tuple[str, str],
) -> bytes:
    """collector.trace.v1.ExportTraceServiceRequest with one ResourceSpans holding one
    ScopeSpans of all ``records``."""
    scope_msg = _str(1, scope[0]) + _str(2, scope[1])
    scope_spans = _len(1, scope_msg) + b"".join(_len(2, encode_span(r)) for r in records)
    resource_msg = _attributes(1, resource)
    resource_spans = _len(1, resource_msg) + _len(2, scope_spans)
    return _len(1, resource_spans)


# -- logs (the OpenTelemetry access logger) -----------------------------------------------


def encode_log_record(
    time_ns: int, body: str | None, attributes: Sequence[tuple[str, str]], trace_id: str | None
) -> bytes:
    """logs.v1.LogRecord: time_unix_nano, a string body (None: none), string
    attributes, and the trace id of a traced request (32 hex digits)."""
    out = [_varint(1 << 3 | 1) + struct.pack("<Q", time_ns)]
    if body is not None:
        out.append(_len(5, _str(1, body)))
    out.append(_attributes(6, attributes))
    if trace_id and len(trace_id) == 32:
        out.append(_len(9, bytes.fromhex(trace_id)))
    return b"".join(out)


def export_logs_request(records: Sequence[bytes], resource: Sequence[tuple[str, str]]) -> bytes:
    """collector.logs.v1.ExportLogsServiceRequest with one ResourceLogs holding one
    ScopeLogs (no scope, as Envoy sends it) of the encoded ``records``."""
    scope_logs = b"".join(_len(2, r) for r in records)
    resource_logs = _len(1, _attributes(1, resource)) + _len(2, scope_logs)
    return _len(1, resource_logs)
