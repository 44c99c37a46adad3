"""The OpenTelemetry tracer's pure parts (proxyd.protocol.otlp): W3C trace context and
the hand-encoded OTLP export request, read back with tests/otlp_wire.py by
opentelemetry-proto's field numbers (``scope_spans`` is field 2 of ResourceSpans, the
field the old copy of the protos in xds-protos does not have); and its config."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxyd.protocol.otlp import (
    Traceparent,
    export_request,
    extract_traceparent,
    inject_traceparent,
)
from tests.otlp_wire import export_request as read_export
from tests.otlp_wire import fields
from tests.unit.test_config_parse import HCM, base, hcm, load, reject

OTEL_T = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_extract_traceparent() -> None:
    assert extract_traceparent({"traceparent": TP, "tracestate": "a=b"}) == Traceparent(
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", True, "a=b"
    )
    assert extract_traceparent({"traceparent": TP[:-2] + "00"}).sampled is False  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "value",
    [
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # unknown version
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero span id
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00-xyz-b7ad6b7169203331-01",
        "",
    ],
)
def test_invalid_traceparents_start_a_new_trace(value: str) -> None:
    assert extract_traceparent({"traceparent": value}) is None


@given(st.text(max_size=80))
def test_extract_traceparent_never_raises(value: str) -> None:
    tp = extract_traceparent({"traceparent": value})
    assert tp is None or (len(tp.trace_id), len(tp.span_id)) == (32, 16)


def test_inject_traceparent() -> None:
    assert inject_traceparent("a" * 32, "b" * 16, True, "") == (
        b"traceparent: 00-" + b"a" * 32 + b"-" + b"b" * 16 + b"-01\r\ntracestate: \r\n"
    )
    assert inject_traceparent("a" * 32, "b" * 16, False, "x=y").endswith(
        b"-00\r\ntracestate: x=y\r\n"
    )


def _record(parent: str = "", state: str = "") -> tuple[Any, ...]:
    return (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", parent, "ingress", "SERVER",
        False, 1_700_000_000_000_000, 1_500, [("http.method", "GET"), ("zone", "")], state,
    )  # fmt: skip


def test_export_request_reads_back_with_otlp_field_numbers() -> None:
    data = export_request(
        [_record(), _record("00f067aa0ba902b7", "k=v")],
        [("service.name", "svc")],
        ("proxyd", "1.0"),
    )
    # ExportTraceServiceRequest.resource_spans (1) → ResourceSpans: resource (1) and
    # scope_spans (2), never the deprecated instrumentation_library_spans (1000).
    ((number, wire, resource_spans),) = fields(data)
    assert (number, wire) == (1, 2)
    assert [n for n, _, _ in fields(resource_spans)] == [1, 2]
    first, second = read_export(data)
    assert first["resource"] == {"service.name": "svc"}
    assert first["scope"] == {"name": "proxyd", "version": "1.0"}
    assert first["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert first["span_id"] == "b7ad6b7169203331"
    assert "parent_span_id" not in first and "trace_state" not in first
    assert (first["name"], first["kind"]) == ("ingress", 2)
    assert first["end"] - first["start"] == 1_500_000  # ns
    assert first["start"] == 1_700_000_000_000_000_000
    assert first["attributes"] == {"http.method": "GET", "zone": ""}
    assert first["flags"] == 0x101  # sampled, "is remote" known and false
    assert second["parent_span_id"] == "00f067aa0ba902b7"
    assert second["trace_state"] == "k=v"
    assert second["flags"] == 0x301


def test_span_flags_is_fixed32() -> None:
    data = export_request([_record()], [], ("p", "v"))
    rs = fields(data)[0][2]
    ss = [v for n, _, v in fields(rs) if n == 2][0]
    span = [v for n, _, v in fields(ss) if n == 2][0]
    assert [(n, w) for n, w, _ in fields(span) if n in (7, 8, 16)] == [(7, 1), (8, 1), (16, 5)]


# -- config -------------------------------------------------------------------------------


def otel(d: dict[str, Any], **cfg: Any) -> dict[str, Any]:
    hcm(d)["tracing"] = {
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {"@type": OTEL_T, **cfg},
        }
    }
    return hcm(d)["tracing"]


def test_http_service_config() -> None:
    d = base()
    otel(
        d,
        service_name="svc",
        http_service={
            "http_uri": {
                "uri": "http://collector:4318/v1/traces",
                "cluster": "web",
                "timeout": "2s",
            },
            "request_headers_to_add": [{"header": {"key": "authorization", "value": "Bearer x"}}],
        },
    )
    t = load(d).epoch_template.listeners[0].hcm.tracing
    assert t is not None
    assert (t.provider, t.collector_cluster, t.collector_endpoint, t.collector_hostname) == (
        "opentelemetry", "web", "/v1/traces", "collector:4318",
    )  # fmt: skip
    assert t.service_name == "svc" and t.collector_timeout_s == 2.0
    assert t.collector_headers == (("authorization", "Bearer x"),)


def test_grpc_service_config() -> None:
    d = base()
    otel(
        d,
        grpc_service={
            "envoy_grpc": {"cluster_name": "web", "authority": "otel.example"},
            "timeout": "0.25s",
            "initial_metadata": [{"key": "x-token", "value": "t"}],
        },
    )
    t = load(d).epoch_template.listeners[0].hcm.tracing
    assert t is not None and t.collector_grpc
    assert (t.collector_cluster, t.collector_hostname, t.collector_timeout_s) == (
        "web", "otel.example", 0.25,
    )  # fmt: skip
    assert t.collector_endpoint == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    assert t.collector_headers == (("x-token", "t"),)
    assert t.service_name == "unknown_service:envoy"


def test_google_grpc_is_refused() -> None:
    d = base()
    otel(d, grpc_service={"google_grpc": {"target_uri": "x:1", "stat_prefix": "s"}})
    assert reject(d).path.startswith(f"{HCM}.tracing.provider.typed_config.grpc_service")


def test_unknown_http_service_cluster_is_refused() -> None:
    d = base()
    otel(
        d,
        http_service={
            "http_uri": {"uri": "http://c/v1/traces", "cluster": "nope", "timeout": "1s"}
        },
    )
    assert reject(d).path.endswith("http_service.http_uri.cluster")
