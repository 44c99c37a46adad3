"""static_resources.listeners → epoch Listeners (filter chains, each with one HTTP
connection manager), with the checks Envoy makes in code and proxyd's narrower choices.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Container, Sequence
from typing import Any

from proxyd.config.access_logs import compile_access_logs
from proxyd.config.dynamic import compile_config_source
from proxyd.config.hcm_transforms import compile_http1_options, compile_transforms
from proxyd.config.http_filters import compile_http_filters
from proxyd.config.network_rbac import compile_network_rbac
from proxyd.config.proto import join
from proxyd.config.routes import compile_route_config, compile_upgrades, header_adds
from proxyd.config.socket_options import socket_options
from proxyd.config.supported import HCM_TYPE, TCP_PROXY_TYPE, unpack
from proxyd.config.tls import check_listener_filters, compile_transport_socket
from proxyd.config.tracing import compile_tracing
from proxyd.config.values import (
    Address,
    compile_address,
    duration_or,
    enum_name,
    require_ip,
    wrapped_or,
)
from proxyd.epoch import (
    ANY_CHAIN,
    ChainMatch,
    DownstreamTls,
    FilterChain,
    Http2Options,
    HttpConnectionManager,
    Listener,
    RouteConfig,
    TcpCluster,
    TcpProxy,
    TcpTunnel,
)
from proxyd.errors import ConfigError
from proxyd.protocol.header_values import compile_value
from proxyd.protocol.xfcc import DETAILS as XFCC_DETAILS

HCM_NAME = "envoy.filters.network.http_connection_manager"
TCP_PROXY_NAME = "envoy.filters.network.tcp_proxy"
FILE_LOG_NAME = "envoy.access_loggers.file"
CODEC_TYPES = ("AUTO", "HTTP1", "HTTP2")

# Envoy's defaults (listener.proto, http_connection_manager.proto, protocol.proto).
DEFAULT_BUFFER_LIMIT = 1024 * 1024
DEFAULT_STREAM_IDLE_TIMEOUT_S = 300.0
DEFAULT_IDLE_TIMEOUT_S = 3600.0
DEFAULT_DRAIN_TIMEOUT_S = 5.0  # HttpConnectionManager.drain_timeout
DEFAULT_MAX_REQUEST_HEADERS_KB = 60
DEFAULT_SERVER_NAME = "envoy"
DEFAULT_MAX_HEADERS_COUNT = 100
DEFAULT_LISTENER_FILTERS_TIMEOUT_S = 15.0


def compile_listeners(
    listeners: Sequence[Any], path: str, clusters: Container[str], file: str
) -> tuple[Listener, ...]:
    out: list[Listener] = []
    names: dict[str, int] = {}
    addresses: dict[tuple[str, int, bool], str] = {}
    for i, lst in enumerate(listeners):
        here = f"{path}[{i}]"
        listener = compile_listener(lst, here, clusters, file)
        if listener.name in names:
            raise ConfigError(
                file, join(here, "name"), f"duplicate listener name '{listener.name}'"
            )
        names[listener.name] = i
        key = (listener.address, listener.port, listener.pipe)
        if (listener.port != 0 or listener.pipe) and key in addresses:
            raise ConfigError(
                file,
                join(here, "address"),
                f"duplicate address '{listener.address_text}' (listener '{addresses[key]}' has it)",
            )
        addresses[key] = listener.name
        out.append(listener)
    return tuple(out)


def compile_listener(lst: Any, path: str, clusters: Container[str], file: str) -> Listener:
    if not lst.HasField("address"):
        raise ConfigError(file, join(path, "address"), "an address is required")
    where = compile_address(lst.address, join(path, "address"), file)
    if not where.pipe:
        require_ip(where.address, join(path, "address.socket_address"), file)
    if not wrapped_or(lst, "enable_reuse_port", True):
        raise ConfigError(
            file,
            join(path, "enable_reuse_port"),
            "enable_reuse_port false not supported by proxyd (each worker accepts on its "
            "own SO_REUSEPORT socket)",
        )
    inspector = check_listener_filters(lst, path, file)
    tcp_chain = _tcp_proxy_listener(lst, path, clusters, file)
    if tcp_chain is not None:
        tcp, tls = tcp_chain
        return Listener(
            **_common_fields(lst, path, file, where),
            hcm=None,
            tcp_proxy=tcp,
            tls=tls,
            tls_inspector=inspector,
        )
    direction = enum_name(lst, "traffic_direction")
    chains = [
        compile_filter_chain(c, join(path, f"filter_chains[{i}]"), clusters, file, direction)
        for i, c in enumerate(lst.filter_chains)
    ]
    default = (
        compile_filter_chain(
            lst.default_filter_chain, join(path, "default_filter_chain"), clusters, file, direction
        )
        if lst.HasField("default_filter_chain")
        else None
    )
    if default is not None and default.match != ANY_CHAIN:
        raise ConfigError(
            file,
            join(path, "default_filter_chain.filter_chain_match"),
            "the default filter chain has no filter_chain_match",
        )
    if not chains and default is None:
        raise ConfigError(file, join(path, "filter_chains"), "a filter chain is required")
    seen: dict[ChainMatch, int] = {}
    for i, c in enumerate(chains):
        key = dataclasses.replace(
            c.match,
            server_names=tuple(sorted(set(c.match.server_names))),
            application_protocols=tuple(sorted(set(c.match.application_protocols))),
        )
        if key in seen:
            raise ConfigError(
                file,
                join(path, f"filter_chains[{i}].filter_chain_match"),
                f"filter_chains[{seen[key]}] has the same matching rules "
                "(Envoy: multiple filter chains with the same matching rules are defined)",
            )
        seen[key] = i
    first = chains[0] if chains else default
    assert first is not None
    selecting = any(c.match != ANY_CHAIN for c in chains)
    every = (*chains, *([default] if default else []))
    rds = any(c.hcm is not None and c.hcm.rds_source is not None for c in every)
    # The configured TLS inspector looks at every connection, as in Envoy (its stats),
    # through the same chain choice (one chain: always that one); not with rds, whose
    # updates reach the listener's first connection manager only.
    inspecting = selecting or (inspector and not rds)
    # Envoy adds a TLS inspector itself when a chain matches on what only the
    # ClientHello says.
    hello = any(c.match.needs_client_hello for c in chains)
    if selecting and rds:
        raise ConfigError(
            file,
            join(path, "filter_chains"),
            "rds in a listener with several filter chains is not supported by proxyd "
            "(use route_config)",
        )
    # The listener's own connection manager (the first chain's that has one): None when
    # every chain is a TCP proxy, the first of which the listener then names.
    http = next((c for c in every if c.hcm is not None), None)
    tcp_lead = next(c for c in every if c.tcp_proxy is not None) if http is None else None
    if tcp_lead is not None:  # chosen per connection, even as the one chain
        inspecting = True
    for i, c in enumerate(chains if chains else [first]):
        if where.pipe and c.hcm is not None and c.hcm.use_remote_address:
            chain_path = f"filter_chains[{i}]" if chains else "default_filter_chain"
            raise ConfigError(
                file,
                join(path, f"{chain_path}.filters[0].typed_config.use_remote_address"),
                "use_remote_address on a pipe listener not supported by proxyd (a Unix "
                "socket peer has no IP address to trust)",
            )
    lead = http or tcp_lead or first
    return Listener(
        **_common_fields(lst, path, file, where),
        hcm=http.hcm if http is not None else None,
        tcp_proxy=tcp_lead.tcp_proxy if tcp_lead is not None else None,
        tls=lead.tls,
        network_rbac=lead.network_rbac,
        chains=tuple(chains) if inspecting else (),
        default_chain=default if inspecting else None,
        listener_filters_timeout_s=duration_or(
            lst, "listener_filters_timeout", DEFAULT_LISTENER_FILTERS_TIMEOUT_S
        ),
        continue_on_listener_filters_timeout=lst.continue_on_listener_filters_timeout,
        tls_inspector=inspector or hello,
    )


def _common_fields(lst: Any, path: str, file: str, where: Address) -> dict[str, Any]:
    """The Listener fields an HTTP and a TCP proxy listener compile alike."""
    address, port = where.address, where.port
    return {
        "name": lst.name or (address if where.pipe else f"{address}_{port}"),
        "address": address,
        "port": port,
        "per_connection_buffer_limit_bytes": wrapped_or(
            lst, "per_connection_buffer_limit_bytes", DEFAULT_BUFFER_LIMIT
        ),
        "access_logs": compile_access_logs(lst.access_log, join(path, "access_log"), file),
        "ignore_global_conn_limit": bool(lst.ignore_global_conn_limit),
        "pipe": where.pipe,
        "pipe_mode": where.mode,
        "freebind": wrapped_or(lst, "freebind", False),
        "tcp_backlog_size": wrapped_or(lst, "tcp_backlog_size", 0),
        "socket_options": socket_options(lst.socket_options, join(path, "socket_options"), file),
    }


def _is_tcp_proxy(chain: Any) -> bool:
    """The chain ends in the TCP proxy (network RBAC filters may come before it)."""
    filters = chain.filters
    return (
        len(filters) >= 1
        and filters[-1].HasField("typed_config")
        and filters[-1].typed_config.type_url.endswith("/" + TCP_PROXY_TYPE)
    )


def _tcp_proxy_listener(
    lst: Any, path: str, clusters: Container[str], file: str
) -> tuple[TcpProxy, DownstreamTls | None] | None:
    """The listener's TCP proxy and its TLS termination, when its one filter chain is a
    TCP proxy without match criteria (a TCP proxy among several chains, or with
    criteria, is a chain like the HTTP ones: compile_filter_chain)."""
    chains = list(lst.filter_chains)
    if lst.HasField("default_filter_chain"):
        chains.append(lst.default_filter_chain)
    tcp = [i for i, c in enumerate(chains) if _is_tcp_proxy(c)]
    if not tcp:
        return None
    if len(chains) != 1 or chains[0].HasField("filter_chain_match"):
        return None  # chosen among several, as the HTTP chains are (compile_filter_chain)
    here = join(path, "filter_chains[0]" if lst.filter_chains else "default_filter_chain")
    chain = chains[0]
    proxy = _chain_tcp_proxy(chain, here, clusters, file)
    # TLS termination in front of it (the chain path: compile_transport_socket adds
    # "transport_socket").
    return proxy, compile_transport_socket(chain, here, file)


def _chain_tcp_proxy(chain: Any, here: str, clusters: Container[str], file: str) -> TcpProxy:
    """The TcpProxy a chain ends in, with the network RBAC filters before it."""
    last = len(chain.filters) - 1
    filter_path = join(here, f"filters[{last}]")
    msg = typed_config(
        chain.filters[last], TCP_PROXY_TYPE, TCP_PROXY_NAME, "network filter", filter_path, file
    )
    proxy = compile_tcp_proxy(msg, join(filter_path, "typed_config"), file)
    rbac = compile_network_rbac(chain.filters, join(here, "filters"), file)
    if rbac:
        proxy = dataclasses.replace(proxy, network_rbac=rbac)
    return proxy


def compile_filter_chain(
    chain: Any, path: str, clusters: Container[str], file: str, direction: str = "UNSPECIFIED"
) -> FilterChain:
    """One filter chain, ending in a connection manager or a TCP proxy (``direction``:
    the listener's traffic_direction, which tracing reads)."""
    filters = chain.filters
    if not filters:
        raise ConfigError(
            file,
            join(path, "filters"),
            f"a filter chain needs a network filter ({HCM_NAME} or {TCP_PROXY_NAME})",
        )
    match = (
        _chain_match(chain.filter_chain_match, join(path, "filter_chain_match"), file)
        if chain.HasField("filter_chain_match")
        else ANY_CHAIN
    )
    if _is_tcp_proxy(chain):
        return FilterChain(
            hcm=None,
            tcp_proxy=_chain_tcp_proxy(chain, path, clusters, file),
            tls=compile_transport_socket(chain, path, file),
            name=chain.name,
            match=match,
        )
    last = len(filters) - 1
    rbac = compile_network_rbac(filters, join(path, "filters"), file)
    filter_path = join(path, f"filters[{last}]")
    hcm_msg = typed_config(filters[last], HCM_TYPE, HCM_NAME, "network filter", filter_path, file)
    hcm = compile_hcm(hcm_msg, join(filter_path, "typed_config"), clusters, file)
    tracing = compile_tracing(hcm_msg, direction, join(filter_path, "typed_config"), clusters, file)
    if tracing is not None:
        hcm = dataclasses.replace(hcm, tracing=tracing)
    return FilterChain(
        hcm=hcm,
        tls=compile_transport_socket(chain, path, file),
        name=chain.name,
        match=match,
        network_rbac=rbac,
    )


SOURCE_TYPES = ("ANY", "SAME_IP_OR_LOOPBACK", "EXTERNAL")


def _chain_match(m: Any, path: str, file: str) -> ChainMatch:
    """A ``filter_chain_match``, with Envoy's checks."""
    for i, name in enumerate(m.server_names):
        if not name or "*" in name[1:] or (name.startswith("*") and not name.startswith("*.")):
            raise ConfigError(
                file,
                join(path, f"server_names[{i}]"),
                f"'{name}': a server name is exact or a '*.' wildcard prefix",
            )
    transport = m.transport_protocol
    if transport not in ("", "tls", "raw_buffer"):
        raise ConfigError(
            file,
            join(path, "transport_protocol"),
            f"transport_protocol '{transport}' never matches in proxyd "
            "(it knows 'tls' and 'raw_buffer')",
        )
    return ChainMatch(
        destination_port=m.destination_port.value if m.HasField("destination_port") else 0,
        prefix_ranges=_cidrs(m.prefix_ranges, join(path, "prefix_ranges"), file),
        server_names=tuple(n.lower() for n in m.server_names),
        transport_protocol=transport,
        application_protocols=tuple(m.application_protocols),
        direct_source_prefix_ranges=_cidrs(
            m.direct_source_prefix_ranges, join(path, "direct_source_prefix_ranges"), file
        ),
        source_type=enum_name(m, "source_type"),
        source_prefix_ranges=_cidrs(
            m.source_prefix_ranges, join(path, "source_prefix_ranges"), file
        ),
        source_ports=tuple(sorted(set(m.source_ports))),
    )


def _cidrs(ranges: Any, path: str, file: str) -> tuple[str, ...]:
    """CidrRanges as CIDR texts with the host bits cleared, as Envoy masks them."""
    out = []
    for i, r in enumerate(ranges):
        plen = r.prefix_len.value if r.HasField("prefix_len") else 0
        try:
            net = ipaddress.ip_network(f"{r.address_prefix}/{plen}", strict=False)
        except ValueError as exc:
            raise ConfigError(file, f"{path}[{i}]", f"not a CIDR range: {exc}") from None
        out.append(str(net))
    return tuple(sorted(set(out)))


def compile_tcp_proxy(msg: Any, path: str, file: str) -> TcpProxy:
    """TcpProxy (supported.TCP_PROXY has refused the fields proxyd lacks, and the proto
    rules have been checked: a stat_prefix, a cluster specifier, weights >= 1, at least
    one connect attempt). A cluster that does not exist is not an error: Envoy closes
    each connection then (``downstream_cx_no_route``, flag NC)."""
    which = msg.WhichOneof("cluster_specifier")
    weighted: tuple[TcpCluster, ...] = ()
    if which == "weighted_clusters":
        weighted = tuple(TcpCluster(c.name, c.weight) for c in msg.weighted_clusters.clusters)
    elif which != "cluster":
        raise ConfigError(file, path, "a cluster or weighted_clusters is required")
    return TcpProxy(
        stat_prefix=msg.stat_prefix,
        cluster=msg.cluster if which == "cluster" else "",
        weighted=weighted,
        idle_timeout_s=duration_or(msg, "idle_timeout", DEFAULT_IDLE_TIMEOUT_S),
        max_connect_attempts=wrapped_or(msg, "max_connect_attempts", 1),
        max_downstream_connection_duration_s=duration_or(
            msg, "max_downstream_connection_duration", 0.0
        ),
        access_logs=compile_access_logs(msg.access_log, join(path, "access_log"), file),
        log_on_connected=msg.access_log_options.flush_access_log_on_connected,
        hash_source_ip=any(p.HasField("source_ip") for p in msg.hash_policy),
        tunneling=(
            _tunneling(msg.tunneling_config, join(path, "tunneling_config"), file)
            if msg.HasField("tunneling_config")
            else None
        ),
    )


def _tunneling(msg: Any, path: str, file: str) -> TcpTunnel:
    """TcpProxy.tunneling_config, with Envoy's checks (the hostname is a format string;
    a post_path only with use_post)."""
    try:
        compile_value(msg.hostname)
    except ValueError as exc:
        raise ConfigError(file, join(path, "hostname"), str(exc)) from exc
    if msg.post_path and not msg.use_post:
        raise ConfigError(
            file, join(path, "post_path"), "Can't set a post path when POST method isn't used"
        )
    return TcpTunnel(
        hostname=msg.hostname,
        use_post=msg.use_post,
        post_path=msg.post_path or "/",
        headers=header_adds(msg, "headers_to_add", path, file),
    )


def _client_cert_details(details: Any) -> tuple[str, ...]:
    """set_current_client_cert_details: the fields set true (``subject`` is a BoolValue,
    the others plain bools)."""
    return tuple(
        d
        for d in XFCC_DETAILS
        if (wrapped_or(details, d, False) if d == "subject" else getattr(details, d))
    )


def compile_hcm(hcm: Any, path: str, clusters: Container[str], file: str) -> HttpConnectionManager:
    codec = enum_name(hcm, "codec_type")
    if codec not in CODEC_TYPES:
        raise ConfigError(
            file,
            join(path, "codec_type"),
            f"codec_type {codec} not supported by proxyd (supported: {', '.join(CODEC_TYPES)})",
        )
    which = hcm.WhichOneof("route_specifier")
    rds_name = ""
    rds_source = None
    if which == "route_config":
        route_config = compile_route_config(
            hcm.route_config, join(path, "route_config"), clusters, file
        )
    elif which == "rds":
        rds_name = hcm.rds.route_config_name
        if not rds_name:
            raise ConfigError(file, join(path, "rds.route_config_name"), "a name is required")
        if not hcm.rds.HasField("config_source"):
            raise ConfigError(file, join(path, "rds.config_source"), "a config source is required")
        rds_source = compile_config_source(
            hcm.rds.config_source, join(path, "rds.config_source"), file
        )
        route_config = RouteConfig(name=rds_name, virtual_hosts=())  # until RDS delivers
    else:
        raise ConfigError(
            file, path, f"a route_config or rds is required ({which} not supported by proxyd)"
        )
    if codec == "HTTP2" and any(
        r.stream_duration_set for vh in route_config.virtual_hosts for r in vh.routes
    ):
        # (An RDS route config is checked when it arrives: proxyd.protocol.epoch_check.)
        raise ConfigError(
            file,
            join(path, "route_config"),
            "a route's max_stream_duration with codec_type HTTP2 is not supported by proxyd",
        )
    http_filters = compile_http_filters(hcm.http_filters, join(path, "http_filters"), file)
    idle_timeout_s = DEFAULT_IDLE_TIMEOUT_S
    max_headers = DEFAULT_MAX_HEADERS_COUNT
    max_connection_duration_s = max_stream_duration_s = 0.0
    if hcm.HasField("common_http_protocol_options"):
        common = hcm.common_http_protocol_options
        idle_timeout_s = duration_or(common, "idle_timeout", DEFAULT_IDLE_TIMEOUT_S)
        max_headers = wrapped_or(common, "max_headers_count", DEFAULT_MAX_HEADERS_COUNT)
        max_connection_duration_s = duration_or(common, "max_connection_duration", 0.0)
        max_stream_duration_s = duration_or(common, "max_stream_duration", 0.0)
    return HttpConnectionManager(
        stat_prefix=hcm.stat_prefix,
        codec_type=codec,
        route_config=route_config,
        access_logs=compile_access_logs(hcm.access_log, join(path, "access_log"), file),
        use_remote_address=wrapped_or(hcm, "use_remote_address", False),
        xff_num_trusted_hops=hcm.xff_num_trusted_hops,
        forward_client_cert=enum_name(hcm, "forward_client_cert_details"),
        client_cert_details=_client_cert_details(hcm.set_current_client_cert_details),
        max_request_headers_kb=wrapped_or(
            hcm, "max_request_headers_kb", DEFAULT_MAX_REQUEST_HEADERS_KB
        ),
        request_timeout_s=duration_or(hcm, "request_timeout", 0.0),
        stream_idle_timeout_s=duration_or(
            hcm, "stream_idle_timeout", DEFAULT_STREAM_IDLE_TIMEOUT_S
        ),
        request_headers_timeout_s=duration_or(hcm, "request_headers_timeout", 0.0),
        idle_timeout_s=idle_timeout_s,
        server_name=hcm.server_name or DEFAULT_SERVER_NAME,
        generate_request_id=wrapped_or(hcm, "generate_request_id", True),
        rds_route_config_name=rds_name,
        rds_source=rds_source,
        http_filters=http_filters,
        access_log_flush_interval_s=duration_or(
            hcm.access_log_options, "access_log_flush_interval", 0.0
        ),
        flush_access_log_on_new_request=hcm.access_log_options.flush_access_log_on_new_request,
        transforms=compile_transforms(hcm, path, file),
        upgrades=compile_upgrades(hcm.upgrade_configs, join(path, "upgrade_configs"), file),
        max_headers_count=max_headers,
        http1=compile_http1_options(hcm, path, file),
        max_connection_duration_s=max_connection_duration_s,
        max_stream_duration_s=max_stream_duration_s,
        drain_timeout_s=duration_or(hcm, "drain_timeout", DEFAULT_DRAIN_TIMEOUT_S),
        http2=compile_http2_options(hcm, codec, path, file),
    )


# -- downstream HTTP/2 (proxyd.worker.h2_downstream) ---------------------------------------

# Envoy's bounds of Http2ProtocolOptions' window sizes.
_MIN_WINDOW = 65535
_MAX_WINDOW = 2147483647
_H2_DEFAULTS = Http2Options()


def compile_http2_options(hcm: Any, codec: str, path: str, file: str) -> Http2Options | None:
    """``hcm.http2_protocol_options`` (the fields proxyd lacks were refused by name by
    supported.HCM). A connection manager that limits stream or connection durations
    takes no HTTP/2 with codec_type HTTP2 (refused here); with AUTO its listener stays
    HTTP/1.1 (proxyd.worker.plan), as docs/configuration.md says."""
    common = (
        hcm.common_http_protocol_options if hcm.HasField("common_http_protocol_options") else None
    )
    if codec == "HTTP2" and common is not None:
        for name in ("max_connection_duration", "max_stream_duration"):
            if common.HasField(name):
                raise ConfigError(
                    file,
                    join(join(path, "common_http_protocol_options"), name),
                    f"{name} with codec_type HTTP2 is not supported by proxyd",
                )
    if not hcm.HasField("http2_protocol_options"):
        return None
    o = hcm.http2_protocol_options
    opath = join(path, "http2_protocol_options")
    values: dict[str, int] = {}
    for name, low, default in (
        ("max_concurrent_streams", 1, _H2_DEFAULTS.max_concurrent_streams),
        ("initial_stream_window_size", _MIN_WINDOW, _H2_DEFAULTS.initial_stream_window_size),
        (
            "initial_connection_window_size",
            _MIN_WINDOW,
            _H2_DEFAULTS.initial_connection_window_size,
        ),
    ):
        value = wrapped_or(o, name, default)
        if not low <= value <= _MAX_WINDOW:
            raise ConfigError(
                file, join(opath, name), f"must be between {low} and {_MAX_WINDOW}, got {value}"
            )
        values[name] = value
    # The flood limits (Envoy's proto validation has checked their lower bounds).
    flood = {
        name: wrapped_or(o, name, getattr(_H2_DEFAULTS, name))
        for name in (
            "max_outbound_frames",
            "max_outbound_control_frames",
            "max_consecutive_inbound_frames_with_empty_payload",
            "max_inbound_priority_frames_per_stream",
            "max_inbound_window_update_frames_per_data_frame_sent",
        )
    }
    return Http2Options(**values, allow_connect=o.allow_connect, **flood)


def typed_config(
    holder: Any, type_name: str, default_name: str, what: str, path: str, file: str
) -> Any:
    """The payload of ``holder.typed_config``, which must be ``type_name``.

    ``supported.check_bootstrap`` has already rejected other payload types; here a
    missing typed_config is reported by the extension's name, as Envoy does.
    """
    if not holder.HasField("typed_config"):
        if holder.name != default_name:
            raise ConfigError(file, path, f"{what} '{holder.name}' not supported by proxyd")
        raise ConfigError(
            file,
            join(path, "typed_config"),
            f"{what} '{holder.name}' needs a typed_config of type {type_name}",
        )
    payload = unpack(holder.typed_config)
    if payload is None or payload.DESCRIPTOR.full_name != type_name:
        raise ConfigError(file, path, f"{what} '{holder.name}' not supported by proxyd")
    return payload
