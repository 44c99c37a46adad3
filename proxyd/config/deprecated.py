"""Deprecated fields Envoy 1.40 still takes, and what each means today.

Envoy's descriptors mark these fields ``deprecated``; Envoy reads them, logs "Using
deprecated option ...", and uses them as their replacement. proxyd does the same before
its allow-list walk (``proxyd.config.supported``): :data:`FIXES` holds, per message type,
a function that moves the deprecated fields of one message to their replacement, so
the rest of the loader sees only the current form. Where proxyd implements the
replacement, the field works; where it does not, the replacement is refused by name,
and the error names the deprecated field as the file has it (the move is recorded in
the :class:`~proxyd.config.translate.Translation`).

:data:`REPLACEMENTS` says what replaces each deprecated field, for the warning and
for docs/configuration.md. A deprecated field with no fix here (one whose replacement
proxyd does not implement, or that proxyd implements as it is) is still warned about.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from proxyd.config.proto import join
from proxyd.errors import ConfigError

if TYPE_CHECKING:
    from proxyd.config.translate import Translation

_CLUSTER = "envoy.config.cluster.v3.Cluster"
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_FILE_LOG = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
_TCP_PROXY = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_UPSTREAM_HTTP = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_CARES = "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"
_CARES_NAME = "envoy.network.dns_resolver.cares"
_TYPE_PREFIX = "type.googleapis.com/"
_DNS_CLUSTER = "cluster_type envoy.cluster.dns (envoy.extensions.clusters.dns.v3.DnsCluster"

# Deprecated field (full proto name) -> what replaces it.
REPLACEMENTS: dict[str, str] = {
    "envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest.allowed_headers": "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz.allowed_headers",  # noqa: E501
    f"{_CLUSTER}.http_protocol_options": f"typed_extension_protocol_options {_UPSTREAM_HTTP} explicit_http_config.http_protocol_options",  # noqa: E501
    f"{_CLUSTER}.http2_protocol_options": f"typed_extension_protocol_options {_UPSTREAM_HTTP} explicit_http_config.http2_protocol_options",  # noqa: E501
    f"{_CLUSTER}.common_http_protocol_options": f"typed_extension_protocol_options {_UPSTREAM_HTTP} common_http_protocol_options",  # noqa: E501
    f"{_CLUSTER}.upstream_http_protocol_options": f"typed_extension_protocol_options {_UPSTREAM_HTTP} upstream_http_protocol_options",  # noqa: E501
    f"{_CLUSTER}.max_requests_per_connection": f"typed_extension_protocol_options {_UPSTREAM_HTTP} common_http_protocol_options.max_requests_per_connection",  # noqa: E501
    f"{_CLUSTER}.protocol_selection": f"typed_extension_protocol_options {_UPSTREAM_HTTP} use_downstream_protocol_config",  # noqa: E501
    f"{_CLUSTER}.dns_refresh_rate": f"{_DNS_CLUSTER}.dns_refresh_rate)",
    f"{_CLUSTER}.dns_failure_refresh_rate": f"{_DNS_CLUSTER}.dns_failure_refresh_rate)",
    f"{_CLUSTER}.respect_dns_ttl": f"{_DNS_CLUSTER}.respect_dns_ttl)",
    f"{_CLUSTER}.dns_jitter": f"{_DNS_CLUSTER}.dns_jitter)",
    f"{_CLUSTER}.use_tcp_for_dns_lookups": "typed_dns_resolver_config (c-ares dns_resolver_options.use_tcp_for_dns_lookups)",  # noqa: E501
    f"{_CLUSTER}.dns_resolvers": "typed_dns_resolver_config (c-ares resolvers)",
    f"{_CLUSTER}.dns_resolution_config": "typed_dns_resolver_config (c-ares)",
    f"{_CLUSTER}.track_timeout_budgets": "track_cluster_stats.timeout_budgets",
    "envoy.config.bootstrap.v3.Admin.access_log_path": "admin.access_log (envoy.access_loggers.file)",  # noqa: E501
    "envoy.config.bootstrap.v3.Bootstrap.watchdog": "watchdogs (main_thread_watchdog and worker_watchdog)",  # noqa: E501
    "envoy.config.bootstrap.v3.Bootstrap.use_tcp_for_dns_lookups": "typed_dns_resolver_config",
    "envoy.config.bootstrap.v3.Bootstrap.dns_resolution_config": "typed_dns_resolver_config",
    "envoy.config.bootstrap.v3.Bootstrap.tracing": "the HTTP connection manager's tracing.provider",  # noqa: E501
    "envoy.config.listener.v3.Listener.reuse_port": "enable_reuse_port",
    "envoy.config.listener.v3.Listener.deprecated_v1": "nothing (it is ignored)",
    "envoy.config.listener.v3.FilterChain.use_proxy_proto": "the envoy.filters.listener.proxy_protocol listener filter",  # noqa: E501
    f"{_HCM}.access_log_flush_interval": "access_log_options.access_log_flush_interval",
    f"{_HCM}.flush_access_log_on_new_request": "access_log_options.flush_access_log_on_new_request",  # noqa: E501
    f"{_TCP_PROXY}.access_log_flush_interval": "access_log_options.access_log_flush_interval",
    f"{_TCP_PROXY}.flush_access_log_on_connected": "access_log_options.flush_access_log_on_connected",  # noqa: E501
    "envoy.config.core.v3.ConfigSource.path": "path_config_source.path",
    f"{_FILE_LOG}.format": "log_format.text_format_source.inline_string",
    f"{_FILE_LOG}.json_format": "log_format.json_format",
    f"{_FILE_LOG}.typed_json_format": "log_format.json_format",
    "envoy.config.core.v3.SubstitutionFormatString.text_format": "text_format_source.inline_string",  # noqa: E501
    "envoy.config.route.v3.HeaderMatcher.exact_match": "string_match.exact",
    "envoy.config.route.v3.HeaderMatcher.prefix_match": "string_match.prefix",
    "envoy.config.route.v3.HeaderMatcher.suffix_match": "string_match.suffix",
    "envoy.config.route.v3.HeaderMatcher.contains_match": "string_match.contains",
    "envoy.config.route.v3.HeaderMatcher.safe_regex_match": "string_match.safe_regex",
    "envoy.type.matcher.v3.RegexMatcher.google_re2": "nothing (RE2 is the only engine)",
    "envoy.config.core.v3.HeaderValueOption.append": "append_action",
    "envoy.config.route.v3.RouteAction.max_grpc_timeout": "max_stream_duration.grpc_timeout_header_max",  # noqa: E501
    "envoy.config.route.v3.RouteAction.grpc_timeout_offset": "max_stream_duration.grpc_timeout_header_offset",  # noqa: E501
    "envoy.config.route.v3.VirtualHost.per_request_buffer_limit_bytes": "request_body_buffer_limit",  # noqa: E501
    "envoy.config.route.v3.VirtualHost.cors": "typed_per_filter_config envoy.filters.http.cors (envoy.extensions.filters.http.cors.v3.CorsPolicy)",  # noqa: E501
    "envoy.config.route.v3.RouteAction.cors": "the route's typed_per_filter_config envoy.filters.http.cors (envoy.extensions.filters.http.cors.v3.CorsPolicy)",  # noqa: E501
    "envoy.config.route.v3.Route.per_request_buffer_limit_bytes": "request_body_buffer_limit",
    "envoy.config.core.v3.HealthCheck.event_log_path": "event_logger",
}

_LEGACY_HTTP = (
    "http_protocol_options",
    "http2_protocol_options",
    "common_http_protocol_options",
    "upstream_http_protocol_options",
)
_LEGACY_DNS = ("dns_resolvers", "use_tcp_for_dns_lookups", "dns_resolution_config")


def _cluster(c: Any, path: str, t: Translation) -> None:
    _cluster_http(c, path, t)
    _cluster_dns(c, path, t)


def _cluster_http(c: Any, path: str, t: Translation) -> None:
    """Envoy: without typed HttpProtocolOptions, the legacy fields make one (HTTP/1.1
    unless http2_protocol_options is set); with them, the legacy fields are unused."""
    legacy = [name for name in _LEGACY_HTTP if c.HasField(name)]
    if not legacy or c.protocol_selection != 0:
        return  # USE_DOWNSTREAM_PROTOCOL: refused by name (protocol_selection)
    if _UPSTREAM_HTTP in c.typed_extension_protocol_options:
        for name in legacy:
            t.ignored(join(path, name), f"typed_extension_protocol_options has {_UPSTREAM_HTTP}")
            c.ClearField(name)
        return
    if c.HasField("http_protocol_options") and c.HasField("http2_protocol_options"):
        raise ConfigError(
            t.file,
            path,
            "cluster: Both HTTP1 and HTTP2 options may only be configured with non-default "
            "'protocol_selection' values",
        )
    options = http_protocol_options_pb2.HttpProtocolOptions()
    here = f"{join(path, 'typed_extension_protocol_options')}[{_UPSTREAM_HTTP!r}]"
    t.moved(here, join(path, legacy[0]))
    explicit = options.explicit_http_config
    if c.HasField("http2_protocol_options"):
        explicit.http2_protocol_options.CopyFrom(c.http2_protocol_options)
    else:
        explicit.http_protocol_options.CopyFrom(c.http_protocol_options)
    for name, new in (
        ("http_protocol_options", "explicit_http_config.http_protocol_options"),
        ("http2_protocol_options", "explicit_http_config.http2_protocol_options"),
        ("common_http_protocol_options", "common_http_protocol_options"),
        ("upstream_http_protocol_options", "upstream_http_protocol_options"),
    ):
        if c.HasField(name):
            if not new.startswith("explicit_http_config"):
                getattr(options, new).CopyFrom(getattr(c, name))
            t.moved(join(here, new), join(path, name))
            c.ClearField(name)
    c.typed_extension_protocol_options[_UPSTREAM_HTTP].Pack(options, _TYPE_PREFIX)


def _cluster_dns(c: Any, path: str, t: Translation) -> None:
    """Envoy: typed_dns_resolver_config wins; else a c-ares resolver made from
    dns_resolution_config, else from dns_resolvers and use_tcp_for_dns_lookups."""
    present = _set_fields(c)
    legacy = [name for name in _LEGACY_DNS if name in present]
    if not legacy:
        return
    if c.HasField("typed_dns_resolver_config"):
        for name in legacy:
            t.ignored(join(path, name), "typed_dns_resolver_config is set")
            c.ClearField(name)
        return
    cares = cares_dns_resolver_pb2.CaresDnsResolverConfig()
    here = join(path, "typed_dns_resolver_config")
    inner = join(here, "typed_config")
    t.moved(here, join(path, legacy[0]))
    if c.HasField("dns_resolution_config"):
        config = c.dns_resolution_config
        cares.resolvers.extend(config.resolvers)
        cares.dns_resolver_options.CopyFrom(config.dns_resolver_options)
        t.moved(inner, join(path, "dns_resolution_config"))
    else:
        cares.resolvers.extend(c.dns_resolvers)
        if c.use_tcp_for_dns_lookups:
            cares.dns_resolver_options.use_tcp_for_dns_lookups = True
        t.moved(join(inner, "resolvers"), join(path, "dns_resolvers"))
        t.moved(
            join(inner, "dns_resolver_options.use_tcp_for_dns_lookups"),
            join(path, "use_tcp_for_dns_lookups"),
        )
    for name in _LEGACY_DNS:
        c.ClearField(name)
    c.typed_dns_resolver_config.name = _CARES_NAME
    c.typed_dns_resolver_config.typed_config.Pack(cares, _TYPE_PREFIX)


def _set_fields(msg: Any) -> set[str]:
    return {field.name for field, _ in msg.ListFields()}


def _admin(admin: Any, path: str, t: Translation) -> None:
    """Envoy opens a file access log at access_log_path, besides those in access_log."""
    if not admin.access_log_path:
        return
    log = file_pb2.FileAccessLog(path=admin.access_log_path)
    entry = admin.access_log.add(name="envoy.access_loggers.file")
    entry.typed_config.Pack(log, _TYPE_PREFIX)
    here = f"{join(path, 'access_log')}[{len(admin.access_log) - 1}]"
    t.moved(here, join(path, "access_log_path"))
    admin.ClearField("access_log_path")


def _bootstrap(b: Any, path: str, t: Translation) -> None:
    """Envoy: watchdog is the main thread's and the workers' watchdog."""
    if not b.HasField("watchdog"):
        return
    if b.HasField("watchdogs"):
        raise ConfigError(t.file, join(path, "watchdog"), "Only one of watchdog or watchdogs should be set!")  # fmt: skip
    watchdogs = bootstrap_pb2.Watchdogs()
    watchdogs.main_thread_watchdog.CopyFrom(b.watchdog)
    watchdogs.worker_watchdog.CopyFrom(b.watchdog)
    b.watchdogs.CopyFrom(watchdogs)
    t.moved(join(path, "watchdogs"), join(path, "watchdog"))
    t.moved(join(path, "watchdogs.main_thread_watchdog"), join(path, "watchdog"))
    t.moved(join(path, "watchdogs.worker_watchdog"), join(path, "watchdog"))
    b.ClearField("watchdog")


def _listener(lst: Any, path: str, t: Translation) -> None:
    """Envoy: enable_reuse_port wins; else reuse_port: true turns it on."""
    if not lst.reuse_port:
        return
    if lst.HasField("enable_reuse_port"):
        t.ignored(join(path, "reuse_port"), "enable_reuse_port is set")
    else:
        lst.enable_reuse_port.value = True
        t.moved(join(path, "enable_reuse_port"), join(path, "reuse_port"))
    lst.ClearField("reuse_port")


def _hcm(hcm: Any, path: str, t: Translation) -> None:
    """Envoy: the two access-log fields are access_log_options' (not both ways at once)."""
    options = hcm.access_log_options
    had_options = hcm.HasField("access_log_options")
    if hcm.HasField("access_log_flush_interval"):
        if options.HasField("access_log_flush_interval"):
            raise ConfigError(t.file, join(path, "access_log_flush_interval"), _ONLY_ONE.format("access_log_flush_interval"))  # fmt: skip
        options.access_log_flush_interval.CopyFrom(hcm.access_log_flush_interval)
        _moved_to_options(hcm, "access_log_flush_interval", had_options, path, t)
    if hcm.flush_access_log_on_new_request:
        if options.flush_access_log_on_new_request:
            raise ConfigError(t.file, join(path, "flush_access_log_on_new_request"), _ONLY_ONE.format("flush_access_log_on_new_request"))  # fmt: skip
        options.flush_access_log_on_new_request = True
        _moved_to_options(hcm, "flush_access_log_on_new_request", had_options, path, t)


