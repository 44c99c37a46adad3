"""xDS resources: decode, validate and compile one delivered resource.

A resource arrives as a ``google.protobuf.Any`` in a DiscoveryResponse. It is unpacked
into its Envoy message, translated as a bootstrap is (TypedStruct wrappers unwrapped,
deprecated fields moved to their replacements and logged: ``proxyd.config.translate``),
walked with the same allow-list as the bootstrap (so a field proxyd does not implement
is refused by name and path, as in a file) and compiled with the same compilers
(``proxyd.config``). The result is a :class:`Resource`: the plain
epoch value plus what ``/config_dump`` shows (version, last update, the message).

Every problem is a :class:`~proxyd.errors.ConfigError` whose "file" names the update
("CDS update version 7 from ads") and whose path names the resource
("resources[3] (cluster 'web').lb_policy"); the subscription turns it into a NACK. That
includes what a worker would refuse to compile (:mod:`proxyd.protocol.epoch_check`),
so such a resource is NACKed and never reaches an epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf.message import DecodeError, Message

from proxyd.config import supported
from proxyd.config.clusters import compile_cluster
from proxyd.config.listeners import compile_listener
from proxyd.config.routes import AnyCluster, compile_route_config
from proxyd.config.runtime import flatten_struct
from proxyd.config.secrets import compile_secret
from proxyd.config.translate import log_deprecations, translate
from proxyd.errors import ConfigError
from proxyd.protocol.epoch_check import (
    EpochRejected,
    check_cluster,
    check_listener,
    check_route_config,
)

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
RUNTIME = _PREFIX + "envoy.service.runtime.v3.Runtime"
SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

# Short names, as Envoy's stats and logs call the types.
SHORT = {
    LISTENER: "LDS", ROUTE: "RDS", CLUSTER: "CDS", ENDPOINT: "EDS", RUNTIME: "RTDS", SECRET: "SDS",
}  # fmt: skip
# The order an aggregated stream asks in, and Envoy's make-before-break order for
# applying: the runtime first (Envoy starts RTDS before CDS), clusters before the
# endpoints they need, listeners before their routes.
# SDS comes from files only (proxyd.config.secrets), never from an aggregated stream.
ORDER = (RUNTIME, CLUSTER, ENDPOINT, LISTENER, ROUTE)
TYPES = (SECRET, *ORDER)
# LDS and CDS are wildcard subscriptions: a response holds the whole set, and a
# resource missing from it is removed. RDS and EDS ask for names.
WILDCARD = frozenset({LISTENER, CLUSTER})

_MESSAGES: dict[str, type[Message]] = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    RUNTIME: rtds_pb2.Runtime,
    SECRET: secret_pb2.Secret,
}
_KIND = {LISTENER: "listener", ROUTE: "route configuration", CLUSTER: "cluster", ENDPOINT: "endpoints", RUNTIME: "runtime", SECRET: "secret"}  # fmt: skip


@dataclass(frozen=True, eq=False)
class Resource:
    """One accepted resource: its compiled value and what /config_dump shows."""

    type_url: str
    name: str
    version: str
    last_updated: float  # wall clock
    message: Message
    # Serialized bytes as delivered: an unchanged resource is not compiled again.
    raw: bytes
    # proxyd.epoch.Cluster / Listener / RouteConfig, a LoadAssignment (EDS), or a
    # tuple of RuntimeValues (RTDS: the layer's Struct as a static layer reads it).
    value: Any


@dataclass(frozen=True)
class Context:
    """What compiling a resource leans on: the clusters routes may name (static and
    dynamic), and a check for the config sources a resource names."""

    route_targets: Any
    check_source: Any  # (ConfigSource, path, file) -> None


def decode(type_url: str, any_msg: Any, path: str, file: str) -> Message:
    if any_msg.type_url != type_url:
        raise ConfigError(
            file,
            path,
            f"a {SHORT[type_url]} response may hold only {type_url}, not '{any_msg.type_url}'",
        )
    message = _MESSAGES[type_url]()
    try:
        message.ParseFromString(any_msg.value)
    except DecodeError as exc:
        raise ConfigError(file, path, f"cannot decode the resource: {exc}") from exc
    return message


def name_of(type_url: str, message: Any) -> str:
    """``message`` is a generated xds-protos class (no stubs): a Cluster, Listener, ..."""
    if type_url == ENDPOINT:
        return message.cluster_name
    return message.name


def label(type_url: str, name: str) -> str:
    return f"{_KIND[type_url]} '{name}'"


def compile_resource(
    type_url: str,
    message: Message,
    raw: bytes,
    version: str,
    path: str,
    file: str,
    ctx: Context,
) -> Resource:
    """Validate and compile one resource. Raises ConfigError."""
    name = name_of(type_url, message)
    if not name:
        field = "cluster_name" if type_url == ENDPOINT else "name"
        raise ConfigError(file, f"{path}.{field}", f"a {_KIND[type_url]} needs a name")
    # Translated in a copy: /config_dump shows the resource as delivered, as Envoy's does.
    working = type(message)()
    working.CopyFrom(message)
    translation = translate(working, path, file)
    log_deprecations(translation)
    with translation.file_paths():
        value = _compile(type_url, working, path, file, ctx)
    return Resource(type_url, name, version, time.time(), message, raw, value)


def _compile(type_url: str, message: Message, path: str, file: str, ctx: Context) -> Any:
    value: Any
    if type_url == CLUSTER:
        supported.check_message(message, supported.CLUSTER, path, file)
        value = compile_cluster(message, path, file)
        if value.eds_source is not None:
            ctx.check_source(value.eds_source, f"{path}.eds_cluster_config.eds_config", file)
    elif type_url == ENDPOINT:
        load_assignment = supported.CLUSTER["load_assignment"]
        assert isinstance(load_assignment, dict)  # a message spec, not a leaf
        supported.check_message(message, load_assignment, path, file)
        value = compile_endpoints(message, path, file)
    elif type_url == RUNTIME:
        return flatten_struct(message.layer, f"{path}.layer", file)  # type: ignore[attr-defined]
    elif type_url == SECRET:
        supported.check_message(message, supported.SECRET, path, file)
        return compile_secret(message, path, file)
    elif type_url == LISTENER:
        supported.check_message(message, supported.LISTENER, path, file)
        value = compile_listener(message, path, ctx.route_targets, file)
        if value.hcm is not None and value.hcm.rds_source is not None:
            where = f"{path}.filter_chains[0].filters[0].typed_config.rds.config_source"
            ctx.check_source(value.hcm.rds_source, where, file)
    else:
        supported.check_message(message, supported.ROUTE_CONFIG, path, file)
        value = compile_route_config(message, path, AnyCluster(), file)
    _check_compiles(type_url, value, path, file)
    return value


def _check_compiles(type_url: str, value: Any, path: str, file: str) -> None:
    """What a worker would refuse in this resource, as a ConfigError (a NACK).

    Endpoints are checked with their cluster, when the epoch is published."""
    try:
        if type_url == CLUSTER:
            check_cluster(value)
        elif type_url == LISTENER:
            check_listener(value)
        elif type_url == ROUTE:
            check_route_config(value)
    except EpochRejected as exc:
        raise ConfigError(file, path, f"a worker cannot compile it: {exc}") from exc


def compile_endpoints(cla: Message, path: str, file: str) -> Any:
    """A ClusterLoadAssignment → what the cluster's ``endpoints`` become."""
    from proxyd.config.endpoints import compile_load_assignment

    return compile_load_assignment(cla, "EDS", path, file)
