"""The epoch: an immutable, plain-data snapshot of everything a worker needs.

The master compiles Envoy configuration into an :class:`Epoch` (see
``proxyd.config``) and sends it to every worker as one msgpack frame. Workers never
see protobuf; they compile what they need (matchers, balancers, log plans) from these
values once per epoch.

Every class here is a frozen dataclass of plain values (str, int, float, bool,
tuples of the same, or other classes from this module), so :func:`to_wire` and
:func:`from_wire` can turn any of them into msgpack-encodable lists and back without a
per-class encoder. Field order is the wire order: append new fields at the end with a
default, and bump ``proxyd.ipc.WIRE_VERSION`` when a change is not backward compatible.

The classes live in :mod:`proxyd.epoch_types`, a module per part (clusters, routes,
TLS, listeners, the epoch itself, the wire form); this module is where the rest of
proxyd imports them from.
"""

from __future__ import annotations

from proxyd.epoch_types.clusters import (
    CircuitBreakerThresholds,
    Cluster,
    ConfigSource,
    DnsSettings,
    Endpoint,
    HeaderToAdd,
    HealthCheck,
    OutlierDetection,
    StatusRange,
    TlsMatch,
    transport_for,
)
from proxyd.epoch_types.listeners import (
    ANY_CHAIN,
    AccessLog,
    AccessLogFilter,
    ChainMatch,
    FilterAction,
    FilterChain,
    FilterMatcher,
    GrpcAccessLog,
    HcmTransforms,
    Http1Options,
    Http2Options,
    HttpConnectionManager,
    HttpFilter,
    Listener,
    NetworkRbac,
    OtelLog,
    SocketOption,
    TcpCluster,
    TcpProxy,
    TcpTunnel,
    Tracing,
)
from proxyd.epoch_types.model import (
    Epoch,
    RuntimeValue,
)
from proxyd.epoch_types.routes import (
    CustomTag,
    DirectResponse,
    FilterOverride,
    HashPolicy,
    HeaderAdd,
    HeaderMatch,
    HeaderMutations,
    MirrorPolicy,
    QueryMatch,
    Redirect,
    RetryPolicy,
    Route,
    RouteConfig,
    RouteMatch,
    RouteMatchEntry,
    RouteMatcher,
    RouteOnMatch,
    RoutePredicate,
    RouteTracing,
    RuntimeFraction,
    StringMatch,
    VirtualHost,
    WeightedTarget,
)
from proxyd.epoch_types.tls import (
    DownstreamTls,
    SanMatch,
    SdsSecret,
    TlsCertificate,
    UpstreamTls,
)
from proxyd.epoch_types.wire import EpochWire, from_wire, to_wire

__all__ = [
    "transport_for",
    "AccessLog",
    "AccessLogFilter",
    "CircuitBreakerThresholds",
    "Cluster",
    "ConfigSource",
    "CustomTag",
    "DirectResponse",
    "DnsSettings",
    "DownstreamTls",
    "Endpoint",
    "Epoch",
    "EpochWire",
    "FilterAction",
    "ANY_CHAIN",
    "ChainMatch",
    "FilterChain",
    "FilterMatcher",
    "GrpcAccessLog",
    "FilterOverride",
    "HashPolicy",
    "HcmTransforms",
    "HeaderAdd",
    "HeaderMatch",
    "HeaderMutations",
    "HeaderToAdd",
    "HealthCheck",
    "Http1Options",
    "Http2Options",
    "HttpConnectionManager",
    "HttpFilter",
    "Listener",
    "MirrorPolicy",
    "NetworkRbac",
    "OtelLog",
    "OutlierDetection",
    "QueryMatch",
    "Redirect",
    "RetryPolicy",
    "Route",
    "RouteConfig",
    "RouteMatch",
    "RouteMatchEntry",
    "RouteMatcher",
    "RouteOnMatch",
    "RoutePredicate",
    "RouteTracing",
    "RuntimeFraction",
    "RuntimeValue",
    "SanMatch",
    "SdsSecret",
    "SocketOption",
    "StatusRange",
    "StringMatch",
    "TcpCluster",
    "TcpProxy",
    "TcpTunnel",
    "TlsCertificate",
    "TlsMatch",
    "Tracing",
    "UpstreamTls",
    "VirtualHost",
    "WeightedTarget",
    "from_wire",
    "to_wire",
]