_ONLY_ONE = "Only one of {0} or access_log_options.{0} can be specified."


def _tcp_proxy(tcp: Any, path: str, t: Translation) -> None:
    """Envoy: the two deprecated access-log fields are access_log_options', and neither
    may be set beside access_log_options."""
    had_options = tcp.HasField("access_log_options")
    for name in ("flush_access_log_on_connected", "access_log_flush_interval"):
        is_set = tcp.HasField(name) if name == "access_log_flush_interval" else getattr(tcp, name)
        if not is_set:
            continue
        if had_options:
            raise ConfigError(t.file, join(path, name), f"Only one of {name} or access_log_options can be specified.")  # fmt: skip
        if name == "access_log_flush_interval":
            tcp.access_log_options.access_log_flush_interval.CopyFrom(tcp.access_log_flush_interval)
        else:
            tcp.access_log_options.flush_access_log_on_connected = True
        t.moved(join(path, f"access_log_options.{name}"), join(path, name))
        t.moved(join(path, "access_log_options"), join(path, name))
        tcp.ClearField(name)


def _moved_to_options(hcm: Any, name: str, had_options: bool, path: str, t: Translation) -> None:
    t.moved(join(path, f"access_log_options.{name}"), join(path, name))
    if not had_options:
        t.moved(join(path, "access_log_options"), join(path, name))
    hcm.ClearField(name)


