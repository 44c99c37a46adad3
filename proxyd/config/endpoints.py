"""A ClusterLoadAssignment → epoch Endpoints and its overprovisioning factor.

Used for a cluster's ``load_assignment`` and for EDS resources alike, so it takes a bare
``envoy.config.endpoint.v3.ClusterLoadAssignment``. Its unsupported fields and proto
constraints are checked by ``proxyd.config.supported`` (:data:`CLUSTER_LOAD_ASSIGNMENT`)
before this runs.

As in Envoy's ``PriorityStateManager``: each ``LocalityLbEndpoints`` gives its hosts a
priority (0 when unset; gaps between levels are allowed and are empty levels) and a
locality. A locality's ``load_balancing_weight`` counts only when the entry names a
locality; it is kept per (priority, locality), the last entry wins, and a locality
without one has weight 0, which locality weighted balancing never picks. The weight is
written on every endpoint of that (priority, locality), so workers read it from any.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from proxyd.config.proto import join
from proxyd.config.values import compile_address, is_ip_literal, require_ip, wrapped_or
from proxyd.epoch import Endpoint
from proxyd.errors import ConfigError

# endpoint.proto: ClusterLoadAssignment.Policy.overprovisioning_factor, in percent.
DEFAULT_OVERPROVISIONING_FACTOR = 140
# cluster.proto: CommonLbConfig.healthy_panic_threshold, in percent.
DEFAULT_PANIC_THRESHOLD = 50
# Cluster types whose endpoint addresses must be IP literals (Envoy resolves the names
# of the DNS types).
IP_ONLY_KINDS = ("STATIC", "EDS")


@dataclass(frozen=True, slots=True)
class LoadAssignment:
    endpoints: tuple[Endpoint, ...]
    overprovisioning_factor: int = DEFAULT_OVERPROVISIONING_FACTOR


def compile_load_assignment(cla: Any, kind: str, path: str, file: str) -> LoadAssignment:
    """``cla`` (a ClusterLoadAssignment, at ``path`` in ``file``) for a cluster of type
    ``kind`` ("STATIC", "STRICT_DNS", "EDS", ...)."""
    weights: dict[tuple[int, str], int] = {}
    found: list[tuple[int, str, Endpoint, tuple[tuple[str, str], ...]]] = []
    for i, group in enumerate(cla.endpoints):
        here = f"{join(path, 'endpoints')}[{i}]"
        locality = _locality(group)
        if group.HasField("locality") and group.HasField("load_balancing_weight"):
            weights[(group.priority, locality)] = group.load_balancing_weight.value
        group_labels = tls_labels(group)
        for j, lb in enumerate(group.lb_endpoints):
            e = _endpoint(lb, kind, f"{here}.lb_endpoints[{j}]", file)
            found.append((group.priority, locality, e, group_labels))
    endpoints = tuple(
        Endpoint(
            address=e.address,
            port=e.port,
            weight=e.weight,
            hostname=e.hostname,
            priority=priority,
            locality=locality,
            locality_weight=weights.get((priority, locality), 0),
            endpoint_hostname=e.endpoint_hostname,
            hc_port=e.hc_port,
            hc_hostname=e.hc_hostname,
            hash_key=e.hash_key,
            tls_labels=e.tls_labels,
            locality_tls_labels=group_labels,
        )
        for priority, locality, e, group_labels in found
    )
    factor = DEFAULT_OVERPROVISIONING_FACTOR
    if cla.HasField("policy"):
        factor = wrapped_or(cla.policy, "overprovisioning_factor", DEFAULT_OVERPROVISIONING_FACTOR)
    return LoadAssignment(endpoints, factor)


def _locality(group: Any) -> str:
    """The group's locality as "region/zone/sub_zone", or "" for none (an empty
    Locality is the same locality as none, as in Envoy)."""
    loc = group.locality
    if not (loc.region or loc.zone or loc.sub_zone):
        return ""
    return f"{loc.region}/{loc.zone}/{loc.sub_zone}"


def _endpoint(lb: Any, kind: str, path: str, file: str) -> Endpoint:
    if not lb.HasField("endpoint") or not lb.endpoint.HasField("address"):
        raise ConfigError(file, join(path, "endpoint.address"), "an address is required")
    where = compile_address(lb.endpoint.address, join(path, "endpoint.address"), file)
    address, port = where.address, where.port
    if where.pipe:
        if kind not in IP_ONLY_KINDS:
            raise ConfigError(
                file,
                join(path, "endpoint.address.pipe"),
                f"a pipe endpoint in a {kind} cluster not supported by proxyd (only "
                f"{' and '.join(IP_ONLY_KINDS)} clusters take pipe endpoints)",
            )
        return Endpoint(
            address=address,
            port=0,
            weight=wrapped_or(lb, "load_balancing_weight", 1),
            hash_key=_hash_key(lb),
            tls_labels=tls_labels(lb),
        )
    addr_path = join(path, "endpoint.address.socket_address")
    if port == 0:
        raise ConfigError(
            file, join(addr_path, "port_value"), "an upstream port is required (1-65535)"
        )
    hostname = ""
    if kind in IP_ONLY_KINDS:
        require_ip(address, addr_path, file)
    elif not is_ip_literal(address):
        hostname = address
    hc = lb.endpoint.health_check_config
    return Endpoint(
        address=address,
        port=port,
        weight=wrapped_or(lb, "load_balancing_weight", 1),
        hostname=hostname,
        endpoint_hostname=lb.endpoint.hostname,
        hc_port=hc.port_value,
        hc_hostname=hc.hostname,
        hash_key=_hash_key(lb),
        tls_labels=tls_labels(lb),
    )


TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"


def tls_labels(holder: Any) -> tuple[tuple[str, str], ...]:
    """``metadata.filter_metadata["envoy.transport_socket_match"]`` of an lb_endpoint
    or a LocalityLbEndpoints as (key, canonical JSON value) pairs, sorted."""
    if not holder.HasField("metadata"):
        return ()
    fields = holder.metadata.filter_metadata
    if TRANSPORT_SOCKET_MATCH not in fields:
        return ()
    return struct_labels(fields[TRANSPORT_SOCKET_MATCH])


def struct_labels(struct: Any) -> tuple[tuple[str, str], ...]:
    """A Struct's fields as (key, canonical JSON value): two values are equal when
    their texts are (Envoy compares protobuf Values)."""
    return tuple(
        sorted(
            (k, json.dumps(json_format.MessageToDict(v), sort_keys=True))
            for k, v in struct.fields.items()
        )
    )


def _hash_key(lb: Any) -> str:
    """``metadata.filter_metadata["envoy.lb"]["hash_key"]`` when it is a string, which
    RING_HASH and MAGLEV hash the host by (Envoy ignores a value of another kind)."""
    if not lb.HasField("metadata"):
        return ""
    fields = lb.metadata.filter_metadata
    if "envoy.lb" not in fields:
        return ""
    value = fields["envoy.lb"].fields.get("hash_key")
    if value is None or value.WhichOneof("kind") != "string_value":
        return ""
    return str(value.string_value)


def compile_common_lb_config(c: Any) -> tuple[int, bool]:
    """A Cluster's (healthy panic threshold in whole percent, locality weighted LB).

    Envoy turns the threshold's Percent into an integer by truncation
    (``PROTOBUF_PERCENT_TO_ROUNDED_INTEGER_OR_DEFAULT`` → ``100 * (value / 100.0)``), so
    33.9 is 33 and anything below 1 disables panic mode; this does the same.
    """
    if not c.HasField("common_lb_config"):
        return DEFAULT_PANIC_THRESHOLD, False
    common = c.common_lb_config
    threshold = DEFAULT_PANIC_THRESHOLD
    if common.HasField("healthy_panic_threshold"):
        threshold = int(100 * (common.healthy_panic_threshold.value / 100.0))
    return threshold, common.HasField("locality_weighted_lb_config")
