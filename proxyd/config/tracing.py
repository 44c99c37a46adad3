"""HttpConnectionManager.tracing → :class:`proxyd.epoch.Tracing` (Zipkin provider).

What the coverage tree (``proxyd.config.supported``) lets through is compiled here; the
values proxyd does not implement are refused by path: ``verbose: true``,
``spawn_upstream_span: true``, ``operation`` / ``upstream_operation`` with command
operators, a ``collector_endpoint_version`` other than HTTP_JSON, a
``trace_context_option`` other than USE_B3. The worker's side is proxyd.worker.tracing.
"""

from __future__ import annotations

import os
from collections.abc import Container
from typing import Any
from urllib.parse import urlsplit

from proxyd.config.proto import join, unpack
from proxyd.config.values import duration_or, enum_name, wrapped_or
from proxyd.epoch import CustomTag, RouteTracing, Tracing
from proxyd.errors import ConfigError

ZIPKIN_TYPE = "envoy.config.trace.v3.ZipkinConfig"
ROUTER_TYPE = "envoy.extensions.filters.http.router.v3.Router"
ZIPKIN_NAME = "envoy.tracers.zipkin"
OTEL_TYPE = "envoy.config.trace.v3.OpenTelemetryConfig"
DEFAULT_MAX_PATH_TAG_LENGTH = 256


# type.v3.FractionalPercent.DenominatorType, by number.
_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}


def _percent(tracing: Any, field: str) -> tuple[int, int]:
    """A Percent (0..100, default 100) over 10,000, as Envoy keeps it."""
    if not tracing.HasField(field):
        return (10000, 10000)
    value = getattr(tracing, field).value
    return (max(0, min(10000, int(round(value * 100)))), 10000)


def _fraction(msg: Any, field: str) -> tuple[int, int] | None:
    if not msg.HasField(field):
        return None
    f = getattr(msg, field)
    return (f.numerator, _DENOMINATORS[f.denominator])


def compile_route_tracing(route: Any, path: str, file: str) -> RouteTracing | None:
    """Route.tracing: sampling overrides and custom tags; ``operation`` and
    ``upstream_operation`` are refused (proxyd names spans by decorator and HCM)."""
    if not route.HasField("tracing"):
        return None
    t = route.tracing
    path = join(path, "tracing")
    for name in ("operation", "upstream_operation"):
        if getattr(t, name):
            raise ConfigError(file, join(path, name), "not supported by proxyd")
    return RouteTracing(
        client_sampling=_fraction(t, "client_sampling"),
        random_sampling=_fraction(t, "random_sampling"),
        overall_sampling=_fraction(t, "overall_sampling"),
        custom_tags=tuple(
            custom_tag(c, join(path, f"custom_tags[{i}]"), file)
            for i, c in enumerate(t.custom_tags)
        ),
    )


def compile_tracing(
    hcm: Any, direction: str, path: str, clusters: Container[str], file: str
) -> Tracing | None:
    """The HCM's tracing, or None when it has none. ``direction`` is the listener's
    traffic_direction ("UNSPECIFIED", "INBOUND", "OUTBOUND")."""
    if not hcm.HasField("tracing"):
        return None
    t = hcm.tracing
    path = join(path, "tracing")
    for i, f in enumerate(hcm.http_filters):
        if f.typed_config.type_url.endswith("/" + ROUTER_TYPE):
            router = unpack(f.typed_config)
            if router is not None and router.start_child_span:
                raise ConfigError(
                    file,
                    join(
                        path[: -len(".tracing")], f"http_filters[{i}].typed_config.start_child_span"
                    ),
                    "start_child_span (a child span per upstream request) not supported by proxyd",
                )
    if not t.HasField("provider"):
        # Envoy 1.40: a tracing block without a provider traces nothing.
        return None
    if t.verbose:
        raise ConfigError(file, join(path, "verbose"), "verbose tracing not supported by proxyd")
    if wrapped_or(t, "spawn_upstream_span", False):
        raise ConfigError(
            file, join(path, "spawn_upstream_span"), "spawn_upstream_span not supported by proxyd"
        )
    for name in ("operation", "upstream_operation"):
        if "%" in getattr(t, name):
            raise ConfigError(
                file, join(path, name), "command operators in span names not supported by proxyd"
            )
    ppath = join(path, "provider")
    payload = unpack(t.provider.typed_config) if t.provider.HasField("typed_config") else None
    common = dict(
        kind="CLIENT" if direction == "OUTBOUND" else "SERVER",
        random_sampling=_percent(t, "random_sampling"),
        client_sampling=_percent(t, "client_sampling"),
        overall_sampling=_percent(t, "overall_sampling"),
        custom_tags=tuple(
            custom_tag(c, join(path, f"custom_tags[{i}]"), file)
            for i, c in enumerate(t.custom_tags)
        ),
        operation=t.operation,
        max_path_tag_length=wrapped_or(t, "max_path_tag_length", DEFAULT_MAX_PATH_TAG_LENGTH),
    )
    if payload is not None and payload.DESCRIPTOR.full_name == OTEL_TYPE:
        return _opentelemetry(payload, join(ppath, "typed_config"), clusters, file, common)
    if payload is None or payload.DESCRIPTOR.full_name != ZIPKIN_TYPE:
        raise ConfigError(file, ppath, f"tracer '{t.provider.name}' not supported by proxyd")
    z = payload
    zpath = join(ppath, "typed_config")
    version = enum_name(z, "collector_endpoint_version")
    if version not in ("HTTP_JSON", "DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE"):
        raise ConfigError(
            file,
            join(zpath, "collector_endpoint_version"),
            f"collector_endpoint_version {version} not supported by proxyd (HTTP_JSON only)",
        )
    if enum_name(z, "trace_context_option") != "USE_B3":
        raise ConfigError(
            file, join(zpath, "trace_context_option"), "only USE_B3 is supported by proxyd"
        )
    if z.split_spans_for_request:
        raise ConfigError(file, join(zpath, "split_spans_for_request"), "not supported by proxyd")
    if not z.collector_cluster:
        raise ConfigError(file, join(zpath, "collector_cluster"), "a collector_cluster is required")
    if z.collector_cluster not in clusters:
        # Envoy: "collector_cluster 'x' ... is not defined" at load.
        raise ConfigError(
            file,
            join(zpath, "collector_cluster"),
            f"{z.collector_cluster} collector cluster is not defined on cluster manager level",
        )
    return Tracing(
        collector_cluster=z.collector_cluster,
        collector_endpoint=z.collector_endpoint or "/api/v2/spans",
        collector_hostname=z.collector_hostname or z.collector_cluster,
        trace_id_128bit=z.trace_id_128bit,
        shared_span_context=wrapped_or(z, "shared_span_context", True),
        **common,
    )