def _config_source(cs: Any, path: str, t: Translation) -> None:
    if cs.WhichOneof("config_source_specifier") != "path":
        return
    file_path = cs.path
    cs.path_config_source.path = file_path  # the same oneof: clears ``path``
    t.moved(join(path, "path_config_source"), join(path, "path"))
    t.moved(join(path, "path_config_source.path"), join(path, "path"))


def _file_log(log: Any, path: str, t: Translation) -> None:
    """Envoy: format (empty: the default format), json_format and typed_json_format
    are the log_format they stand for."""
    which = log.WhichOneof("access_log_format")
    if which not in ("format", "json_format", "typed_json_format"):
        return
    old = join(path, which)
    if which == "format":
        text = log.format
        log.ClearField("format")
        if text:
            log.log_format.text_format_source.inline_string = text
            t.moved(join(path, "log_format.text_format_source.inline_string"), old)
            t.moved(join(path, "log_format"), old)
        return
    struct = getattr(log, which)
    log.log_format.json_format.CopyFrom(struct)  # the same oneof: clears ``which``
    t.moved(join(path, "log_format.json_format"), old)
    t.moved(join(path, "log_format"), old)


def _format_string(fmt: Any, path: str, t: Translation) -> None:
    if fmt.WhichOneof("format") != "text_format":
        return
    text = fmt.text_format
    fmt.text_format_source.inline_string = text  # the same oneof
    t.moved(join(path, "text_format_source.inline_string"), join(path, "text_format"))
    t.moved(join(path, "text_format_source"), join(path, "text_format"))


