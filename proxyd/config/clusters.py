"""static_resources.clusters → epoch Clusters.

Runs after ``proxyd.config.supported`` has rejected unsupported fields and broken proto
constraints, so only the checks Envoy makes in code (and proxyd's narrower choice of
enum values) are here. Envoy's defaults apply to what is not set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from proxyd.config.dns import check_logical_dns, compile_dns
from proxyd.config.dynamic import compile_config_source
from proxyd.config.endpoints import (
    LoadAssignment,
    compile_common_lb_config,
    compile_load_assignment,
)
from proxyd.config.health_checks import compile_health_checks
from proxyd.config.lb_policy import compile_lb_policy
from proxyd.config.outlier import compile_outlier_detection
from proxyd.config.proto import join
from proxyd.config.supported import UPSTREAM_HTTP_TYPE, unpack
from proxyd.config.upstream_tls import (
    compile_transport_socket_matches,
    compile_upstream_transport_socket,
)
from proxyd.config.values import (
    duration_or,
    enum_name,
    wrapped_or,
)
from proxyd.epoch import CircuitBreakerThresholds, Cluster
from proxyd.errors import ConfigError

CLUSTER_TYPES = ("STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS")

# Envoy's defaults (cluster.proto and upstreams/http/v3/http_protocol_options.proto).
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_DNS_REFRESH_RATE_S = 5.0
DEFAULT_UPSTREAM_IDLE_TIMEOUT_S = 3600.0
# circuit_breaker.proto: CircuitBreakers.Thresholds (and RetryBudget). Beyond
# max_connections a request waits in the cluster's pending queue, up to
# max_pending_requests, as in Envoy.
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PENDING_REQUESTS = 1024
DEFAULT_MAX_REQUESTS = 1024
DEFAULT_MAX_RETRIES = 3
DEFAULT_RETRY_BUDGET_PERCENT = 20.0
DEFAULT_MIN_RETRY_CONCURRENCY = 3


def compile_clusters(clusters: Sequence[Any], path: str, file: str) -> tuple[Cluster, ...]:
    out: list[Cluster] = []
    seen: set[str] = set()
    for i, c in enumerate(clusters):
        here = f"{path}[{i}]"
        if c.name in seen:
            raise ConfigError(file, join(here, "name"), f"duplicate cluster '{c.name}'")
        seen.add(c.name)
        out.append(compile_cluster(c, here, file))
    return tuple(out)


def compile_cluster(c: Any, path: str, file: str) -> Cluster:
    kind = enum_name(c, "type")
    if kind not in CLUSTER_TYPES:
        raise ConfigError(
            file,
            join(path, "type"),
            f"cluster type {kind} not supported by proxyd (supported: {', '.join(CLUSTER_TYPES)})",
        )
    if kind == "LOGICAL_DNS":
        check_logical_dns(c, path, file)
    lb = compile_lb_policy(c, path, file)
    _check_host_update_fields(c, path, file)
    idle_timeout_s, max_requests, http2, key_format = _upstream_http_options(c, path, file)
    http2_downstream, alpn_auto = _downstream_protocol(c, path, file)
    h2_limits = upstream_http2(c, path, file)
    if c.HasField("max_requests_per_connection"):
        if max_requests is not None:
            raise ConfigError(
                file,
                join(path, "max_requests_per_connection"),
                "set max_requests_per_connection either on the cluster or in "
                "common_http_protocol_options, not both",
            )
        max_requests = c.max_requests_per_connection.value

    tls = compile_upstream_transport_socket(c, path, file)
    tls_matches = compile_transport_socket_matches(c, path, file)
    if tls is not None:
        tls = _alpn_for_auto(tls) if alpn_auto else _alpn_for_codec(tls, http2, path, file)
    if http2 and tls_matches:
        tls_matches = tuple(
            dataclasses.replace(
                m,
                tls=_alpn_for_auto(m.tls)
                if alpn_auto
                else _alpn_for_codec(m.tls, http2, path, file),
            )
            if m.tls is not None
            else m
            for m in tls_matches
        )
    if tls is not None or any(m.tls is not None for m in tls_matches):
        for i, hc in enumerate(c.health_checks):
            if hc.HasField("grpc_health_check"):
                raise ConfigError(
                    file,
                    join(path, f"health_checks[{i}].grpc_health_check"),
                    "a gRPC health check over TLS (the cluster's transport_socket) is not "
                    "supported by proxyd (HTTP/2 over TLS upstream is not implemented)",
                )
    breakers = _circuit_breakers(c, join(path, "circuit_breakers"), file)
    assignment = _load_assignment(c, kind, join(path, "load_assignment"), file)
    panic_threshold, locality_weighted = compile_common_lb_config(c)
    return Cluster(
        name=c.name,
        type=kind,
        connect_timeout_s=duration_or(c, "connect_timeout", DEFAULT_CONNECT_TIMEOUT_S),
        endpoints=assignment.endpoints,
        max_requests_per_connection=max_requests or 0,
        buffer_limit=wrapped_or(c, "per_connection_buffer_limit_bytes", 1024 * 1024),
        close_on_health_failure=c.close_connections_on_host_health_failure,
        idle_timeout_s=idle_timeout_s,
        dns_lookup_family=enum_name(c, "dns_lookup_family"),
        dns_refresh_rate_s=duration_or(c, "dns_refresh_rate", DEFAULT_DNS_REFRESH_RATE_S),
        health_checks=compile_health_checks(
            c.health_checks, join(path, "health_checks"), file, cluster_name=c.name, http2=http2
        ),
        eds_service_name=_eds_service_name(c, kind, path, file),
        eds_source=(
            compile_config_source(
                c.eds_cluster_config.eds_config, join(path, "eds_cluster_config.eds_config"), file
            )
            if kind == "EDS"
            else None
        ),
        http2=http2,
        http2_downstream=http2_downstream or alpn_auto,
        alpn_auto=alpn_auto,
        h2_max_streams=h2_limits[0],
        h2_stream_window=h2_limits[1],
        h2_connection_window=h2_limits[2],
        header_key_format=key_format,
        outlier_detection=compile_outlier_detection(c, join(path, "outlier_detection"), file),
        dns=compile_dns(c, path, file),
        overprovisioning_factor=assignment.overprovisioning_factor,
        healthy_panic_threshold=panic_threshold,
        locality_weighted_lb=locality_weighted,
        override_host_status=_override_host_status(c),
        **lb,
        **breakers,
        **_tcp_keepalive(c),
        track_timeout_budgets=c.track_cluster_stats.timeout_budgets,
        track_request_response_sizes=c.track_cluster_stats.request_response_sizes,
        tls=tls,
        tls_matches=tls_matches,
    )


def _override_host_status(c: Any) -> tuple[str, ...]:
    """common_lb_config.override_host_status: the statuses by name (Envoy's default
    when the set is absent: UNKNOWN, HEALTHY, DEGRADED)."""
    common = c.common_lb_config
    if not common.HasField("override_host_status"):
        return ("UNKNOWN", "HEALTHY", "DEGRADED")
    field = common.override_host_status.DESCRIPTOR.fields_by_name["statuses"]
    names = field.enum_type.values_by_number
    return tuple(sorted({names[s].name for s in common.override_host_status.statuses}))


def _check_host_update_fields(c: Any, path: str, file: str) -> None:
    """Fields whose Envoy meaning is how proxyd always works, in the values that mean
    it: host updates are not merged over a window (update_merge_window 0). (A host
    that service discovery drops goes at once, which is ignore_health_on_host_removal
    true; a plain bool, so false cannot be told from unset.)"""
    if c.HasField("common_lb_config") and c.common_lb_config.HasField("update_merge_window"):
        window = c.common_lb_config.update_merge_window
        if window.seconds or window.nanos:
            raise ConfigError(
                file,
                join(path, "common_lb_config.update_merge_window"),
                "update_merge_window other than 0s not supported by proxyd (health and "
                "endpoint updates are applied at once)",
            )


def _tcp_keepalive(c: Any) -> dict[str, Any]:
    """upstream_connection_options.tcp_keepalive (Envoy: SO_KEEPALIVE, and each of
    TCP_KEEPCNT/KEEPIDLE/KEEPINTVL that is set)."""
    if not c.HasField("upstream_connection_options"):
        return {}
    opts = c.upstream_connection_options
    if not opts.HasField("tcp_keepalive"):
        return {}
    ka = opts.tcp_keepalive
    return {
        "tcp_keepalive": True,
        "keepalive_probes": wrapped_or(ka, "keepalive_probes", 0),
        "keepalive_time_s": wrapped_or(ka, "keepalive_time", 0),
        "keepalive_interval_s": wrapped_or(ka, "keepalive_interval", 0),
    }


def _eds_service_name(c: Any, kind: str, path: str, file: str) -> str:
    """EDS: the ClusterLoadAssignment to ask for; its source is checked by
    ``proxyd.config.dynamic`` with the rest of the bootstrap's config sources."""
    if kind != "EDS":
        if c.HasField("eds_cluster_config"):
            raise ConfigError(
                file, join(path, "eds_cluster_config"), f"only for clusters of type EDS, not {kind}"
            )
        return ""
    if not c.eds_cluster_config.HasField("eds_config"):
        raise ConfigError(
            file, join(path, "eds_cluster_config.eds_config"), "an EDS cluster needs an eds_config"
        )
    if c.HasField("load_assignment"):
        raise ConfigError(
            file,
            join(path, "load_assignment"),
            "an EDS cluster takes its endpoints from EDS, not from load_assignment",
        )
    return c.eds_cluster_config.service_name or c.name


