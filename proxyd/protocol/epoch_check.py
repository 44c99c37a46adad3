"""The worker's compile of an epoch, as a check the master runs before it publishes.

A worker turns an epoch's plain data into route tables, access-log formats, header lines
and balancers (:mod:`proxyd.worker.plan`). Every part of that compile that can refuse an
epoch is a pure function of the epoch, and :func:`check_epoch` runs exactly those parts,
without opening a file or a socket: the master runs it on every epoch it is about to
publish (so a worker is never sent one it would refuse, and a reload or an xDS update
that would be refused is refused where the caller hears it), and a worker runs it before
it compiles (so both say the same thing). What only a worker can find out, such as an
access-log file that cannot be opened, the worker reports with ``ipc.EpochRefused``.

:class:`EpochChecker` remembers what passed, so an epoch that changes one cluster's
health checks that cluster only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxyd.epoch import Cluster, Epoch, Listener, RouteConfig
from proxyd.errors import ProxydError
from proxyd.protocol.access_log import make_format
from proxyd.protocol.access_log_filters import compile_filter
from proxyd.protocol.hash_lb import HASH_POLICIES, make_hash_balancer
from proxyd.protocol.http1_headers import server_line
from proxyd.protocol.priority import make_priority_balancer
from proxyd.protocol.routing import RouteTable


class EpochRejected(ProxydError):
    """An epoch a worker would refuse; the message names the listener or cluster, the
    part of it and why."""


def check_epoch(epoch: Epoch) -> None:
    """Raise :class:`EpochRejected` if a worker could not compile ``epoch``."""
    for listener in epoch.listeners:
        check_listener(listener)
    for cluster in epoch.clusters:
        check_cluster(cluster)


def check_listener(listener: Listener) -> None:
    """What :class:`proxyd.worker.plan.ListenerPlan` compiles from a listener (for each
    of its filter chains)."""
    if listener.chains:
        for chain in listener.every_chain:
            one = dataclasses.replace(
                listener, hcm=chain.hcm, tcp_proxy=chain.tcp_proxy, chains=(), default_chain=None
            )
            check_listener(one)
        return
    where = f"listener '{listener.name}'"
    hcm = listener.hcm
    groups = [("listener access_logs", listener.access_logs)]
    if hcm is not None:
        check_route_config(hcm.route_config, where)
        groups.append(("access_logs", hcm.access_logs))
    if listener.tcp_proxy is not None:
        groups.append(("tcp_proxy access_logs", listener.tcp_proxy.access_logs))
    for kind, logs in groups:
        for i, al in enumerate(logs):
            label = f"{where}: {kind}[{i}] ({al.path or al.sink})"
            _run(lambda a: make_format(a.format, a.json_format, a.omit_empty_values), al, label)
            if al.filter is not None:
                _run(compile_filter, al.filter, where=label)
    if hcm is None:
        return
    if hcm.codec_type == "HTTP2" and any(
        r.stream_duration_set for vh in hcm.route_config.virtual_hosts for r in vh.routes
    ):
        # proxyd runs stream durations on HTTP/1.1 connections only (with AUTO such a
        # listener stays HTTP/1.1; HTTP2 has no HTTP/1.1 to stay with).
        raise EpochRejected(
            f"{where}: a route's max_stream_duration with codec_type HTTP2 is not "
            "supported by proxyd"
        )
    try:
        server_line(hcm.server_name)
    except UnicodeEncodeError as exc:
        raise EpochRejected(
            f"{where}: server_name {hcm.server_name!r} cannot be sent as a header value "
            f"(character {hcm.server_name[exc.start]!r} is not ISO-8859-1)"
        ) from None


def check_route_config(rc: RouteConfig, where: str = "") -> None:
    """What :class:`proxyd.protocol.routing.RouteTable` compiles (regexes, domains)."""
    label = f"route config '{rc.name}'"
    _run(RouteTable, rc, where=f"{where}: {label}" if where else label)


@dataclass(slots=True)
class _Host:
    """What the balancers read of a host (proxyd.worker.upstream.HostState's fields)."""

    weight: int
    priority: int
    locality: str
    locality_weight: int
    usable: bool
    active_requests: int = 0
    address: str = ""
    port: int = 0
    hash_key: str = ""


def check_cluster(cluster: Cluster) -> None:
    """What :class:`proxyd.worker.upstream.ClusterState` compiles: its balancer."""
    hosts = [
        _Host(
            max(ep.weight, 1),
            ep.priority,
            ep.locality,
            ep.locality_weight,
            ep.usable,
            address=ep.address,
            port=ep.port,
            hash_key=ep.hash_key,
        )
        for ep in cluster.endpoints
    ]

    def balancer(c: Cluster) -> object:
        if c.lb_policy in HASH_POLICIES:
            return make_hash_balancer(
                c.lb_policy,
                hosts,
                min_ring_size=c.ring_min_size,
                max_ring_size=c.ring_max_size,
                hash_function=c.ring_hash_function,
                table_size=c.maglev_table_size,
                overprovisioning_factor=c.overprovisioning_factor,
                panic_threshold=c.healthy_panic_threshold,
            )
        return make_priority_balancer(
            c.lb_policy,
            hosts,
            choice_count=c.choice_count,
            overprovisioning_factor=c.overprovisioning_factor,
            panic_threshold=c.healthy_panic_threshold,
            locality_weighted=c.locality_weighted_lb,
        )

    _run(balancer, cluster, where=f"cluster '{cluster.name}'")


def _run(compile_: Callable[[Any], object], value: Any, where: str) -> None:
    try:
        compile_(value)
    except Exception as exc:  # whatever the worker's compiler raises refuses the epoch
        raise EpochRejected(f"{where}: {exc}") from exc


class EpochChecker:
    """:func:`check_epoch` that skips the listeners and clusters that passed last time
    (the same object, or an equal one)."""

    def __init__(self) -> None:
        self._listeners: dict[str, Listener] = {}
        self._clusters: dict[str, Cluster] = {}

    def check(self, epoch: Epoch) -> None:
        """Raise :class:`EpochRejected` if a worker could not compile ``epoch``; what
        passed is remembered only when all of it passed."""
        listeners = {lst.name: lst for lst in epoch.listeners}
        clusters = {c.name: c for c in epoch.clusters}
        for name, lst in listeners.items():
            if not _same(self._listeners.get(name), lst):
                check_listener(lst)
        for name, c in clusters.items():
            if not _same(self._clusters.get(name), c):
                check_cluster(c)
        self._listeners, self._clusters = listeners, clusters


def _same(old: object, new: object) -> bool:
    return old is new or (old is not None and old == new)