_HEADER_MATCH = {
    "exact_match": "exact",
    "prefix_match": "prefix",
    "suffix_match": "suffix",
    "contains_match": "contains",
    "safe_regex_match": "safe_regex",
}


def _header_matcher(m: Any, path: str, t: Translation) -> None:
    which = m.WhichOneof("header_match_specifier")
    new = _HEADER_MATCH.get(which or "")
    if new is None:
        return
    assert which is not None
    old = join(path, which)
    value = getattr(m, which)
    if new == "safe_regex":
        m.string_match.safe_regex.CopyFrom(value)  # the same oneof
    else:
        setattr(m.string_match, new, value)
    t.moved(join(path, f"string_match.{new}"), old)
    t.moved(join(path, "string_match"), old)


def _regex_matcher(r: Any, path: str, t: Translation) -> None:
    """google_re2 {} says "RE2", the only engine; its max_program_size stays (refused)."""
    if r.HasField("google_re2") and not r.google_re2.HasField("max_program_size"):
        r.ClearField("google_re2")


def _header_value_option(option: Any, path: str, t: Translation) -> None:
    if not option.HasField("append"):
        return
    if option.append_action != base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD:
        raise ConfigError(t.file, path, "Both append and append_action are set and it's not allowed")  # fmt: skip
    if not option.append.value:
        option.append_action = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
        t.moved(join(path, "append_action"), join(path, "append"))
    option.ClearField("append")


