"""When each host of a cluster with slow_start_config entered slow start.

Envoy counts a host's slow start window from when it joined the cluster or, on a
cluster with active health checks, from when a check last turned it healthy
(``lastHcPassTime`` or ``creationTime``). The master is the one process that sees both,
so it keeps that moment per host (cluster name, address, port) across epochs and
stamps it on the epoch's endpoints (``Endpoint.active_since``, CLOCK_MONOTONIC seconds,
which every worker on the machine reads the same); workers' balancers scale the host's
weight from it (:mod:`proxyd.protocol.slow_start`). A host that leaves the cluster and
comes back starts over, as in Envoy. Clusters without slow start are left as they are.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from proxyd.epoch import Cluster, Epoch

_Key = tuple[str, str, int]


class SlowStartStamps:
    """Each slow-start host's (healthy, active_since), kept from epoch to epoch."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._hosts: dict[_Key, tuple[bool, float]] = {}

    def stamp(self, epoch: Epoch) -> Epoch:
        """``epoch`` with its slow-start hosts' ``active_since`` (idempotent: stamping
        the same hosts again changes nothing)."""
        if not any(c.slow_start_window_s for c in epoch.clusters):
            self._hosts.clear()
            return epoch
        now = self._clock()
        seen: dict[_Key, tuple[bool, float]] = {}
        clusters = tuple(
            self._cluster(c, now, seen) if c.slow_start_window_s else c for c in epoch.clusters
        )
        self._hosts = seen
        return dataclasses.replace(epoch, clusters=clusters)

    def _cluster(self, c: Cluster, now: float, seen: dict[_Key, tuple[bool, float]]) -> Cluster:
        checked = bool(c.health_checks)
        endpoints = []
        for ep in c.endpoints:
            key = (c.name, ep.address, ep.port)
            prev = self._hosts.get(key)
            if prev is None:
                since = now  # joined the cluster
            else:
                was_healthy, since = prev
                if checked and ep.healthy and not was_healthy:
                    since = now  # an active health check turned it healthy
            seen[key] = (ep.healthy, since)
            if ep.active_since != since:
                ep = dataclasses.replace(ep, active_since=since)
            endpoints.append(ep)
        return dataclasses.replace(c, endpoints=tuple(endpoints))