def _circuit_breakers(c: Any, path: str, file: str) -> dict[str, Any]:
    """Each routing priority's thresholds as ``Cluster`` keyword arguments: DEFAULT's
    in the flat ``cb_*`` fields, HIGH's in ``cb_high``.

    As in Envoy, the first thresholds entry for a priority wins, and a priority with no
    entry (or an entry's unset fields) keeps Envoy's defaults. A retry_budget, when
    present, replaces max_retries (its unset fields: 20 %, 3).
    """
    out: dict[str, Any] = {}
    if not c.HasField("circuit_breakers"):
        return out
    seen: set[str] = set()
    for i, t in enumerate(c.circuit_breakers.thresholds):
        priority = enum_name(t, "priority")
        if priority not in ("DEFAULT", "HIGH"):
            raise ConfigError(
                file,
                join(f"{join(path, 'thresholds')}[{i}]", "priority"),
                f"unknown routing priority {priority} (DEFAULT or HIGH)",
            )
        if priority in seen:
            continue
        seen.add(priority)
        if priority == "HIGH":
            out["cb_high"] = CircuitBreakerThresholds(**_thresholds(t))
        else:
            out.update({f"cb_{key}": value for key, value in _thresholds(t).items()})
    return out


def _thresholds(t: Any) -> dict[str, Any]:
    """A Thresholds entry as ``epoch.CircuitBreakerThresholds`` keyword arguments."""
    out: dict[str, Any] = {
        "max_connections": wrapped_or(t, "max_connections", DEFAULT_MAX_CONNECTIONS),
        "max_pending_requests": wrapped_or(t, "max_pending_requests", DEFAULT_MAX_PENDING_REQUESTS),
        "max_requests": wrapped_or(t, "max_requests", DEFAULT_MAX_REQUESTS),
        "max_retries": wrapped_or(t, "max_retries", DEFAULT_MAX_RETRIES),
    }
    if t.HasField("retry_budget"):
        budget = t.retry_budget
        out["retry_budget_percent"] = (
            budget.budget_percent.value
            if budget.HasField("budget_percent")
            else DEFAULT_RETRY_BUDGET_PERCENT
        )
        out["min_retry_concurrency"] = wrapped_or(
            budget, "min_retry_concurrency", DEFAULT_MIN_RETRY_CONCURRENCY
        )
    return out


