"""``config.accesslog.v3.AccessLog`` entries (an HCM's and a listener's ``access_log``)
→ the epoch's :class:`~proxyd.epoch.AccessLog`, with their filters and formats.

Loggers: ``envoy.access_loggers.file`` (FileAccessLog), ``envoy.access_loggers.stdout``
and ``envoy.access_loggers.stderr`` (StdoutAccessLog / StderrAccessLog). The format is a
``SubstitutionFormatString``: ``text_format_source`` (inline_string, inline_bytes or a
filename read here, once per load), ``json_format``, ``omit_empty_values`` and
``content_type`` (which only shapes local-reply bodies in Envoy, so a log ignores it
there too). ``formatters`` extensions are refused by name by the coverage tree
(proxyd implements none). The deprecated fields (``text_format``, the file logger's
``format`` / ``json_format`` / ``typed_json_format``) arrive here already translated
(proxyd.config.deprecated). Each format is compiled with the workers' compiler, so a bad
operator is refused here with its field path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format

from proxyd.config.matchers import header_match
from proxyd.config.proto import join, unpack
from proxyd.config.supported import (
    FILE_LOG_TYPE,
    HTTP_GRPC_LOG_TYPE,
    OTEL_LOG_TYPE,
    STDERR_LOG_TYPE,
    STDOUT_LOG_TYPE,
    TCP_GRPC_LOG_TYPE,
)
from proxyd.config.tracing import custom_tag
from proxyd.config.values import data_source_text, duration_or, enum_name, wrapped_or
from proxyd.epoch import AccessLog, AccessLogFilter, GrpcAccessLog, OtelLog
from proxyd.errors import ConfigError
from proxyd.protocol.access_log import make_format
from proxyd.protocol.access_log_operators import LONG_FLAGS

# Payload type -> (the sink, the logger's name).
LOGGERS = {
    FILE_LOG_TYPE: ("file", "envoy.access_loggers.file"),
    STDOUT_LOG_TYPE: ("stdout", "envoy.access_loggers.stdout"),
    STDERR_LOG_TYPE: ("stderr", "envoy.access_loggers.stderr"),
    OTEL_LOG_TYPE: ("otel", "envoy.access_loggers.open_telemetry"),
    HTTP_GRPC_LOG_TYPE: ("grpc", "envoy.access_loggers.http_grpc"),
    TCP_GRPC_LOG_TYPE: ("grpc", "envoy.access_loggers.tcp_grpc"),
}
_BY_NAME = {name: type_name for type_name, (_, name) in LOGGERS.items()}

_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


def compile_access_logs(entries: Sequence[Any], path: str, file: str) -> tuple[AccessLog, ...]:
    return tuple(compile_access_log(a, f"{path}[{i}]", file) for i, a in enumerate(entries))


def compile_access_log(entry: Any, path: str, file: str) -> AccessLog:
    log, type_name = _typed_config(entry, path, file)
    sink, _name = LOGGERS[type_name]
    here = join(path, "typed_config")
    if sink == "otel":
        flt = (
            compile_filter(entry.filter, join(path, "filter"), file)
            if entry.HasField("filter")
            else None
        )
        return AccessLog(path="", sink="otel", filter=flt, otel=_otel(log, here, file))
    if sink == "grpc":
        flt = (
            compile_filter(entry.filter, join(path, "filter"), file)
            if entry.HasField("filter")
            else None
        )
        grpc = _grpc_log(log, here, file, tcp=type_name == TCP_GRPC_LOG_TYPE)
        return AccessLog(path="", sink="grpc", filter=flt, grpc=grpc)
    text, json_text, omit = "", "", False
    if log.HasField("log_format"):
        text, json_text, omit = _log_format(log.log_format, join(here, "log_format"), file)
    log_path = log.path if sink == "file" else ""
    if sink == "file" and not log_path:
        raise ConfigError(file, join(here, "path"), "value length must be at least 1 characters")
    flt = None
    if entry.HasField("filter"):
        flt = compile_filter(entry.filter, join(path, "filter"), file)
    return AccessLog(
        path=log_path,
        format=text,
        sink=sink,
        json_format=json_text,
        omit_empty_values=omit,
        filter=flt,
    )


def _typed_config(entry: Any, path: str, file: str) -> tuple[Any, str]:
    """The logger's payload and its type (check_bootstrap allowed only LOGGERS' types)."""
    if not entry.HasField("typed_config"):
        type_name = _BY_NAME.get(entry.name)
        if type_name is None:
            raise ConfigError(file, path, f"access logger '{entry.name}' not supported by proxyd")
        raise ConfigError(
            file,
            join(path, "typed_config"),
            f"access logger '{entry.name}' needs a typed_config of type {type_name}",
        )
    payload = unpack(entry.typed_config)
    type_name = payload.DESCRIPTOR.full_name if payload is not None else ""
    if type_name not in LOGGERS:
        raise ConfigError(file, path, f"access logger '{entry.name}' not supported by proxyd")
    return payload, type_name


def _log_format(fmt: Any, path: str, file: str) -> tuple[str, str, bool]:
    """(text format, json_format as JSON text, omit_empty_values), checked by compiling."""
    which = fmt.WhichOneof("format")
    text, json_text = "", ""
    where = path
    if which == "json_format":
        json_text = json.dumps(json_format.MessageToDict(fmt.json_format), sort_keys=True)
        where = join(path, "json_format")
    elif which == "text_format_source":
        source = fmt.text_format_source
        where = join(path, "text_format_source")
        text = data_source_text(source, where, file)
        where = join(where, source.WhichOneof("specifier") or "")
        if not text:
            raise ConfigError(file, where, "a text format must not be empty")
    elif which is None:
        raise ConfigError(file, path, "one of text_format_source or json_format is required")
    try:
        make_format(text, json_text, fmt.omit_empty_values)
    except ValueError as exc:
        raise ConfigError(file, where, str(exc)) from exc
    return text, json_text, fmt.omit_empty_values


def compile_text_format(text: str, path: str, file: str) -> None:
    """Check an access-log text format ("" is an empty value, not the default format)."""
    if not text:
        return
    try:
        make_format(text, "", False)
    except ValueError as exc:
        raise ConfigError(file, path, str(exc)) from exc


# -- filters ----------------------------------------------------------------------------

_KINDS = {
    "status_code_filter": "status_code",
    "duration_filter": "duration",
    "not_health_check_filter": "not_health_check",
    "traceable_filter": "traceable",
    "runtime_filter": "runtime",
    "and_filter": "and",
    "or_filter": "or",
    "header_filter": "header",
    "response_flag_filter": "response_flag",
    "grpc_status_filter": "grpc_status",
    "log_type_filter": "log_type",
}


def compile_filter(f: Any, path: str, file: str) -> AccessLogFilter:
    which = f.WhichOneof("filter_specifier")
    if which is None:
        raise ConfigError(file, path, "one filter is required")
    kind = _KINDS.get(which)
    here = join(path, which)
    if kind is None:  # the coverage tree refused it already; kept for xDS resources
        raise ConfigError(file, here, "field not supported by proxyd")
    msg = getattr(f, which)
    if kind in ("status_code", "duration"):
        comparison = msg.comparison
        op = (
            comparison.DESCRIPTOR.fields_by_name["op"]
            .enum_type.values_by_number[comparison.op]
            .name
        )
        return AccessLogFilter(
            kind=kind,
            op=op,
            value=comparison.value.default_value,
            runtime_key=comparison.value.runtime_key,
        )
    if kind == "runtime":
        percent = msg.percent_sampled
        if msg.HasField("percent_sampled"):
            numerator = percent.numerator
            den_name = (
                percent.DESCRIPTOR.fields_by_name["denominator"]
                .enum_type.values_by_number[percent.denominator]
                .name
            )
        else:  # Envoy: no percent_sampled means 0%
            numerator, den_name = 0, "HUNDRED"
        return AccessLogFilter(
            kind=kind,
            value=numerator,
            denominator=_DENOMINATORS[den_name],
            runtime_key=msg.runtime_key,
            independent=msg.use_independent_randomness,
        )
    if kind in ("and", "or"):
        children = tuple(
            compile_filter(c, f"{join(here, 'filters')}[{i}]", file)
            for i, c in enumerate(msg.filters)
        )
        return AccessLogFilter(kind=kind, children=children)
    if kind == "header":
        return AccessLogFilter(
            kind=kind, header=header_match(msg.header, join(here, "header"), file)
        )
    if kind == "response_flag":
        for i, flag in enumerate(msg.flags):
            if flag not in LONG_FLAGS:
                raise ConfigError(
                    file, f"{join(here, 'flags')}[{i}]", f"unknown response flag {flag!r}"
                )
        return AccessLogFilter(kind=kind, names=tuple(msg.flags))
    if kind == "grpc_status":
        return AccessLogFilter(kind=kind, codes=tuple(msg.statuses), exclude=msg.exclude)
    if kind == "log_type":
        enum = msg.DESCRIPTOR.fields_by_name["types"].enum_type
        names = tuple(enum.values_by_number[t].name for t in msg.types)
        return AccessLogFilter(kind=kind, names=names, exclude=msg.exclude)
    return AccessLogFilter(kind=kind)  # not_health_check, traceable


def _common_config(common: Any, here: str, file: str, what: str) -> None:
    """Check a CommonGrpcAccessLogConfig as Envoy does."""
    if not common.log_name:
        raise ConfigError(
            file, join(here, "log_name"), "value length must be at least 1 characters"
        )
    if not common.grpc_service.HasField("envoy_grpc"):
        raise ConfigError(
            file,
            join(here, "grpc_service"),
            f"{what} needs grpc_service.envoy_grpc (its collector cluster)",
        )
    if enum_name(common, "transport_api_version") != "V3":
        raise ConfigError(
            file, join(here, "transport_api_version"), "only transport_api_version V3 is valid"
        )


def _grpc_log(log: Any, path: str, file: str, tcp: bool) -> GrpcAccessLog:
    """HttpGrpcAccessLogConfig / TcpGrpcAccessLogConfig (the allow-list refused the
    rest by name)."""
    common = log.common_config
    _common_config(common, join(path, "common_config"), file, "a gRPC access log")
    request: tuple[str, ...] = ()
    response: tuple[str, ...] = ()
    if not tcp:
        request = tuple(h.lower() for h in log.additional_request_headers_to_log)
        response = tuple(h.lower() for h in log.additional_response_headers_to_log)
    return GrpcAccessLog(
        log_name=common.log_name,
        cluster=common.grpc_service.envoy_grpc.cluster_name,
        tcp=tcp,
        timeout_s=duration_or(common.grpc_service, "timeout", 0.0),
        flush_interval_s=duration_or(common, "buffer_flush_interval", 1.0),
        buffer_size_bytes=wrapped_or(common, "buffer_size_bytes", 16384),
        request_headers=request,
        response_headers=response,
        custom_tags=tuple(
            custom_tag(c, f"{join(path, 'common_config.custom_tags')}[{i}]", file)
            for i, c in enumerate(common.custom_tags)
        ),
    )


def _otel(log: Any, path: str, file: str) -> OtelLog:
    """OpenTelemetryAccessLogConfig (the allow-list took string values only)."""
    common = log.common_config
    here = join(path, "common_config")
    _common_config(common, here, file, "an OpenTelemetry access log")
    body = ""
    if log.HasField("body"):
        body = log.body.string_value
        compile_text_format(body, join(path, "body.string_value"), file)
    attributes = []
    for i, kv in enumerate(log.attributes.values):
        fmt = kv.value.string_value
        compile_text_format(fmt, f"{join(path, 'attributes.values')}[{i}].value", file)
        attributes.append((kv.key, fmt))
    return OtelLog(
        log_name=common.log_name,
        cluster=common.grpc_service.envoy_grpc.cluster_name,
        timeout_s=duration_or(common.grpc_service, "timeout", 0.0),
        flush_interval_s=duration_or(common, "buffer_flush_interval", 1.0),
        buffer_size_bytes=wrapped_or(common, "buffer_size_bytes", 16384),
        body=body,
        attributes=tuple(attributes),
        resource_attributes=tuple(
            (kv.key, kv.value.string_value) for kv in log.resource_attributes.values
        ),
        builtin_labels=not log.disable_builtin_labels,
    )