def _route_action(action: Any, path: str, t: Translation) -> None:
    """max_grpc_timeout and grpc_timeout_offset keep their own meaning in Envoy 1.40 (a
    gRPC request's router timeout: proxyd.worker.durations), used only on a route
    without max_stream_duration; with it, they are unused."""
    if not action.HasField("max_stream_duration"):
        return
    for old in ("max_grpc_timeout", "grpc_timeout_offset"):
        if action.HasField(old):
            t.ignored(join(path, old), "max_stream_duration is set")
            action.ClearField(old)


def _buffer_limit(holder: Any, path: str, t: Translation) -> None:
    """Envoy: request_body_buffer_limit wins over per_request_buffer_limit_bytes."""
    if not holder.HasField("per_request_buffer_limit_bytes"):
        return
    if holder.HasField("request_body_buffer_limit"):
        t.ignored(join(path, "per_request_buffer_limit_bytes"), "request_body_buffer_limit is set")
    else:
        holder.request_body_buffer_limit.value = holder.per_request_buffer_limit_bytes.value
        t.moved(join(path, "request_body_buffer_limit"), join(path, "per_request_buffer_limit_bytes"))  # fmt: skip
    holder.ClearField("per_request_buffer_limit_bytes")


# Message type (full name) -> the function that moves its deprecated fields.
FIXES: dict[str, Callable[[Any, str, Translation], None]] = {
    _CLUSTER: _cluster,
    "envoy.config.bootstrap.v3.Admin": _admin,
    "envoy.config.bootstrap.v3.Bootstrap": _bootstrap,
    "envoy.config.listener.v3.Listener": _listener,
    _HCM: _hcm,
    _TCP_PROXY: _tcp_proxy,
    "envoy.config.core.v3.ConfigSource": _config_source,
    _FILE_LOG: _file_log,
    "envoy.config.core.v3.SubstitutionFormatString": _format_string,
    "envoy.config.route.v3.HeaderMatcher": _header_matcher,
    "envoy.type.matcher.v3.RegexMatcher": _regex_matcher,
    "envoy.config.core.v3.HeaderValueOption": _header_value_option,
    "envoy.config.route.v3.RouteAction": _route_action,
    "envoy.config.route.v3.VirtualHost": _buffer_limit,
    "envoy.config.route.v3.Route": _buffer_limit,
}