def _upstream_http_options(c: Any, path: str, file: str) -> tuple[float, int | None, bool, str]:
    """(idle timeout, max requests per connection or None, HTTP/2, header key format)
    from the protocol options."""
    options = c.typed_extension_protocol_options
    idle_timeout_s = DEFAULT_UPSTREAM_IDLE_TIMEOUT_S
    max_requests: int | None = None
    http2 = False
    key_format = ""
    for key in sorted(options):
        here = f"{join(path, 'typed_extension_protocol_options')}[{key!r}]"
        if key != UPSTREAM_HTTP_TYPE:
            raise ConfigError(file, here, f"protocol options for '{key}' not supported by proxyd")
        opts = unpack(options[key])
        if opts is not None and opts.HasField("explicit_http_config"):
            explicit = opts.explicit_http_config
            http2 = explicit.HasField("http2_protocol_options")
            http1 = explicit.http_protocol_options
            if explicit.HasField("http_protocol_options") and http1.HasField("header_key_format"):
                # (the coverage tree lets only proper_case_words and preserve_case in)
                which = http1.header_key_format.WhichOneof("header_format")
                key_format = {"proper_case_words": "proper_case_words", "stateful_formatter": "preserve_case"}.get(which or "", "")  # fmt: skip
        if opts is None or not opts.HasField("common_http_protocol_options"):
            continue
        common = opts.common_http_protocol_options
        idle_timeout_s = duration_or(common, "idle_timeout", DEFAULT_UPSTREAM_IDLE_TIMEOUT_S)
        if common.HasField("max_requests_per_connection"):
            max_requests = common.max_requests_per_connection.value
    return idle_timeout_s, max_requests, http2, key_format


