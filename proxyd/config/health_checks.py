"""clusters[].health_checks → epoch HealthChecks, with Envoy's defaults resolved.

``proxyd.config.supported`` has already rejected unsupported fields (custom checkers,
TLS options, event logs, ...) and broken proto constraints (a timeout and an interval
greater than 0s, both thresholds set, one checker kind, a non-empty path), so only the
checks Envoy makes in code are here, and what proxyd cannot do in a field it accepts:
a gRPC check needs an HTTP/2 cluster (Envoy's "<name> cluster must support HTTP/2 for
gRPC healthchecking"), and its initial_metadata may not name the headers proxyd's gRPC
client sets itself.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from typing import Any

from proxyd.config.proto import join
from proxyd.config.values import duration_or, enum_name, seconds, wrapped_or
from proxyd.epoch import HeaderToAdd, HealthCheck, StatusRange
from proxyd.errors import ConfigError

# Envoy's defaults (health_checker_base_impl.cc).
DEFAULT_NO_TRAFFIC_INTERVAL_S = 60.0

# Request headers of a gRPC check that proxyd's gRPC client (proxyd.master.xds.grpc)
# sets itself, so initial_metadata may not name them (Envoy would let them through).
GRPC_OWN_HEADERS = frozenset({"te", "content-type", "user-agent"})


def metadata_reserved(name: str) -> bool:
    return name.startswith("grpc-") or name in GRPC_OWN_HEADERS


def compile_health_checks(
    checks: Sequence[Any], path: str, file: str, *, cluster_name: str = "", http2: bool = False
) -> tuple[HealthCheck, ...]:
    """``path`` names the cluster's ``health_checks``; ``http2`` says whether the
    cluster speaks HTTP/2 upstream (explicit_http_config.http2_protocol_options)."""
    if len(checks) > 1:
        raise ConfigError(
            file, path, "more than one health check per cluster is not supported by proxyd"
        )
    out = []
    for i, hc in enumerate(checks):
        here = f"{path}[{i}]"
        if hc.WhichOneof("health_checker") == "grpc_health_check" and not http2:
            raise ConfigError(
                file, join(here, "grpc_health_check"),
                f"{cluster_name} cluster must support HTTP/2 for gRPC healthchecking",
            )  # fmt: skip
        out.append(_health_check(hc, here, file))
    return tuple(out)


def _health_check(hc: Any, path: str, file: str) -> HealthCheck:
    interval = seconds(hc.interval)
    unhealthy_interval = duration_or(hc, "unhealthy_interval", interval)
    no_traffic = duration_or(hc, "no_traffic_interval", DEFAULT_NO_TRAFFIC_INTERVAL_S)
    common: dict[str, Any] = {
        "timeout_s": seconds(hc.timeout),
        "interval_s": interval,
        "unhealthy_threshold": hc.unhealthy_threshold.value,
        "healthy_threshold": hc.healthy_threshold.value,
        "initial_jitter_s": duration_or(hc, "initial_jitter", 0.0),
        "interval_jitter_s": duration_or(hc, "interval_jitter", 0.0),
        "interval_jitter_percent": hc.interval_jitter_percent,
        "reuse_connection": wrapped_or(hc, "reuse_connection", True),
        "no_traffic_interval_s": no_traffic,
        "no_traffic_healthy_interval_s": duration_or(hc, "no_traffic_healthy_interval", no_traffic),
        "unhealthy_interval_s": unhealthy_interval,
        "unhealthy_edge_interval_s": duration_or(hc, "unhealthy_edge_interval", unhealthy_interval),
        "healthy_edge_interval_s": duration_or(hc, "healthy_edge_interval", interval),
    }
    kind = hc.WhichOneof("health_checker")
    if kind == "http_health_check":
        return _http(hc.http_health_check, common, join(path, kind), file)
    if kind == "tcp_health_check":
        return _tcp(hc.tcp_health_check, common, join(path, kind), file)
    if kind == "grpc_health_check":
        return _grpc(hc.grpc_health_check, common, join(path, kind), file)
    # supported.py lets only the three kinds above through; rules.py requires one.
    raise ConfigError(file, join(path, str(kind)), "health checker not supported by proxyd")


def _http(http: Any, common: dict[str, Any], path: str, file: str) -> HealthCheck:
    method = enum_name(http, "method")
    if method not in ("METHOD_UNSPECIFIED", "GET"):
        raise ConfigError(
            file, join(path, "method"), f"health check method {method} not supported by proxyd (GET only)"
        )  # fmt: skip
    headers = _headers(http.request_headers_to_add, join(path, "request_headers_to_add"), file)
    expected = _ranges(http.expected_statuses, "expected", join(path, "expected_statuses"), file)
    retriable = _ranges(
        http.retriable_statuses, "retriable", join(path, "retriable_statuses"), file
    )
    return HealthCheck(
        kind="http",
        http_host=http.host,
        http_path=http.path,
        http_headers=tuple(headers),
        expected_statuses=expected or (StatusRange(200, 201),),
        retriable_statuses=retriable,
        **common,
    )


def _headers(options: Sequence[Any], path: str, file: str) -> tuple[HeaderToAdd, ...]:
    """HeaderValueOptions (request_headers_to_add, initial_metadata) without formatters."""
    headers = []
    for i, option in enumerate(options):
        here = f"{path}[{i}]"
        name = option.header.key.lower()
        if name.startswith(":") or name == "host":  # Envoy's HeaderParser::configure
            raise ConfigError(
                file, join(here, "header.key"), ":-prefixed or host headers may not be modified"
            )
        value = option.header.value
        if "%" in value.replace("%%", ""):
            raise ConfigError(
                file, join(here, "header.value"),
                "header value formatters (%...%) in health check requests are not supported by proxyd",
            )  # fmt: skip
        headers.append(
            HeaderToAdd(
                name=name,
                value=value.replace("%%", "%"),
                action=enum_name(option, "append_action"),
            )
        )
    return tuple(headers)


def _grpc(grpc: Any, common: dict[str, Any], path: str, file: str) -> HealthCheck:
    metadata = _headers(grpc.initial_metadata, join(path, "initial_metadata"), file)
    for i, h in enumerate(metadata):
        if metadata_reserved(h.name):
            raise ConfigError(
                file, f"{join(path, 'initial_metadata')}[{i}].header.key",
                f"header '{h.name}' cannot be set in gRPC health check metadata by proxyd "
                "(te, content-type, user-agent and grpc-* are set by its gRPC client)",
            )  # fmt: skip
    return HealthCheck(
        kind="grpc",
        grpc_service_name=grpc.service_name,
        grpc_authority=grpc.authority,
        grpc_metadata=metadata,
        **common,
    )


def _ranges(ranges: Sequence[Any], what: str, path: str, file: str) -> tuple[StatusRange, ...]:
    """Envoy's checks on status ranges (HttpHealthCheckerImpl::HttpStatusChecker)."""
    out = []
    for i, r in enumerate(ranges):
        here = f"{path}[{i}]"
        if r.start < 100:
            raise ConfigError(
                file, here, f"Invalid http {what} status range: expecting start >= 100, but found start={r.start}"
            )  # fmt: skip
        if r.end > 600:
            raise ConfigError(
                file, here, f"Invalid http {what} status range: expecting end <= 600, but found end={r.end}"
            )  # fmt: skip
        if r.start >= r.end:
            raise ConfigError(
                file, here,
                f"Invalid http {what} status range: expecting start < end, but found start={r.start} and end={r.end}",
            )  # fmt: skip
        out.append(StatusRange(r.start, r.end))
    return tuple(out)


def _tcp(tcp: Any, common: dict[str, Any], path: str, file: str) -> HealthCheck:
    send = _payload(tcp.send, join(path, "send"), file) if tcp.HasField("send") else b""
    receive = tuple(
        _payload(p, f"{join(path, 'receive')}[{i}]", file) for i, p in enumerate(tcp.receive)
    )
    return HealthCheck(kind="tcp", tcp_send=send, tcp_receive=receive, **common)


def _payload(payload: Any, path: str, file: str) -> bytes:
    """A Payload's bytes: ``text`` is hex ("000000FF"), ``binary`` is raw bytes."""
    if payload.WhichOneof("payload") == "binary":
        return bytes(payload.binary)
    try:
        return binascii.unhexlify(payload.text)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(file, join(path, "text"), f"invalid hex string '{payload.text}'") from exc