def _opentelemetry(
    o: Any, path: str, clusters: Container[str], file: str, common: dict[str, Any]
) -> Tracing:
    """OpenTelemetryConfig with an ``http_service`` (OTLP/HTTP, binary protobuf)."""
    for name in ("resource_detectors", "sampler"):
        if (name == "resource_detectors" and o.resource_detectors) or (
            name == "sampler" and o.HasField("sampler")
        ):
            raise ConfigError(file, join(path, name), "not supported by proxyd")
    if o.HasField("grpc_service"):
        return _otlp_grpc(o, join(path, "grpc_service"), clusters, file, common)
    if not o.HasField("http_service"):
        raise ConfigError(file, path, "an http_service is required by proxyd")
    hs = o.http_service
    hpath = join(path, "http_service")
    uri = urlsplit(hs.http_uri.uri)
    if uri.scheme not in ("http", "") or not uri.netloc:
        raise ConfigError(file, join(hpath, "http_uri.uri"), "an http:// uri is required")
    cluster = hs.http_uri.cluster
    if cluster not in clusters:
        raise ConfigError(
            file, join(hpath, "http_uri.cluster"), f"cluster '{cluster}' is not defined"
        )
    headers = []
    for i, h in enumerate(hs.request_headers_to_add):
        if h.header.raw_value or h.HasField("append") or h.append_action:
            raise ConfigError(
                file, join(hpath, f"request_headers_to_add[{i}]"), "only key and value"
            )
        headers.append((h.header.key, h.header.value))
    timeout = duration_or(hs.http_uri, "timeout", 0.0)
    return Tracing(
        collector_cluster=cluster,
        collector_endpoint=(uri.path or "/") + (f"?{uri.query}" if uri.query else ""),
        collector_hostname=uri.netloc,
        provider="opentelemetry",
        service_name=o.service_name or "unknown_service:envoy",
        collector_headers=tuple(headers),
        collector_timeout_s=timeout or 5.0,
        **common,
    )


def _otlp_grpc(
    o: Any, path: str, clusters: Container[str], file: str, common: dict[str, Any]
) -> Tracing:
    """OpenTelemetryConfig.grpc_service with envoy_grpc (google_grpc is refused)."""
    g = o.grpc_service
    if g.WhichOneof("target_specifier") != "envoy_grpc":
        raise ConfigError(file, join(path, "google_grpc"), "google_grpc not supported by proxyd")
    if g.HasField("retry_policy") or g.envoy_grpc.HasField("retry_policy"):
        raise ConfigError(file, join(path, "retry_policy"), "not supported by proxyd")
    cluster = g.envoy_grpc.cluster_name
    if cluster not in clusters and cluster not in getattr(clusters, "grpc_only", ()):
        raise ConfigError(
            file, join(path, "envoy_grpc.cluster_name"), f"cluster '{cluster}' is not defined"
        )
    return Tracing(
        collector_cluster=cluster,
        collector_endpoint="/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        collector_hostname=g.envoy_grpc.authority or cluster,
        provider="opentelemetry",
        service_name=o.service_name or "unknown_service:envoy",
        collector_headers=tuple((m.key, m.value) for m in g.initial_metadata),
        collector_timeout_s=duration_or(g, "timeout", 0.0) or 5.0,
        collector_grpc=True,
        **common,
    )


def custom_tag(c: Any, path: str, file: str) -> CustomTag:
    """A ``type.tracing.v3.CustomTag`` (tracing's, and the gRPC access log's)."""
    kind = c.WhichOneof("type")
    if kind == "literal":
        return CustomTag(c.tag, "literal", c.literal.value)
    if kind == "request_header":
        return CustomTag(
            c.tag, "request_header", c.request_header.name.lower(), c.request_header.default_value
        )
    if kind == "environment":
        # Read once at load, as Envoy reads it when the config is loaded.
        env = c.environment
        return CustomTag(c.tag, "literal", os.environ.get(env.name, env.default_value))
    raise ConfigError(
        file, join(path, kind or "type"), f"custom tag {kind} not supported by proxyd"
    )