_MAX_H2 = 2**31 - 1


def upstream_http2(c: Any, path: str, file: str) -> tuple[int, int, int]:
    """The cluster's Http2ProtocolOptions fields proxyd honours (explicit, or under
    use_downstream_protocol_config / auto_config): (max_concurrent_streams, initial
    stream window, initial connection window), 0 where not set; bounds as Envoy's."""
    options = c.typed_extension_protocol_options
    if UPSTREAM_HTTP_TYPE not in options:
        return 0, 0, 0
    opts = unpack(options[UPSTREAM_HTTP_TYPE])
    if opts is None:
        return 0, 0, 0
    here = f"{join(path, 'typed_extension_protocol_options')}[{UPSTREAM_HTTP_TYPE!r}]"
    which = opts.WhichOneof("upstream_protocol_options")
    if which is None:
        return 0, 0, 0
    holder = getattr(opts, which)
    if not holder.HasField("http2_protocol_options"):
        return 0, 0, 0
    o = holder.http2_protocol_options
    opath = join(here, f"{which}.http2_protocol_options")
    out = []
    for name, low in (
        ("max_concurrent_streams", 1),
        ("initial_stream_window_size", 65535),
        ("initial_connection_window_size", 65535),
    ):
        value = wrapped_or(o, name, 0)
        if value and not low <= value <= _MAX_H2:
            raise ConfigError(
                file, join(opath, name), f"must be between {low} and {_MAX_H2}, got {value}"
            )
        out.append(value)
    return out[0], out[1], out[2]


def _downstream_protocol(c: Any, path: str, file: str) -> tuple[bool, bool]:
    """(``use_downstream_protocol_config``: HTTP/2 clients' requests go to the hosts over
    HTTP/2 (its http2_protocol_options is set; else all is HTTP/1.1); ``auto_config``:
    each host's protocol is what ALPN chose on its first connection). auto_config needs
    a TLS transport socket (refused without one, with Envoy's words)."""
    opts = unpack(c.typed_extension_protocol_options[UPSTREAM_HTTP_TYPE]) if UPSTREAM_HTTP_TYPE in c.typed_extension_protocol_options else None  # fmt: skip
    if opts is None:
        return False, False
    here = f"{join(path, 'typed_extension_protocol_options')}[{UPSTREAM_HTTP_TYPE!r}]"
    if opts.HasField("auto_config"):
        if compile_upstream_transport_socket(c, path, file) is None:
            raise ConfigError(
                file,
                join(here, "auto_config"),
                f"ALPN configured for cluster {c.name} which has a non-ALPN transport socket",
            )
        return False, True
    if opts.HasField("use_downstream_protocol_config"):
        return opts.use_downstream_protocol_config.HasField("http2_protocol_options"), False
    return False, False


def _alpn_for_auto(tls: Any) -> Any:
    """auto_config: the connections offer h2 and http/1.1 (Envoy's offer) unless the
    context names its own list."""
    return tls if tls.alpn else dataclasses.replace(tls, alpn=("h2", "http/1.1"))


def _alpn_for_codec(tls: Any, http2: bool, path: str, file: str) -> Any:
    """The ALPN a TLS cluster offers matches the codec it speaks: an HTTP/2 cluster
    offers ``h2`` when the context names no protocol (as Envoy does); a protocol the
    codec does not speak is refused (proxyd picks no codec by ALPN yet)."""
    speaks = "h2" if http2 else "http/1.1"
    if not tls.alpn:
        return dataclasses.replace(tls, alpn=("h2",)) if http2 else tls
    if speaks not in tls.alpn or len(set(tls.alpn)) > 1:
        raise ConfigError(
            file,
            join(path, "transport_socket.typed_config.common_tls_context.alpn_protocols"),
            f"ALPN {list(tls.alpn)} on a cluster that speaks {speaks} is not supported by "
            "proxyd (only the cluster's own protocol may be offered)",
        )
    return tls


def _load_assignment(c: Any, kind: str, path: str, file: str) -> LoadAssignment:
    if not c.HasField("load_assignment"):
        return LoadAssignment(())
    return compile_load_assignment(c.load_assignment, kind, path, file)
